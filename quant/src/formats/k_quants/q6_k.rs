//! Q6_K: 6-bit quants in 16 groups of 16 with signed 8-bit scales;
//! `x = d·sc·(q − 32)`. Low four bits in `ql`, high two in `qh`
//! (6.5625 bits per weight).

use super::common::{GROUP_MAX_EPS, block_isum, block_value, make_qx_quants, nearest_int};
use crate::blocks::{BlockQ6K, BlockQ8K};
use crate::formats::check_len;
use crate::types::QK_K;
use bytemuck::Zeroable;
use half::f16;

/// ggml's `quantize_row_q6_K_ref`.
pub fn quantize_row_q6_k(x: &[f32], y: &mut [BlockQ6K]) {
    check_len(y.len(), QK_K, x.len());
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        quantize_block(xb, yb, None);
    }
}

/// ggml's `quantize_row_q6_K_impl` with importance weights `qw` (one per
/// element of the row): the reference algorithm with `qw` in place of `x²`
/// as the fit's weights.
pub fn quantize_row_q6_k_weighted(x: &[f32], y: &mut [BlockQ6K], qw: &[f32]) {
    check_len(y.len(), QK_K, x.len());
    assert_eq!(qw.len(), x.len(), "one importance weight per value");
    for ((xb, yb), wb) in x
        .chunks_exact(QK_K)
        .zip(y.iter_mut())
        .zip(qw.chunks_exact(QK_K))
    {
        quantize_block(xb, yb, Some(wb));
    }
}

fn quantize_block(x: &[f32], y: &mut BlockQ6K, qw: Option<&[f32]>) {
    let mut levels = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for (ib, xg) in x.chunks_exact(16).enumerate() {
        let scale = make_qx_quants(
            32,
            xg,
            &mut levels[16 * ib..16 * (ib + 1)],
            qw.map(|w| &w[16 * ib..16 * (ib + 1)]),
        );
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }

    if max_abs_scale < GROUP_MAX_EPS {
        *y = BlockQ6K::zeroed();
        return;
    }

    let iscale = -128.0 / max_scale;
    y.d = f16::from_f32(1.0 / iscale);
    for (s, &scale) in y.scales.iter_mut().zip(&scales) {
        *s = nearest_int(iscale * scale).min(127) as i8;
    }

    // Requantize with the rounded scales; groups with a zero scale keep the
    // quants of the search.
    let d_all = y.d.to_f32();
    for (j, xg) in x.chunks_exact(16).enumerate() {
        let d = d_all * y.scales[j] as f32;
        if d == 0.0 {
            continue;
        }
        for (q, &v) in levels[16 * j..16 * (j + 1)].iter_mut().zip(xg) {
            *q = (nearest_int(v / d).clamp(-32, 31) + 32) as i8;
        }
    }

    // Element 128·h + 32·s + l: low nibble in ql[64·h + 32·(s % 2) + l]
    // (bits 4·(s / 2)), high two bits in qh[32·h + l] (bits 2·s).
    y.ql = [0; QK_K / 2];
    y.qh = [0; QK_K / 4];
    for (e, &q) in levels.iter().enumerate() {
        let q = q as u8;
        let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
        y.ql[64 * h + 32 * (s % 2) + l] |= (q & 0xf) << (4 * (s / 2));
        y.qh[32 * h + l] |= (q >> 4) << (2 * s);
    }
}

/// The signed quant (−32..=31) of element `e`.
#[inline]
fn quant(x: &BlockQ6K, e: usize) -> i8 {
    let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
    let low = (x.ql[64 * h + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0xf;
    let high = (x.qh[32 * h + l] >> (2 * s)) & 3;
    (low | (high << 4)) as i8 - 32
}

/// ggml's `dequantize_row_q6_K`.
pub fn dequantize_row_q6_k(x: &[BlockQ6K], y: &mut [f32]) {
    check_len(x.len(), QK_K, y.len());
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        for (e, out) in yb.iter_mut().enumerate() {
            *out = d * xb.scales[e / 16] as f32 * quant(xb, e) as f32;
        }
    }
}

/// ggml's `ggml_vec_dot_q6_K_q8_K_generic` integer sums, with the block values
/// formed and summed in f64 (the canonical form of `crate::kernels`).
pub fn vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sum = 0.0f64;
    let mut a = [0i8; QK_K];
    for (xb, yb) in x.iter().zip(y) {
        for (e, v) in a.iter_mut().enumerate() {
            *v = quant(xb, e);
        }
        let s = block_isum(&a, &yb.qs, |e| i32::from(xb.scales[e / 16]));
        sum += block_value(xb.d.to_f32(), 0.0, yb.d, s, 0);
    }
    sum as f32
}
