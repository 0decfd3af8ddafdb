//! Q8_K: the activation format the K-quants are multiplied with;
//! `x = d·q` with an `f32` scale and the sum of every 16 quants.

use super::common::{nearest_int, signed_absmax};
use crate::blocks::BlockQ8K;
use crate::formats::check_len;
use crate::types::QK_K;

/// ggml's `quantize_row_q8_K_ref`: `q = min(127, round(−127·x / max))`
/// where `max` is the signed value of largest magnitude, `d = 1 / iscale`
/// (an all-zero block gets `d = 0`, zero quants and zero sums).
pub fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    check_len(y.len(), QK_K, x.len());
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let (max, amax) = signed_absmax(xb);
        if amax == 0.0 {
            yb.d = 0.0;
            yb.qs = [0; QK_K];
            yb.bsums = [0; QK_K / 16];
            continue;
        }
        // −127 rather than −128 keeps every quant in [−127, 127].
        let iscale = -127.0 / max;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (sum, qg) in yb.bsums.iter_mut().zip(yb.qs.chunks_exact(16)) {
            *sum = qg.iter().map(|&q| i16::from(q)).sum();
        }
        yb.d = 1.0 / iscale;
    }
}

/// ggml's `dequantize_row_q8_K`.
pub fn dequantize_row_q8_k(x: &[BlockQ8K], y: &mut [f32]) {
    check_len(x.len(), QK_K, y.len());
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        for (out, &q) in yb.iter_mut().zip(&xb.qs) {
            *out = xb.d * q as f32;
        }
    }
}

/// Q8_K · Q8_K (ggml has no such kernel; this follows its Q8_0 · Q8_0 one):
/// an exact integer sum per block, scaled by `dx · dy`.
pub fn vec_dot_q8_k_q8_k(x: &[BlockQ8K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for (&a, &b) in xb.qs.iter().zip(&yb.qs) {
            sumi += i32::from(a) * i32::from(b);
        }
        sumf += sumi as f32 * (xb.d * yb.d);
    }
    sumf
}
