//! Q5_K: 5-bit quants in 8 groups of 32, each with a 6-bit scale and a
//! 6-bit min; `x = d·sc·q − dmin·m`. The low four bits are packed like
//! Q4_K, the fifth in `qh` (5.5 bits per weight).

use super::common::{
    ScaleSearch, block_isum, block_value, get_scale_min_k4, quantize_superblock_qkx,
    quantize_superblock_qkx_weighted,
};
use super::q4_k::{min_correction, nibble, unpack_scales_mins};
use crate::blocks::{BlockQ5K, BlockQ8K};
use crate::formats::check_len;
use crate::types::QK_K;

/// The search of `quantize_row_q5_K_ref`: 16 steps, squared error.
const SEARCH: ScaleSearch = ScaleSearch {
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};

/// ggml's `quantize_row_q5_K_ref`.
pub fn quantize_row_q5_k(x: &[f32], y: &mut [BlockQ5K]) {
    check_len(y.len(), QK_K, x.len());
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let (d, dmin, scales, levels) = quantize_superblock_qkx(xb, 31, SEARCH);
        pack(yb, d, dmin, scales, &levels);
    }
}

/// ggml's `quantize_row_q5_K_impl` with importance weights `qw` (one per
/// element of the row).
pub fn quantize_row_q5_k_weighted(x: &[f32], y: &mut [BlockQ5K], qw: &[f32]) {
    check_len(y.len(), QK_K, x.len());
    assert_eq!(qw.len(), x.len(), "one importance weight per value");
    for ((xb, yb), wb) in x
        .chunks_exact(QK_K)
        .zip(y.iter_mut())
        .zip(qw.chunks_exact(QK_K))
    {
        let (d, dmin, scales, levels) = quantize_superblock_qkx_weighted(xb, wb, 31, true);
        pack(yb, d, dmin, scales, &levels);
    }
}

fn pack(yb: &mut BlockQ5K, d: half::f16, dmin: half::f16, scales: [u8; 12], levels: &[u8; QK_K]) {
    yb.d = d;
    yb.dmin = dmin;
    yb.scales = scales;
    yb.qh = [0; QK_K / 8];
    yb.qs = [0; QK_K / 2];
    for (e, &q) in levels.iter().enumerate() {
        let byte = 32 * (e / 64) + e % 32;
        let shift = if e % 64 < 32 { 0 } else { 4 };
        yb.qs[byte] |= (q & 0xf) << shift;
        if q > 15 {
            yb.qh[e % 32] |= 1 << (e / 32);
        }
    }
}

/// The 5-bit quant of element `e`: its high bit is bit `e / 32` of
/// `qh[e % 32]`.
#[inline]
fn quant(x: &BlockQ5K, e: usize) -> u8 {
    let high = (x.qh[e % 32] >> (e / 32)) & 1;
    nibble(&x.qs, e) | (high << 4)
}

/// ggml's `dequantize_row_q5_K`.
pub fn dequantize_row_q5_k(x: &[BlockQ5K], y: &mut [f32]) {
    check_len(x.len(), QK_K, y.len());
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, min) = (xb.d.to_f32(), xb.dmin.to_f32());
        for (j, yg) in yb.chunks_exact_mut(32).enumerate() {
            let (sc, m) = get_scale_min_k4(j, &xb.scales);
            let d1 = d * sc as f32;
            let m1 = min * m as f32;
            for (l, out) in yg.iter_mut().enumerate() {
                *out = d1 * quant(xb, 32 * j + l) as f32 - m1;
            }
        }
    }
}

/// ggml's `ggml_vec_dot_q5_K_q8_K_generic` integer sums, with the block values
/// formed and summed in f64 (the canonical form of `crate::kernels`).
pub fn vec_dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sum = 0.0f64;
    let mut a = [0i8; QK_K];
    for (xb, yb) in x.iter().zip(y) {
        for (e, v) in a.iter_mut().enumerate() {
            *v = quant(xb, e) as i8;
        }
        let (scales, mins) = unpack_scales_mins(&xb.scales);
        let m = min_correction(&yb.bsums, &mins);
        let s = block_isum(&a, &yb.qs, |e| i32::from(scales[e / 32]));
        sum += block_value(xb.d.to_f32(), xb.dmin.to_f32(), yb.d, s, m);
    }
    sum as f32
}
