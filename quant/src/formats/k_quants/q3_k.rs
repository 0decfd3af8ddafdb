//! Q3_K: 3-bit quants in 16 groups of 16 with signed 6-bit scales;
//! `x = d·(sc − 32)·(q − 4)`. The low two bits of each quant sit in `qs`
//! (packed like Q2_K), the third bit in `hmask` (3.4375 bits per weight).

use super::common::{
    block_isum, block_value, make_q3_quants, make_qx_quants, nearest_int, pack_2bit, sqrtf,
    unpack_2bit,
};
use crate::blocks::{BlockQ3K, BlockQ8K};
use crate::formats::check_len;
use crate::types::QK_K;
use half::f16;

/// ggml's `quantize_row_q3_K_ref`.
pub fn quantize_row_q3_k(x: &[f32], y: &mut [BlockQ3K]) {
    check_len(y.len(), QK_K, x.len());
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        quantize_block(xb, yb);
    }
}

/// ggml's `quantize_row_q3_K_impl` with importance weights `qw` (one per
/// element of the row): `make_qx_quants` per group of 16 with weights
/// `qw·sqrt(σ² + x²)`, the 6-bit scales by `make_qx_quants` weighted by the
/// groups' weight sums.
pub fn quantize_row_q3_k_weighted(x: &[f32], y: &mut [BlockQ3K], qw: &[f32]) {
    check_len(y.len(), QK_K, x.len());
    assert_eq!(qw.len(), x.len(), "one importance weight per value");
    for ((xb, yb), wb) in x
        .chunks_exact(QK_K)
        .zip(y.iter_mut())
        .zip(qw.chunks_exact(QK_K))
    {
        let mut levels = [0i8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        let mut sw = [0.0f32; QK_K / 16];
        let mut sumx2 = 0.0f32;
        for &v in xb {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        for (j, (xg, wg)) in xb.chunks_exact(16).zip(wb.chunks_exact(16)).enumerate() {
            let w: [f32; 16] = core::array::from_fn(|l| wg[l] * sqrtf(sigma2 + xg[l] * xg[l]));
            let mut sumw = 0.0f32;
            for &v in &w {
                sumw += v;
            }
            sw[j] = sumw;
            let lg = &mut levels[16 * j..16 * (j + 1)];
            scales[j] = make_qx_quants(4, xg, lg, Some(&w));
        }
        let mut ls = [0i8; QK_K / 16];
        let d_block = make_qx_quants(32, &scales, &mut ls, Some(&sw));
        yb.scales = pack_scales(&ls.map(|l| l as u8));
        yb.d = f16::from_f32(d_block);
        requantize_and_pack(xb, yb, &mut levels);
    }
}

/// The 6-bit scale of group `j` (0..16), still offset by 32.
///
/// Low nibbles: groups 0–7 in the low halves of bytes 0–7, groups 8–15 in
/// their high halves. High two bits: byte `8 + j % 4`, bits `2·(j / 4)`.
#[inline]
fn scale6(scales: &[u8; 12], j: usize) -> u8 {
    let low = if j < 8 {
        scales[j] & 0xf
    } else {
        scales[j - 8] >> 4
    };
    low | (((scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)
}

/// Packs sixteen 6-bit scales (already offset by 32), inverse of [`scale6`].
fn pack_scales(ls: &[u8; QK_K / 16]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for (j, &l) in ls.iter().enumerate() {
        if j < 8 {
            out[j] = l & 0xf;
        } else {
            out[j - 8] |= (l & 0xf) << 4;
        }
        out[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
    }
    out
}

/// The high bit of element `e` lives in bit `e / 32` of `hmask[e % 32]`.
#[inline]
fn high_bit(hmask: &[u8; QK_K / 8], e: usize) -> bool {
    hmask[e % 32] & (1 << (e / 32)) != 0
}

fn quantize_block(x: &[f32], y: &mut BlockQ3K) {
    let mut levels = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    let mut amax = 0.0f32;
    for (j, xg) in x.chunks_exact(16).enumerate() {
        scales[j] = make_q3_quants(4, xg, &mut levels[16 * j..16 * (j + 1)]);
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }

    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        let mut ls = [0u8; QK_K / 16];
        for (l, &scale) in ls.iter_mut().zip(&scales) {
            // ggml keeps the rounded value in an int8_t before clamping.
            let q = i32::from(nearest_int(iscale * scale) as i8);
            *l = (q.clamp(-32, 31) + 32) as u8;
        }
        y.scales = pack_scales(&ls);
        y.d = f16::from_f32(1.0 / iscale);
    } else {
        y.scales = [0; 12];
        y.d = f16::from_f32(0.0);
    }

    requantize_and_pack(x, y, &mut levels);
}

/// Requantizes `levels` with the block's rounded scales (groups with a zero
/// scale keep the quants of the search) and packs them.
fn requantize_and_pack(x: &[f32], y: &mut BlockQ3K, levels: &mut [i8; QK_K]) {
    let d_all = y.d.to_f32();
    for (j, xg) in x.chunks_exact(16).enumerate() {
        let sc = i32::from(scale6(&y.scales, j)) - 32;
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        for (q, &v) in levels[16 * j..16 * (j + 1)].iter_mut().zip(xg) {
            *q = (nearest_int(v / d).clamp(-4, 3) + 4) as i8;
        }
    }

    // Split the quants (0..=7) into the high bit and two low bits.
    y.hmask = [0; QK_K / 8];
    let mut low = [0u8; QK_K];
    for (e, (&q, lo)) in levels.iter().zip(low.iter_mut()).enumerate() {
        let mut q = q as u8;
        if q > 3 {
            y.hmask[e % 32] |= 1 << (e / 32);
            q -= 4;
        }
        *lo = q;
    }
    pack_2bit(&low, &mut y.qs);
}

/// The signed quant (−4..=3) of element `e`.
#[inline]
fn quant(x: &BlockQ3K, e: usize) -> i8 {
    let q = unpack_2bit(&x.qs, e) as i8;
    if high_bit(&x.hmask, e) { q } else { q - 4 }
}

/// ggml's `dequantize_row_q3_K`.
pub fn dequantize_row_q3_k(x: &[BlockQ3K], y: &mut [f32]) {
    check_len(x.len(), QK_K, y.len());
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d_all = xb.d.to_f32();
        for (j, yg) in yb.chunks_exact_mut(16).enumerate() {
            let dl = d_all * (i32::from(scale6(&xb.scales, j)) - 32) as f32;
            for (l, out) in yg.iter_mut().enumerate() {
                *out = dl * quant(xb, 16 * j + l) as f32;
            }
        }
    }
}

/// ggml's `ggml_vec_dot_q3_K_q8_K_generic` integer sums, with the block values
/// formed and summed in f64 (the canonical form of `crate::kernels`).
pub fn vec_dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sum = 0.0f64;
    let mut a = [0i8; QK_K];
    for (xb, yb) in x.iter().zip(y) {
        for (e, v) in a.iter_mut().enumerate() {
            *v = quant(xb, e);
        }
        let s = block_isum(&a, &yb.qs, |e| i32::from(scale6(&xb.scales, e / 16)) - 32);
        sum += block_value(xb.d.to_f32(), 0.0, yb.d, s, 0);
    }
    sum as f32
}
