//! Q4_K: 4-bit quants in 8 groups of 32, each with a 6-bit scale and a
//! 6-bit min; `x = d·sc·q − dmin·m` (4.5 bits per weight).

use super::common::{
    ScaleSearch, block_isum, block_value, get_scale_min_k4, quantize_superblock_qkx,
    quantize_superblock_qkx_weighted,
};
use crate::blocks::{BlockQ4K, BlockQ8K};
use crate::formats::check_len;
use crate::types::QK_K;

/// The search of `quantize_row_q4_K_ref`: 21 steps, squared error.
const SEARCH: ScaleSearch = ScaleSearch {
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
    use_mad: false,
};

/// ggml's `quantize_row_q4_K_ref`.
pub fn quantize_row_q4_k(x: &[f32], y: &mut [BlockQ4K]) {
    check_len(y.len(), QK_K, x.len());
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let (d, dmin, scales, levels) = quantize_superblock_qkx(xb, 15, SEARCH);
        yb.d = d;
        yb.dmin = dmin;
        yb.scales = scales;
        yb.qs = pack_nibbles(&levels);
    }
}

/// ggml's `quantize_row_q4_K_impl` with importance weights `qw` (one per
/// element of the row).
pub fn quantize_row_q4_k_weighted(x: &[f32], y: &mut [BlockQ4K], qw: &[f32]) {
    check_len(y.len(), QK_K, x.len());
    assert_eq!(qw.len(), x.len(), "one importance weight per value");
    for ((xb, yb), wb) in x
        .chunks_exact(QK_K)
        .zip(y.iter_mut())
        .zip(qw.chunks_exact(QK_K))
    {
        let (d, dmin, scales, levels) = quantize_superblock_qkx_weighted(xb, wb, 15, false);
        yb.d = d;
        yb.dmin = dmin;
        yb.scales = scales;
        yb.qs = pack_nibbles(&levels);
    }
}

/// Element `64·c + l` goes to the low nibble of byte `32·c + l`, element
/// `64·c + 32 + l` to its high nibble.
fn pack_nibbles(levels: &[u8; QK_K]) -> [u8; QK_K / 2] {
    let mut qs = [0u8; QK_K / 2];
    for (c, lc) in levels.chunks_exact(64).enumerate() {
        for l in 0..32 {
            qs[32 * c + l] = lc[l] | (lc[l + 32] << 4);
        }
    }
    qs
}

/// The 4-bit quant of element `e`, as packed by [`pack_nibbles`].
#[inline]
pub(super) fn nibble(qs: &[u8; QK_K / 2], e: usize) -> u8 {
    let byte = qs[32 * (e / 64) + e % 32];
    if e % 64 < 32 { byte & 0xf } else { byte >> 4 }
}

/// ggml's `dequantize_row_q4_K`.
pub fn dequantize_row_q4_k(x: &[BlockQ4K], y: &mut [f32]) {
    check_len(x.len(), QK_K, y.len());
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, min) = (xb.d.to_f32(), xb.dmin.to_f32());
        for (j, yg) in yb.chunks_exact_mut(32).enumerate() {
            let (sc, m) = get_scale_min_k4(j, &xb.scales);
            let d1 = d * sc as f32;
            let m1 = min * m as f32;
            for (l, out) in yg.iter_mut().enumerate() {
                *out = d1 * nibble(&xb.qs, 32 * j + l) as f32 - m1;
            }
        }
    }
}

/// ggml's `ggml_vec_dot_q4_K_q8_K_generic` integer sums, with the block values
/// formed and summed in f64 (the canonical form of `crate::kernels`).
pub fn vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sum = 0.0f64;
    let mut a = [0i8; QK_K];
    for (xb, yb) in x.iter().zip(y) {
        for (e, v) in a.iter_mut().enumerate() {
            *v = nibble(&xb.qs, e) as i8;
        }
        let (scales, mins) = unpack_scales_mins(&xb.scales);
        let m = min_correction(&yb.bsums, &mins);
        let s = block_isum(&a, &yb.qs, |e| i32::from(scales[e / 32]));
        sum += block_value(xb.d.to_f32(), xb.dmin.to_f32(), yb.d, s, m);
    }
    sum as f32
}

/// All eight (scale, min) pairs of a Q4_K/Q5_K block.
pub(super) fn unpack_scales_mins(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for j in 0..8 {
        (scales[j], mins[j]) = get_scale_min_k4(j, packed);
    }
    (scales, mins)
}

/// `Σ bsum · min` over the 16-sums of the activations (two per 32-group).
pub(super) fn min_correction(bsums: &[i16; QK_K / 16], mins: &[u8; 8]) -> i32 {
    let mut sumi = 0i32;
    for (j, &b) in bsums.iter().enumerate() {
        sumi += i32::from(b) * i32::from(mins[j / 2]);
    }
    sumi
}
