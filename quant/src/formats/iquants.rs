//! Non-linear 4-bit i-quants: IQ4_NL (blocks of 32, one f16 scale) and
//! IQ4_XS (256-element super-blocks, one f16 scale and a 6-bit scale per
//! block of 32). Both store indices into ggml's 16-value table
//! [`KVALUES_IQ4NL`], denser near zero than Q4_0's uniform grid.
//!
//! Quantization is ggml's `quantize_iq4_nl` / `quantize_iq4_xs` without an
//! importance matrix (what `llama-quantize` writes): per block, a first
//! scale from the largest magnitude, refined by weighted least squares over
//! 15 trial scales; operation for operation, with no fused multiply-add.
//! Dequantization and the dot products (with Q8_0 and Q8_K activations)
//! follow ggml's scalar code.

use super::check_len;
use super::nearest_int;
use crate::blocks::{BlockIQ4NL, BlockIQ4XS, BlockQ8_0, BlockQ8K, QK};
use crate::types::QK_K;
use half::f16;

/// ggml's `kvalues_iq4nl`.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml's `GROUP_MAX_EPS`: blocks below it quantize to zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Trial scales each side of the first guess (ggml's `ntry`).
const NTRY: i32 = 7;

/// ggml's `best_index_int8`: the index of the table value nearest to `x`
/// (the lower one on a tie).
fn best_index(x: f32) -> u8 {
    let v = &KVALUES_IQ4NL;
    if x <= v[0] as f32 {
        return 0;
    }
    if x >= v[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < v[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (v[mu - 1] as f32) < (v[mu] as f32) - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// `Σ w·q·x` and `Σ w·q²` of block `x` at inverse scale `id`.
fn fit(x: &[f32; QK], w: &[f32; QK], id: f32) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for j in 0..QK {
        let q = KVALUES_IQ4NL[best_index(id * x[j]) as usize] as f32;
        sumqx += w[j] * q * x[j];
        sumq2 += w[j] * q * q;
    }
    (sumqx, sumq2)
}

/// The best scale of one block of 32 (`quantize_row_iq4_nl_impl`'s inner
/// loop with `ntry = 7` and no importance matrix). The indices are chosen
/// afterwards, from the final scale.
fn block_scale(x: &[f32; QK], qw: Option<&[f32]>, sigma2: f32) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    // With an importance matrix: `qw·sqrt(σ² + x²)` (σ² over the super-block).
    let w: [f32; QK] = match qw {
        Some(qw) => {
            core::array::from_fn(|j| qw[j] * super::k_quants::common::sqrtf(sigma2 + x[j] * x[j]))
        }
        None => core::array::from_fn(|j| x[j] * x[j]),
    };
    let v0 = KVALUES_IQ4NL[0] as f32;
    let d = -max / v0;
    let (sumqx, sumq2) = fit(x, &w, 1.0 / d);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let id = (itry as f32 + v0) / max;
        let (sumqx, sumq2) = fit(x, &w, id);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Indices of `x` at scale `d` (`best_index_int8` of `x / d`).
fn indices(x: &[f32; QK], d: f32, l: &mut [u8; QK]) {
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (l, &v) in l.iter_mut().zip(x) {
        *l = best_index(id * v);
    }
}

/// Packs 32 indices as Q4_0 does: element `j` low nibble, `16 + j` high.
fn pack(l: &[u8; QK], qs: &mut [u8; QK / 2]) {
    for (j, q) in qs.iter_mut().enumerate() {
        *q = l[j] | (l[16 + j] << 4);
    }
}

/// ggml's `quantize_iq4_nl` without an importance matrix.
pub fn quantize_row_iq4_nl(x: &[f32], y: &mut [BlockIQ4NL]) {
    quantize_iq4_nl(x, y, None);
}

/// ggml's `quantize_iq4_nl` with importance weights `qw` (one per value).
pub fn quantize_row_iq4_nl_weighted(x: &[f32], y: &mut [BlockIQ4NL], qw: &[f32]) {
    assert_eq!(qw.len(), x.len(), "one importance weight per value");
    quantize_iq4_nl(x, y, Some(qw));
}

/// `σ²` of ggml's weighted i-quants: the mean square of a super-block,
/// doubled.
fn sigma2(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s * (2.0 / x.len() as f32)
}

fn quantize_iq4_nl(x: &[f32], y: &mut [BlockIQ4NL], qw: Option<&[f32]>) {
    check_len(y.len(), QK, x.len());
    for (ib, (xb, yb)) in x.chunks_exact(QK).zip(y).enumerate() {
        let xb: &[f32; QK] = xb.try_into().expect("32 values");
        let d = block_scale(xb, qw.map(|w| &w[ib * QK..(ib + 1) * QK]), sigma2(xb));
        yb.d = f16::from_f32(d);
        // The indices from the f32 scale, not its f16 rounding; an all-zero
        // block gets the index nearest 0 (8), as in ggml.
        let mut l = [0u8; QK];
        indices(xb, d, &mut l);
        pack(&l, &mut yb.qs);
    }
}

/// ggml's `quantize_iq4_xs` without an importance matrix.
pub fn quantize_row_iq4_xs(x: &[f32], y: &mut [BlockIQ4XS]) {
    quantize_iq4_xs(x, y, None);
}

/// ggml's `quantize_iq4_xs` with importance weights `qw` (one per value).
pub fn quantize_row_iq4_xs_weighted(x: &[f32], y: &mut [BlockIQ4XS], qw: &[f32]) {
    assert_eq!(qw.len(), x.len(), "one importance weight per value");
    quantize_iq4_xs(x, y, Some(qw));
}

fn quantize_iq4_xs(x: &[f32], y: &mut [BlockIQ4XS], qw: Option<&[f32]>) {
    check_len(y.len(), QK_K, x.len());
    for (is, (xs, yb)) in x.chunks_exact(QK_K).zip(y).enumerate() {
        let qs = qw.map(|w| &w[is * QK_K..(is + 1) * QK_K]);
        let s2 = sigma2(xs);
        let blocks: [&[f32; QK]; QK_K / QK] =
            core::array::from_fn(|ib| xs[ib * QK..(ib + 1) * QK].try_into().expect("32 values"));
        let mut ls = [[0u8; QK]; QK_K / QK];
        let mut scales = [0f32; QK_K / QK];
        let (mut max_scale, mut amax_scale) = (0f32, 0f32);
        for (ib, xb) in blocks.iter().enumerate() {
            let d = block_scale(xb, qs.map(|w| &w[ib * QK..(ib + 1) * QK]), s2);
            scales[ib] = d;
            if d.abs() > amax_scale {
                amax_scale = d.abs();
                max_scale = d;
            }
        }
        let d = -max_scale / 32.0;
        yb.d = f16::from_f32(d);
        yb.scales_h = 0;
        yb.scales_l = [0; QK_K / 64];
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (ib, xb) in blocks.iter().enumerate() {
            let l = nearest_int(id * scales[ib]).clamp(-32, 31);
            indices(xb, d * l as f32, &mut ls[ib]);
            let l = (l + 32) as u8;
            yb.scales_l[ib / 2] |= (l & 0xf) << (4 * (ib % 2));
            yb.scales_h |= u16::from(l >> 4) << (2 * ib);
        }
        for (ib, qs) in yb.qs.chunks_exact_mut(QK / 2).enumerate() {
            pack(&ls[ib], qs.try_into().expect("16 bytes"));
        }
    }
}

/// The 6-bit scale of block `ib` of an IQ4_XS super-block, less 32.
pub(crate) fn xs_scale(b: &BlockIQ4XS, ib: usize) -> i32 {
    let lo = (b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf;
    let hi = ((b.scales_h >> (2 * ib)) & 3) as u8;
    i32::from(lo | (hi << 4)) - 32
}

/// Dequantizes 16 packed bytes into 32 values at scale `d`.
fn dequant_block(d: f32, qs: &[u8; QK / 2], y: &mut [f32]) {
    for (j, &q) in qs.iter().enumerate() {
        y[j] = d * KVALUES_IQ4NL[(q & 0xf) as usize] as f32;
        y[j + 16] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
    }
}

/// ggml's `dequantize_row_iq4_nl`.
pub fn dequantize_row_iq4_nl(x: &[BlockIQ4NL], y: &mut [f32]) {
    check_len(x.len(), QK, y.len());
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        dequant_block(xb.d.to_f32(), &xb.qs, yb);
    }
}

/// ggml's `dequantize_row_iq4_xs`.
pub fn dequantize_row_iq4_xs(x: &[BlockIQ4XS], y: &mut [f32]) {
    check_len(x.len(), QK_K, y.len());
    for (xb, ys) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        for (ib, (qs, yb)) in xb
            .qs
            .chunks_exact(QK / 2)
            .zip(ys.chunks_exact_mut(QK))
            .enumerate()
        {
            let qs = qs.try_into().expect("16 bytes");
            dequant_block(d * xs_scale(xb, ib) as f32, qs, yb);
        }
    }
}

/// `Σ KVALUES_IQ4NL[q]·a` over one 32-element block.
fn block_dot(qs: &[u8; QK / 2], a: &[i8]) -> i32 {
    let mut sum = 0i32;
    for (j, &q) in qs.iter().enumerate() {
        sum += i32::from(a[j]) * i32::from(KVALUES_IQ4NL[(q & 0xf) as usize]);
        sum += i32::from(a[j + 16]) * i32::from(KVALUES_IQ4NL[(q >> 4) as usize]);
    }
    sum
}

/// ggml's `ggml_vec_dot_iq4_nl_q8_0_generic`.
pub fn vec_dot_iq4_nl_q8_0(x: &[BlockIQ4NL], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0f32;
    for (xb, yb) in x.iter().zip(y) {
        let d = yb.d.to_f32() * xb.d.to_f32();
        sumf += d * block_dot(&xb.qs, &yb.qs) as f32;
    }
    sumf
}

/// ggml's `ggml_vec_dot_iq4_xs_q8_K_generic`.
pub fn vec_dot_iq4_xs_q8_k(x: &[BlockIQ4XS], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0f32;
    for (xb, yb) in x.iter().zip(y) {
        let d4d8 = xb.d.to_f32() * yb.d;
        for (ib, (qs, a)) in xb
            .qs
            .chunks_exact(QK / 2)
            .zip(yb.qs.chunks_exact(QK))
            .enumerate()
        {
            let dl = d4d8 * xs_scale(xb, ib) as f32;
            sumf += dl * block_dot(qs.try_into().expect("16 bytes"), a) as f32;
        }
    }
    sumf
}
