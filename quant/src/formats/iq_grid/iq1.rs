//! ggml's `quantize_iq1_s` and `quantize_iq1_m`: per block of 32 (IQ1_S)
//! or 16 (IQ1_M) an exhaustive search over the two boundaries that split
//! the sorted values into levels −1, 0, +1 (shifted by ±1/8), then each
//! group of 8 snapped to the 2048-point grid.

use super::decode::IQ1_DELTA;
use super::encode::QuantizeError;
use super::lattice::{Grid, Lattice, lattice};
use crate::blocks::{BlockIQ1M, BlockIQ1S};
use crate::formats::k_quants::common::sqrtf;
use crate::formats::{check_len, nearest_int};
use crate::types::QK_K;
use half::f16;

/// The level values with a positive and a negative shift.
const X_P: [f32; 3] = [-1.0 + IQ1_DELTA, IQ1_DELTA, 1.0 + IQ1_DELTA];
const X_M: [f32; 3] = [-1.0 - IQ1_DELTA, -IQ1_DELTA, 1.0 - IQ1_DELTA];

/// ggml's `GROUP_MAX_EPS_IQ1_S` and `GROUP_MAX_EPS_IQ1_M`.
const EPS_IQ1_S: f32 = 1e-12;
const EPS_IQ1_M: f32 = 1e-7;

/// The indices of `xb` sorted by value, equal values keeping their order
/// (glibc's `qsort` is a stable merge sort for arrays this small). NaN
/// sorts by `total_cmp`, so the order stays total.
fn sorted_order<const N: usize>(xb: &[f32]) -> [usize; N] {
    let mut idx: [usize; N] = core::array::from_fn(|j| j);
    idx.sort_by(|&a, &b| {
        let (a, b) = (xb[a], xb[b]);
        a.partial_cmp(&b).unwrap_or_else(|| a.total_cmp(&b))
    });
    idx
}

/// ggml's `iq1_find_best_neighbour2`: the neighbour of `u` nearest to `x`
/// at `scale` with level values `xg`; its levels go to `l`.
fn best_neighbour(
    lat: &Lattice,
    u: usize,
    x: &[f32],
    w: &[f32],
    scale: f32,
    xg: &[f32; 3],
    l: &mut [i8],
) -> usize {
    let mut best = (f32::MAX, None);
    for &j in lat.neighbours(u) {
        let p = &lat.points[usize::from(j)];
        let mut d2 = 0f32;
        for i in 0..8 {
            let q = xg[((p[i] - 1) / 2) as usize];
            let diff = scale * q - x[i];
            d2 += w[i] * diff * diff;
        }
        if d2 < best.0 {
            best = (d2, Some(usize::from(j)));
        }
    }
    // ggml aborts when no distance is below FLT_MAX (non-finite input);
    // the first neighbour keeps the output defined.
    let g = best.1.unwrap_or_else(|| usize::from(lat.neighbours(u)[0]));
    for (l, &p) in l.iter_mut().zip(&lat.points[g]) {
        *l = (p - 1) / 2;
    }
    g
}

/// The grid indices of the groups of 8 of levels `l`, snapping off-grid
/// groups to their best neighbour (with level values `xg(k)` for group
/// `k`), and whether all were on the grid.
fn grid_indices<const G: usize>(
    lat: &Lattice,
    xb: &[f32],
    w: &[f32],
    scale: f32,
    xg: impl Fn(usize) -> &'static [f32; 3],
    l: &mut [i8],
) -> ([u16; G], bool) {
    let mut index = [0u16; G];
    let mut all_on = true;
    for (k, index) in index.iter_mut().enumerate() {
        let r = 8 * k..8 * k + 8;
        let u = lat.index(&l[r.clone()]);
        *index = match lat.on_grid(u) {
            Some(g) => g as u16,
            None => {
                all_on = false;
                best_neighbour(
                    lat,
                    u,
                    &xb[r.clone()],
                    &w[r.clone()],
                    scale,
                    xg(k),
                    &mut l[r],
                ) as u16
            }
        };
    }
    (index, all_on)
}

/// Levels 0/1/2 of block `xb` from the split of its sorted order at
/// `i1 ≤ i2`.
fn split_levels(order: &[usize], i1: usize, i2: usize, l: &mut [i8]) {
    for (j, &i) in order.iter().enumerate() {
        l[i] = if j < i1 {
            0
        } else if j < i2 {
            1
        } else {
            2
        };
    }
}

