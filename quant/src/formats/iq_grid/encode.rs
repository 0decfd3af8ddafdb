//! ggml's quantizers of the signed-grid i-quants: `quantize_iq2_xxs`,
//! `quantize_iq2_xs`, `quantize_iq2_s`, `quantize_iq3_xxs`, `quantize_iq3_s`.
//!
//! All five share one search: per block of 16 or 32 values, take the
//! magnitudes (the signs are stored apart; the parity-coded types flip the
//! cheapest sign so each group of 8 has an even count of negatives), try a
//! range of scales, snap each group of 8 (or 4) levels to the grid (its
//! nearest grid neighbours under the weights when it is off the grid) and
//! keep the scale with the best weighted fit. Operation for operation as in
//! ggml's C, without fused multiply-add.

use super::lattice::{Grid, Lattice, lattice};
use crate::blocks::*;
use crate::formats::k_quants::common::sqrtf;
use crate::formats::{check_len, nearest_int};
use crate::types::QK_K;
use half::f16;

/// Why a row cannot be quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantizeError {
    /// The type needs an importance matrix (ggml asserts one).
    NeedsImatrix,
    /// The importance weights are not one per column of the rows.
    WeightsLength { expected: usize, got: usize },
}

impl core::fmt::Display for QuantizeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            QuantizeError::NeedsImatrix => {
                f.write_str("this type can only be quantized with an importance matrix")
            }
            QuantizeError::WeightsLength { expected, got } => {
                write!(f, "importance weights: {got} values for rows of {expected}")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for QuantizeError {}

/// Which groups the final pass at the chosen scale re-snaps to the grid.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refit {
    /// Every group, whenever the scale is positive (IQ2_XXS).
    Always,
    /// The groups that were off the grid, if any was (IQ2_XS, IQ2_S, IQ3_XXS).
    OffGrid,
    /// Every group, if any was off the grid (IQ3_S).
    AllIfOffGrid,
}

/// The per-type constants of the search.
struct Params {
    grid: Grid,
    /// Values sharing one scale (16 or 32).
    block: usize,
    /// Levels per coordinate.
    kmax: i32,
    /// Trial scales `-steps..=steps`, `step` apart.
    steps: i32,
    step: f32,
    /// Blocks whose largest magnitude is below this quantize to zero (`None`:
    /// only an exactly zero maximum, IQ3_S).
    eps: Option<f32>,
    /// Signs in 7 bits per group of 8 with even parity (else 8 explicit bits).
    parity: bool,
    refit: Refit,
    /// The on-grid flags before any trial scale improved the fit.
    on_grid_init: bool,
    /// `sigma2 = sigma_mul · Σx² / QK_K`.
    sigma_mul: f32,
    /// The weights without an importance matrix, or `None` if required.
    default_weight: Option<fn(sigma2: f32, x: f32) -> f32>,
    /// The first scale from ggml's `make_qp_quants` (IQ2_XXS) rather than
    /// the largest magnitude.
    qp_start: bool,
    /// Factor on the stored super-block scale.
    fudge: f32,
    /// Whether an all-zero super-block keeps the grid indices and signs
    /// already written (IQ2_S, IQ3_S) rather than clearing them.
    keep_on_zero: bool,
}

/// The codes of one block: the grid index of each group and the sign bits
/// of each 8 values.
#[derive(Clone, Copy, Default)]
struct Code {
    idx: [u16; 8],
    signs: [u8; 4],
}

/// One quantized super-block: the f16 scale, each block's codes (`None`
/// for the all-zero blocks ggml skips), each block's 4-bit scale.
struct SuperBlock {
    d: f16,
    codes: [Option<Code>; QK_K / 16],
    ls: [u8; QK_K / 16],
}