/// Weights of one block: the importance weights times `sqrt(σ² + x²)`, or
/// `x²` without them.
fn block_weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32, w: &mut [f32]) {
    for (i, w) in w.iter_mut().enumerate() {
        *w = match qw {
            Some(qw) => qw[i] * sqrtf(sigma2 + xb[i] * xb[i]),
            None => xb[i] * xb[i],
        };
    }
}

fn check(x: &[f32], weights: Option<&[f32]>, required: bool) -> Result<usize, QuantizeError> {
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

/// The importance weights of super-block `i` of `x`.
fn sb_weights(weights: Option<&[f32]>, row: usize, i: usize) -> Option<&[f32]> {
    let col = (i * QK_K) % row.max(QK_K);
    weights.map(|w| &w[col..col + QK_K])
}

fn sigma2_of(xbl: &[f32]) -> f32 {
    let sumx2 = xbl.iter().fold(0f32, |s, &x| s + x * x);
    2.0 * sumx2 / QK_K as f32
}

/// One IQ1_S block of 32: `(grid indices, scale, shift)`, or `None` for a
/// block ggml zeroes.
fn iq1s_block(lat: &Lattice, xb: &[f32], w: &[f32]) -> Option<([u16; 4], f32, i32)> {
    let max = xb[1..]
        .iter()
        .fold(xb[0].abs(), |m, &v| if m > v.abs() { m } else { v.abs() });
    if max < EPS_IQ1_S {
        return None;
    }
    let order = sorted_order::<32>(xb);
    let (mut sumx, mut sumw) = ([0f32; 33], [0f32; 33]);
    for (j, &i) in order.iter().enumerate() {
        sumx[j + 1] = sumx[j] + w[i] * xb[i];
        sumw[j + 1] = sumw[j] + w[i];
    }
    let (mut best_score, mut scale) = (-f32::MAX, max);
    let mut best: Option<(usize, usize, i32)> = None;
    for i1 in 0..=32 {
        for i2 in i1..=32 {
            for (xx, shift) in [(&X_P, 1), (&X_M, -1)] {
                let sumqx = (sumx[i1] - sumx[0]) * xx[0]
                    + (sumx[i2] - sumx[i1]) * xx[1]
                    + (sumx[32] - sumx[i2]) * xx[2];
                let sumq2 = (sumw[i1] - sumw[0]) * xx[0] * xx[0]
                    + (sumw[i2] - sumw[i1]) * xx[1] * xx[1]
                    + (sumw[32] - sumw[i2]) * xx[2] * xx[2];
                if sumq2 > 0.0 && sumqx * sumqx > best_score * sumq2 {
                    scale = sumqx / sumq2;
                    best_score = scale * sumqx;
                    best = Some((i1, i2, shift));
                }
            }
        }
    }
    let (i1, i2, mut shift) = best?;
    let mut l = [0i8; 32];
    split_levels(&order, i1, i2, &mut l);
    if scale < 0.0 {
        l.iter_mut().for_each(|l| *l = 2 - *l);
        scale = -scale;
        shift = -shift;
    }
    let xx: &'static [f32; 3] = if shift == 1 { &X_P } else { &X_M };
    let (index, all_on) = grid_indices::<4>(lat, xb, w, scale, |_| xx, &mut l);
    if !all_on {
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for (k, &g) in index.iter().enumerate() {
            let p = &lat.points[usize::from(g)];
            for j in 0..8 {
                let w = w[8 * k + j];
                let q = xx[((p[j] - 1) / 2) as usize];
                sumqx += w * q * xb[8 * k + j];
                sumq2 += w * q * q;
            }
        }
        if sumqx > 0.0 && sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    Some((index, scale, shift))
}

/// ggml's `quantize_iq1_s` (importance matrix required).
pub fn quantize_iq1_s(
    x: &[f32],
    y: &mut [BlockIQ1S],
    weights: Option<&[f32]>,
) -> Result<(), QuantizeError> {
    check_len(y.len(), QK_K, x.len());
    let row = check(x, weights, true)?;
    let lat = lattice(Grid::Iq1s);
    for (i, (xbl, yb)) in x.chunks_exact(QK_K).zip(y.iter_mut()).enumerate() {
        let qw = sb_weights(weights, row, i);
        *yb = bytemuck::Zeroable::zeroed();
        let sigma2 = sigma2_of(xbl);
        let (mut scales, mut shifts) = ([0f32; 8], [1i32; 8]);
        let mut max_scale = 0f32;
        let mut w = [0f32; 32];
        for (ib, xb) in xbl.chunks_exact(32).enumerate() {
            block_weights(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), sigma2, &mut w);
            let Some((index, scale, shift)) = iq1s_block(lat, xb, &w) else {
                continue;
            };
            let mut h = 0u16;
            for (k, &g) in index.iter().enumerate() {
                yb.qs[4 * ib + k] = g as u8;
                h |= (g >> 8) << (3 * k);
            }
            yb.qh[ib] = h;
            scales[ib] = scale;
            shifts[ib] = shift;
            max_scale = if max_scale > scale { max_scale } else { scale };
        }
        if max_scale == 0.0 {
            continue;
        }
        let d = max_scale / 15.0;
        yb.d = f16::from_f32(d * 1.125);
        let id = 1.0 / d;
        for ib in 0..QK_K / 32 {
            let mut l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7) as u16;
            if shifts[ib] == -1 {
                l |= 8;
            }
            yb.qh[ib] |= l << 12;
        }
    }
    Ok(())
}

/// The level values of group `k` (0 or 1) of an IQ1_M block with shift
/// code `code` (0: ++, 1: +−, 2: −+, 3: −−).
fn iq1m_xx(code: usize, k: usize) -> &'static [f32; 3] {
    let neg = if k == 0 { code >= 2 } else { code % 2 == 1 };
    if neg { &X_M } else { &X_P }
}

/// One IQ1_M block of 16: `(grid indices, scale, shift code)`, or `None`.
fn iq1m_block(lat: &Lattice, xb: &[f32], w: &[f32]) -> Option<([u16; 2], f32, usize)> {
    let max = xb[1..]
        .iter()
        .fold(xb[0].abs(), |m, &v| if m > v.abs() { m } else { v.abs() });
    if max < EPS_IQ1_M {
        return None;
    }
    let order = sorted_order::<16>(xb);
    let (mut px, mut pw) = ([[0f32; 17]; 2], [[0f32; 17]; 2]);
    for (j, &i) in order.iter().enumerate() {
        let h = usize::from(i >= 8);
        px[h][j + 1] = px[h][j] + w[i] * xb[i];
        px[1 - h][j + 1] = px[1 - h][j];
        pw[h][j + 1] = pw[h][j] + w[i];
        pw[1 - h][j + 1] = pw[1 - h][j];
    }
    let txs = [px[0][16], px[1][16]];
    let tws = [pw[0][16], pw[1][16]];
    let (p2, m2) = (X_P[2], X_M[2]);
    let cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1];
    let cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2];
    let cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1];
    let cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2];
    let (mut best_score, mut scale) = (-f32::MAX, max);
    let mut best: Option<(usize, usize, usize)> = None;
    for i1 in 0..=16 {
        for i2 in i1..=16 {
            let (mut qx_p, mut qx_m, mut q2_p, mut q2_m) =
                ([0f32; 2], [0f32; 2], [0f32; 2], [0f32; 2]);
            for h in 0..2 {
                let sx = px[h][i1] + px[h][i2];
                qx_p[h] = txs[h] * p2 - sx;
                qx_m[h] = txs[h] * m2 - sx;
                q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
            }
            let sumqx = [
                qx_p[0] + qx_p[1],
                qx_p[0] + qx_m[1],
                qx_m[0] + qx_p[1],
                qx_m[0] + qx_m[1],
            ];
            let sumq2 = [
                q2_p[0] + q2_p[1],
                q2_p[0] + q2_m[1],
                q2_m[0] + q2_p[1],
                q2_m[0] + q2_m[1],
            ];
            for k in 0..4 {
                if sumq2[k] > 0.0 && sumqx[k] * sumqx[k] > best_score * sumq2[k] {
                    scale = sumqx[k] / sumq2[k];
                    best_score = scale * sumqx[k];
                    best = Some((i1, i2, k));
                }
            }
        }
    }
    let (i1, i2, mut code) = best?;
    let mut l = [0i8; 16];
    split_levels(&order, i1, i2, &mut l);
    if scale < 0.0 {
        l.iter_mut().for_each(|l| *l = 2 - *l);
        scale = -scale;
        code = 3 - code;
    }
    let (index, all_on) = grid_indices::<2>(lat, xb, w, scale, |k| iq1m_xx(code, k), &mut l);
    if !all_on {
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for (k, &g) in index.iter().enumerate() {
            let xx = iq1m_xx(code, k);
            let p = &lat.points[usize::from(g)];
            for j in 0..8 {
                let w = w[8 * k + j];
                let q = xx[((p[j] - 1) / 2) as usize];
                sumqx += w * q * xb[8 * k + j];
                sumq2 += w * q * q;
            }
        }
        if sumqx > 0.0 && sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    Some((index, scale, code))
}