/// ggml's `make_qp_quants` (levels `0..=nmax`) as IQ2_XXS uses it.
///
/// ggml keeps the levels in a `uint8_t` array, and the parity flip can leave
/// a negative magnitude in `x`: its level rounds to -1, stored as 255, and
/// that 255 is what the error sums and the refinement read back. The levels
/// are kept as bytes here too, and handed back as ggml's caller sees them
/// (as `int8_t`).
fn make_qp_quants(nmax: i32, x: &[f32], l: &mut [i8], w: &[f32]) -> f32 {
    let max = x.iter().fold(0f32, |m, &v| if m > v { m } else { v });
    if max < 1e-15 {
        l.fill(0);
        return 0.0;
    }
    let n = x.len();
    let mut lu = [0u8; 32];
    let lu = &mut lu[..n];
    let mut iscale = nmax as f32 / max;
    for (l, &x) in lu.iter_mut().zip(x) {
        *l = nearest_int(iscale * x) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..n {
        let diff = x[i] - scale * f32::from(lu[i]);
        best_mse += w[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..n {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += w[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).min(nmax);
        lu[i] = q as u8;
        sumlx += w[i] * x[i] * q as f32;
        suml2 += w[i] * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let li = f32::from(lu[i]);
            let mut slx = sumlx - w[i] * x[i] * li;
            let mut sl2 = suml2 - w[i] * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != i32::from(lu[i]) {
                    slx += w[i] * x[i] * new_l as f32;
                    sl2 += w[i] * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        lu[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for (l, &u) in l.iter_mut().zip(lu.iter()) {
        *l = u as i8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// Magnitudes and sign bits of one block; with `parity`, the cheapest
/// value of each group of 8 with an odd count of negatives is flipped.
fn split_signs(p: &Params, xb: &[f32], w: &[f32], xval: &mut [f32], signs: &mut [u8]) {
    for (k, s_out) in signs.iter_mut().enumerate() {
        let (mut s, mut nflip) = (0u8, 0);
        for i in 0..8 {
            let v = xb[8 * k + i];
            if v >= 0.0 {
                xval[8 * k + i] = v;
            } else {
                xval[8 * k + i] = -v;
                nflip += 1;
                s |= 1 << i;
            }
        }
        if p.parity && nflip % 2 == 1 {
            let cost = |i: usize| w[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
            let mut imin = 0;
            let mut min = cost(0);
            for i in 1..8 {
                if cost(i) < min {
                    min = cost(i);
                    imin = i;
                }
            }
            xval[8 * k + imin] = -xval[8 * k + imin];
            s ^= 1 << imin;
        }
        *s_out = if p.parity { s & 127 } else { s };
    }
}

/// `Σ w·x·q` and `Σ w·q²` with `q = 2l + 1`.
fn fit(x: &[f32], w: &[f32], l: &[i8]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for i in 0..x.len() {
        let q = (2 * i32::from(l[i]) + 1) as f32;
        sumqx += w[i] * x[i] * q;
        sumq2 += w[i] * q * q;
    }
    (sumqx, sumq2)
}

/// Snaps group `x` (with inverse scale `id`) to the grid: its levels go to
/// `l`; returns whether the rounded point was on the grid.
fn snap(
    lat: &Lattice,
    kmax: i32,
    id: f32,
    scale: f32,
    x: &[f32],
    waux: &[f32],
    l: &mut [i8],
) -> bool {
    for (l, &v) in l.iter_mut().zip(x) {
        *l = nearest_int(0.5 * (id * v - 1.0)).clamp(0, kmax - 1) as i8;
    }
    let u = lat.index(l);
    if lat.on_grid(u).is_some() {
        return true;
    }
    lat.best_neighbour(u, x, waux, scale, l);
    false
}

/// The best scale of one block and its levels (`l`), ggml's trial loop and
/// final refit; `None` for a block ggml treats as all zero.
fn search_block(
    p: &Params,
    lat: &Lattice,
    xval: &[f32],
    w: &[f32],
    waux: &[f32],
    l: &mut [i8],
) -> Option<f32> {
    let n = p.block;
    let g = lat.dim;
    let ngroups = n / g;
    let max = xval[1..]
        .iter()
        .fold(xval[0], |m, &v| if m > v { m } else { v });
    l.fill(0);
    let zero = match p.eps {
        Some(eps) => max < eps,
        None => max == 0.0,
    };
    if zero {
        return None;
    }
    let (mut scale, base) = if p.qp_start {
        let s = make_qp_quants(p.kmax + 1, xval, l, w);
        let eff_max = s * p.kmax as f32;
        if eff_max <= 0.0 {
            l.fill(0);
            return None;
        }
        (s, eff_max)
    } else {
        (max / (2 * p.kmax - 1) as f32, max)
    };
    let mut on_grid = [p.on_grid_init; 8];
    let mut laux = [0i8; 32];
    let mut best = 0f32;
    for is in -p.steps..=p.steps {
        let id = ((2 * p.kmax - 1) as f32 + is as f32 * p.step) / base;
        let this_scale = 1.0 / id;
        let mut on_aux = [true; 8];
        for (k, on) in on_aux[..ngroups].iter_mut().enumerate() {
            let r = k * g..(k + 1) * g;
            *on = snap(
                lat,
                p.kmax,
                id,
                this_scale,
                &xval[r.clone()],
                &waux[r.clone()],
                &mut laux[r],
            );
        }
        let (sumqx, sumq2) = fit(xval, w, &laux[..n]);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l.copy_from_slice(&laux[..n]);
            on_grid = on_aux;
        }
    }
    let any_off = on_grid[..ngroups].iter().any(|&o| !o);
    let refit = match p.refit {
        Refit::Always => scale > 0.0,
        Refit::OffGrid | Refit::AllIfOffGrid => any_off && scale > 0.0,
    };
    if refit {
        let id = 1.0 / scale;
        for (k, &on) in on_grid[..ngroups].iter().enumerate() {
            if p.refit == Refit::OffGrid && on {
                continue;
            }
            let r = k * g..(k + 1) * g;
            snap(
                lat,
                p.kmax,
                id,
                scale,
                &xval[r.clone()],
                &waux[r.clone()],
                &mut l[r],
            );
        }
        let (sumqx, sumq2) = fit(xval, w, l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    Some(scale)
}

/// Quantizes one super-block (`qw`: its importance weights, if any).
fn quantize_superblock(p: &Params, lat: &Lattice, xbl: &[f32], qw: Option<&[f32]>) -> SuperBlock {
    let mut out = SuperBlock {
        d: f16::ZERO,
        codes: [None; QK_K / 16],
        ls: [0; QK_K / 16],
    };
    let sumx2 = xbl.iter().fold(0f32, |s, &x| s + x * x);
    let sigma2 = p.sigma_mul * sumx2 / QK_K as f32;
    let n = p.block;
    let g = lat.dim;
    let mut scales = [0f32; QK_K / 16];
    let mut max_scale = 0f32;
    let (mut weight, mut waux, mut xval, mut l) = ([0f32; 32], [0f32; 32], [0f32; 32], [0i8; 32]);
    for (ib, xb) in xbl.chunks_exact(n).enumerate() {
        for i in 0..n {
            weight[i] = match (qw, p.default_weight) {
                (Some(qw), _) => qw[n * ib + i] * sqrtf(sigma2 + xb[i] * xb[i]),
                (None, Some(f)) => f(sigma2, xb[i]),
                // The entry points refuse a missing importance matrix first.
                (None, None) => 0.0,
            };
            waux[i] = sqrtf(weight[i]);
        }
        let mut code = Code::default();
        split_signs(
            p,
            xb,
            &weight[..n],
            &mut xval[..n],
            &mut code.signs[..n / 8],
        );
        let Some(mut scale) =
            search_block(p, lat, &xval[..n], &weight[..n], &waux[..n], &mut l[..n])
        else {
            continue;
        };
        if scale < 0.0 {
            scale = -scale;
            for s in &mut code.signs[..n / 8] {
                *s = if p.parity { !*s & 127 } else { !*s };
            }
        }
        for (k, idx) in code.idx[..n / g].iter_mut().enumerate() {
            let u = lat.index(&l[k * g..(k + 1) * g]);
            // The levels always come from a grid point (on the grid or a
            // neighbour), so `u` is on the grid.
            *idx = lat.on_grid(u).unwrap_or(0) as u16;
        }
        out.codes[ib] = Some(code);
        scales[ib] = scale;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    if max_scale == 0.0 {
        if !p.keep_on_zero {
            out.codes = [None; QK_K / 16];
        }
        return out;
    }
    let d = max_scale / 31.0;
    out.d = f16::from_f32(d * p.fudge);
    let id = 1.0 / d;
    for (ls, &s) in out.ls.iter_mut().zip(&scales[..QK_K / n]) {
        *ls = nearest_int(0.5 * (id * s - 1.0)).clamp(0, 15) as u8;
    }
    out
}

/// Checks the importance weights against the row and returns the length
/// of a row (the weights' length, or `x.len()` without weights).
fn check_weights(
    x: &[f32],
    weights: Option<&[f32]>,
    required: bool,
) -> Result<usize, QuantizeError> {
    match weights {
        None if required => Err(QuantizeError::NeedsImatrix),
        None => Ok(x.len()),
        Some(w) if w.is_empty() || w.len() % QK_K != 0 || x.len() % w.len() != 0 => {
            Err(QuantizeError::WeightsLength {
                expected: x.len(),
                got: w.len(),
            })
        }
        Some(w) => Ok(w.len()),
    }
}

/// Quantizes the rows of `x` (each as long as `weights`, if given) into
/// `y`, one super-block at a time, each packed by `pack`.
fn quantize_rows<B>(
    p: &Params,
    x: &[f32],
    y: &mut [B],
    weights: Option<&[f32]>,
    pack: fn(&SuperBlock, &mut B),
) -> Result<(), QuantizeError> {
    check_len(y.len(), QK_K, x.len());
    let row = check_weights(x, weights, p.default_weight.is_none())?;
    let lat = lattice(p.grid);
    for (i, (xbl, yb)) in x.chunks_exact(QK_K).zip(y.iter_mut()).enumerate() {
        let col = (i * QK_K) % row.max(QK_K);
        let qw = weights.map(|w| &w[col..col + QK_K]);
        pack(&quantize_superblock(p, lat, xbl, qw), yb);
    }
    Ok(())
}

const IQ2_XXS: Params = Params {
    grid: Grid::Iq2xxs,
    block: 32,
    kmax: 3,
    steps: 6,
    step: 0.1,
    eps: Some(1e-15),
    parity: true,
    refit: Refit::Always,
    on_grid_init: true,
    sigma_mul: 1.0,
    default_weight: None,
    qp_start: true,
    fudge: 1.0,
    keep_on_zero: false,
};

const IQ2_XS: Params = Params {
    grid: Grid::Iq2xs,
    block: 16,
    steps: 9,
    refit: Refit::OffGrid,
    qp_start: false,
    ..IQ2_XXS
};

const IQ2_S: Params = Params {
    grid: Grid::Iq2s,
    eps: Some(1e-8),
    parity: false,
    sigma_mul: 2.0,
    default_weight: Some(|sigma2, x| 0.25 * sigma2 + x * x),
    fudge: 0.9875,
    keep_on_zero: true,
    ..IQ2_XS
};

const IQ3_XXS: Params = Params {
    grid: Grid::Iq3xxs,
    block: 32,
    kmax: 8,
    steps: 15,
    step: 0.2,
    eps: Some(1e-8),
    parity: true,
    refit: Refit::OffGrid,
    on_grid_init: true,
    sigma_mul: 2.0,
    default_weight: Some(|_, x| x * x),
    qp_start: false,
    fudge: 1.0125,
    keep_on_zero: false,
};

const IQ3_S: Params = Params {
    grid: Grid::Iq3s,
    steps: 9,
    eps: None,
    parity: false,
    refit: Refit::AllIfOffGrid,
    on_grid_init: false,
    fudge: 1.033,
    keep_on_zero: true,
    ..IQ3_XXS
};

/// Two 4-bit scales per byte.
fn pack_nibbles(ls: &[u8], out: &mut [u8]) {
    for (o, pair) in out.iter_mut().zip(ls.chunks_exact(2)) {
        *o = pair[0] | (pair[1] << 4);
    }
}

fn pack_iq2_xxs(sb: &SuperBlock, y: &mut BlockIQ2XXS) {
    y.d = sb.d;
    for ib in 0..QK_K / 32 {
        let (mut w0, mut w1) = (0u32, u32::from(sb.ls[ib]) << 28);
        if let Some(c) = &sb.codes[ib] {
            for k in 0..4 {
                w0 |= u32::from(c.idx[k]) << (8 * k);
                w1 |= u32::from(c.signs[k]) << (7 * k);
            }
        }
        y.qs[4 * ib..4 * ib + 4].copy_from_slice(&[
            w0 as u16,
            (w0 >> 16) as u16,
            w1 as u16,
            (w1 >> 16) as u16,
        ]);
    }
}

fn pack_iq2_xs(sb: &SuperBlock, y: &mut BlockIQ2XS) {
    y.d = sb.d;
    y.qs = [0; QK_K / 8];
    for (ib, c) in sb.codes.iter().enumerate() {
        if let Some(c) = c {
            for k in 0..2 {
                y.qs[2 * ib + k] = c.idx[k] | (u16::from(c.signs[k]) << 9);
            }
        }
    }
    pack_nibbles(&sb.ls, &mut y.scales);
}

fn pack_iq2_s(sb: &SuperBlock, y: &mut BlockIQ2S) {
    *y = bytemuck::Zeroable::zeroed();
    y.d = sb.d;
    for (ib, c) in sb.codes.iter().enumerate() {
        if let Some(c) = c {
            for k in 0..2 {
                let i8 = 2 * ib + k;
                y.qs[i8] = c.idx[k] as u8;
                y.qh[i8 / 4] |= ((c.idx[k] >> 8) as u8) << (2 * (i8 % 4));
                y.qs[QK_K / 8 + i8] = c.signs[k];
            }
        }
    }
    pack_nibbles(&sb.ls, &mut y.scales);
}

fn pack_iq3_xxs(sb: &SuperBlock, y: &mut BlockIQ3XXS) {
    y.d = sb.d;
    y.qs = [0; 3 * QK_K / 8];
    for ib in 0..QK_K / 32 {
        let mut w = u32::from(sb.ls[ib]) << 28;
        if let Some(c) = &sb.codes[ib] {
            for k in 0..8 {
                y.qs[8 * ib + k] = c.idx[k] as u8;
            }
            for k in 0..4 {
                w |= u32::from(c.signs[k]) << (7 * k);
            }
        }
        y.qs[QK_K / 4 + 4 * ib..QK_K / 4 + 4 * ib + 4].copy_from_slice(&w.to_le_bytes());
    }
}

fn pack_iq3_s(sb: &SuperBlock, y: &mut BlockIQ3S) {
    *y = bytemuck::Zeroable::zeroed();
    y.d = sb.d;
    // ggml advances its `qs` and `signs` cursors only past the blocks it
    // did not skip as all-zero, while `qh` and the scales stay indexed by
    // block: the same layout here.
    let mut at = 0;
    for (ib, c) in sb.codes[..QK_K / 32].iter().enumerate() {
        if let Some(c) = c {
            for k in 0..8 {
                y.qs[8 * at + k] = c.idx[k] as u8;
                y.qh[ib] |= ((c.idx[k] >> 8) as u8) << k;
            }
            y.signs[4 * at..4 * at + 4].copy_from_slice(&c.signs);
            at += 1;
        }
    }
    pack_nibbles(&sb.ls[..QK_K / 32], &mut y.scales);
}

/// ggml's `quantize_iq2_xxs`: `x` holds rows as long as `weights` (its
/// importance matrix, required).
pub fn quantize_iq2_xxs(
    x: &[f32],
    y: &mut [BlockIQ2XXS],
    weights: Option<&[f32]>,
) -> Result<(), QuantizeError> {
    quantize_rows(&IQ2_XXS, x, y, weights, pack_iq2_xxs)
}

/// ggml's `quantize_iq2_xs` (importance matrix required).
pub fn quantize_iq2_xs(
    x: &[f32],
    y: &mut [BlockIQ2XS],
    weights: Option<&[f32]>,
) -> Result<(), QuantizeError> {
    quantize_rows(&IQ2_XS, x, y, weights, pack_iq2_xs)
}

/// ggml's `quantize_iq2_s`.
pub fn quantize_iq2_s(
    x: &[f32],
    y: &mut [BlockIQ2S],
    weights: Option<&[f32]>,
) -> Result<(), QuantizeError> {
    quantize_rows(&IQ2_S, x, y, weights, pack_iq2_s)
}

/// ggml's `quantize_iq3_xxs`.
pub fn quantize_iq3_xxs(
    x: &[f32],
    y: &mut [BlockIQ3XXS],
    weights: Option<&[f32]>,
) -> Result<(), QuantizeError> {
    quantize_rows(&IQ3_XXS, x, y, weights, pack_iq3_xxs)
}

/// ggml's `quantize_iq3_s`.
pub fn quantize_iq3_s(
    x: &[f32],
    y: &mut [BlockIQ3S],
    weights: Option<&[f32]>,
) -> Result<(), QuantizeError> {
    quantize_rows(&IQ3_S, x, y, weights, pack_iq3_s)
}