/// ggml's `quantize_iq1_m`: the importance weights are optional.
pub fn quantize_iq1_m(
    x: &[f32],
    y: &mut [BlockIQ1M],
    weights: Option<&[f32]>,
) -> Result<(), QuantizeError> {
    check_len(y.len(), QK_K, x.len());
    let row = check(x, weights, false)?;
    let lat = lattice(Grid::Iq1s);
    for (i, (xbl, yb)) in x.chunks_exact(QK_K).zip(y.iter_mut()).enumerate() {
        let qw = sb_weights(weights, row, i);
        *yb = bytemuck::Zeroable::zeroed();
        let sigma2 = sigma2_of(xbl);
        let (mut scales, mut codes) = ([0f32; 16], [0usize; 16]);
        let mut max_scale = 0f32;
        let mut w = [0f32; 16];
        for (ib, xb) in xbl.chunks_exact(16).enumerate() {
            block_weights(xb, qw.map(|q| &q[16 * ib..16 * ib + 16]), sigma2, &mut w);
            let Some((index, scale, code)) = iq1m_block(lat, xb, &w) else {
                continue;
            };
            yb.qs[2 * ib] = index[0] as u8;
            yb.qs[2 * ib + 1] = index[1] as u8;
            yb.qh[ib] = ((index[0] >> 8) | ((index[1] >> 8) << 4)) as u8;
            scales[ib] = scale;
            codes[ib] = code;
            max_scale = if max_scale > scale { max_scale } else { scale };
        }
        if max_scale == 0.0 {
            continue;
        }
        iq1m_finish(lat, xbl, qw, sigma2, &scales, &codes, max_scale, yb);
    }
    Ok(())
}

/// The block scales, shift bits and the refitted super-block scale of an
/// IQ1_M super-block (the tail of ggml's `quantize_row_iq1_m_impl`).
#[allow(clippy::too_many_arguments)]
fn iq1m_finish(
    lat: &Lattice,
    xbl: &[f32],
    qw: Option<&[f32]>,
    sigma2: f32,
    scales: &[f32; 16],
    codes: &[usize; 16],
    max_scale: f32,
    yb: &mut BlockIQ1M,
) {
    const MASKS: [u8; 4] = [0x00, 0x80, 0x08, 0x88];
    let mut sc = [0u16; 4];
    let mut d = max_scale / 15.0;
    let id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    let mut w = [0f32; 16];
    for (ib, xb) in xbl.chunks_exact(16).enumerate() {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
        sc[ib / 4] |= (l as u16) << (3 * (ib % 4));
        yb.qh[ib] |= MASKS[codes[ib]];
        block_weights(xb, qw.map(|q| &q[16 * ib..16 * ib + 16]), sigma2, &mut w);
        for k in 0..2 {
            let xx = iq1m_xx(codes[ib], k);
            let hi = (u16::from(yb.qh[ib]) << (8 - 4 * k)) & 0x700;
            let p = &lat.points[usize::from(u16::from(yb.qs[2 * ib + k]) + hi)];
            for j in 0..8 {
                let q = xx[((p[j] - 1) / 2) as usize] * (2 * l + 1) as f32;
                sumqx += w[8 * k + j] * q * xb[8 * k + j];
                sumq2 += w[8 * k + j] * q * q;
            }
        }
    }
    if sumq2 > 0.0 {
        d = sumqx / sumq2;
    }
    let s = f16::from_f32(d * 1.1125).to_bits();
    sc[0] |= (s & 0x000f) << 12;
    sc[1] |= (s & 0x00f0) << 8;
    sc[2] |= (s & 0x0f00) << 4;
    sc[3] |= s & 0xf000;
    for (i, v) in sc.iter().enumerate() {
        yb.scales[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
    }
}
