//! The 32-wide formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 (ggml-quants.c `_ref`).

use super::check_len;
use super::k_quants::common::{SEARCH_QKX3, make_qkx2_quants, make_qx_quants, sqrtf};
use crate::blocks::*;
use half::f16;

/// Round half away from zero, like C's `roundf`.
#[inline]
fn roundf(x: f32) -> f32 {
    // core has no `f32::round` without std; this matches roundf for all finite x.
    let t = x.trunc_compat();
    if (x - t).abs() >= 0.5 {
        t + x.signum()
    } else {
        t
    }
}

trait TruncCompat {
    fn trunc_compat(self) -> Self;
}
impl TruncCompat for f32 {
    #[inline]
    fn trunc_compat(self) -> f32 {
        // Values with |x| ≥ 2^23 are already integers (or inf/NaN).
        if self.abs() < 8_388_608.0 {
            (self as i32) as f32
        } else {
            self
        }
    }
}

/// Largest magnitude and the signed value that has it (first one wins).
#[inline]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline]
fn inv(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

pub fn quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0]) {
    check_len(y.len(), QK, x.len());
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (_, max) = signed_absmax(xb);
        let d = max / -8.0;
        let id = inv(d);
        yb.d = f16::from_f32(d);
        for j in 0..QK / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK / 2 + j] * id;
            let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
            yb.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

pub fn dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    check_len(x.len(), QK, y.len());
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = xb.d.to_f32();
        for j in 0..QK / 2 {
            yb[j] = ((xb.qs[j] & 0x0f) as i32 - 8) as f32 * d;
            yb[j + QK / 2] = ((xb.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let v0 = (xb.qs[j] & 0x0f) as i32 - 8;
            let v1 = (xb.qs[j] >> 4) as i32 - 8;
            sumi += v0 * yb.qs[j] as i32 + v1 * yb.qs[j + QK / 2] as i32;
        }
        sumf += sumi as f32 * (xb.d.to_f32() * yb.d.to_f32());
    }
    sumf
}

pub fn quantize_row_q4_1(x: &[f32], y: &mut [BlockQ4_1]) {
    check_len(y.len(), QK, x.len());
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = inv(d);
        yb.d = f16::from_f32(d);
        yb.m = f16::from_f32(min);
        for j in 0..QK / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[QK / 2 + j] - min) * id;
            let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
            yb.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

pub fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) {
    check_len(x.len(), QK, y.len());
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (xb.d.to_f32(), xb.m.to_f32());
        for j in 0..QK / 2 {
            yb[j] = (xb.qs[j] & 0x0f) as f32 * d + m;
            yb[j + QK / 2] = (xb.qs[j] >> 4) as f32 * d + m;
        }
    }
}

pub fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let v0 = (xb.qs[j] & 0x0f) as i32;
            let v1 = (xb.qs[j] >> 4) as i32;
            sumi += v0 * yb.qs[j] as i32 + v1 * yb.qs[j + QK / 2] as i32;
        }
        sumf += (xb.d.to_f32() * yb.d.to_f32()) * sumi as f32 + xb.m.to_f32() * yb.s.to_f32();
    }
    sumf
}

pub fn quantize_row_q5_0(x: &[f32], y: &mut [BlockQ5_0]) {
    check_len(y.len(), QK, x.len());
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (_, max) = signed_absmax(xb);
        let d = max / -16.0;
        let id = inv(d);
        yb.d = f16::from_f32(d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK / 2 + j] * id;
            let xi0 = ((x0 + 16.5) as i8).min(31) as u8;
            let xi1 = ((x1 + 16.5) as i8).min(31) as u8;
            yb.qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= (((xi0 & 0x10) >> 4) as u32) << j;
            qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        yb.qh = qh.to_le_bytes();
    }
}

pub fn dequantize_row_q5_0(x: &[BlockQ5_0], y: &mut [f32]) {
    check_len(x.len(), QK, y.len());
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = xb.d.to_f32();
        let qh = u32::from_le_bytes(xb.qh);
        for j in 0..QK / 2 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            yb[j] = (((xb.qs[j] & 0x0f) as u32 | h0) as i32 - 16) as f32 * d;
            yb[j + QK / 2] = (((xb.qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
        }
    }
}

pub fn vec_dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let qh = u32::from_le_bytes(xb.qh);
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            let v0 = ((xb.qs[j] & 0x0f) as u32 | h0) as i32 - 16;
            let v1 = ((xb.qs[j] >> 4) as u32 | h1) as i32 - 16;
            sumi += v0 * yb.qs[j] as i32 + v1 * yb.qs[j + QK / 2] as i32;
        }
        sumf += sumi as f32 * (xb.d.to_f32() * yb.d.to_f32());
    }
    sumf
}

pub fn quantize_row_q5_1(x: &[f32], y: &mut [BlockQ5_1]) {
    check_len(y.len(), QK, x.len());
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = inv(d);
        yb.d = f16::from_f32(d);
        yb.m = f16::from_f32(min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[QK / 2 + j] - min) * id;
            let xi0 = (x0 + 0.5) as u8;
            let xi1 = (x1 + 0.5) as u8;
            yb.qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= (((xi0 & 0x10) >> 4) as u32) << j;
            qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        yb.qh = qh.to_le_bytes();
    }
}

pub fn dequantize_row_q5_1(x: &[BlockQ5_1], y: &mut [f32]) {
    check_len(x.len(), QK, y.len());
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (xb.d.to_f32(), xb.m.to_f32());
        let qh = u32::from_le_bytes(xb.qh);
        for j in 0..QK / 2 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            yb[j] = ((xb.qs[j] & 0x0f) as u32 | h0) as f32 * d + m;
            yb[j + QK / 2] = ((xb.qs[j] >> 4) as u32 | h1) as f32 * d + m;
        }
    }
}

pub fn vec_dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let qh = u32::from_le_bytes(xb.qh);
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            let v0 = ((xb.qs[j] & 0x0f) as u32 | h0) as i32;
            let v1 = ((xb.qs[j] >> 4) as u32 | h1) as i32;
            sumi += v0 * yb.qs[j] as i32 + v1 * yb.qs[j + QK / 2] as i32;
        }
        sumf += (xb.d.to_f32() * yb.d.to_f32()) * sumi as f32 + xb.m.to_f32() * yb.s.to_f32();
    }
    sumf
}

/// The per-element weights of ggml's importance-weighted 32-wide quantizers
/// (`quantize_row_q4_0_impl` …): `qw·sqrt(σ² + x²)` with `σ²` the row's
/// mean square.
fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

fn block_weights(xb: &[f32], qw: &[f32], sigma2: f32) -> [f32; QK] {
    core::array::from_fn(|j| qw[j] * sqrtf(sigma2 + xb[j] * xb[j]))
}

/// Walks a row's blocks with their importance weights.
fn weighted_blocks<'a, B>(
    x: &'a [f32],
    y: &'a mut [B],
    qw: &'a [f32],
) -> impl Iterator<Item = (&'a [f32], [f32; QK], &'a mut B)> {
    check_len(y.len(), QK, x.len());
    assert_eq!(qw.len(), x.len(), "one importance weight per value");
    let sigma2 = row_sigma2(x);
    x.chunks_exact(QK)
        .zip(qw.chunks_exact(QK))
        .zip(y.iter_mut())
        .map(move |((xb, wb), yb)| (xb, block_weights(xb, wb, sigma2), yb))
}

/// Packs 5-bit quants (low nibbles in `qs`, fifth bits in `qh`).
fn pack_q5(l: &[u8; QK], qs: &mut [u8; QK / 2]) -> [u8; 4] {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (xi0, xi1) = (l[j], l[j + QK / 2]);
        qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    qh.to_le_bytes()
}

/// ggml's `quantize_row_q4_0_impl` with importance weights `qw` (one per
/// element of the row): `make_qx_quants` per block.
pub fn quantize_row_q4_0_weighted(x: &[f32], y: &mut [BlockQ4_0], qw: &[f32]) {
    for (xb, w, yb) in weighted_blocks(x, y, qw) {
        let mut l = [0i8; QK];
        let d = make_qx_quants(8, xb, &mut l, Some(&w));
        yb.d = f16::from_f32(d);
        for j in 0..QK / 2 {
            yb.qs[j] = l[j] as u8 | ((l[j + QK / 2] as u8) << 4);
        }
    }
}

/// ggml's `quantize_row_q4_1_impl` with importance weights `qw`:
/// `make_qkx3_quants` per block.
pub fn quantize_row_q4_1_weighted(x: &[f32], y: &mut [BlockQ4_1], qw: &[f32]) {
    for (xb, w, yb) in weighted_blocks(x, y, qw) {
        let (mut l, mut aux) = ([0u8; QK], [0u8; QK]);
        let (d, the_min) = make_qkx2_quants(15, xb, &w, &mut l, &mut aux, SEARCH_QKX3);
        yb.d = f16::from_f32(d);
        yb.m = f16::from_f32(-the_min);
        for j in 0..QK / 2 {
            yb.qs[j] = l[j] | (l[j + QK / 2] << 4);
        }
    }
}

/// ggml's `quantize_row_q5_0_impl` with importance weights `qw`.
pub fn quantize_row_q5_0_weighted(x: &[f32], y: &mut [BlockQ5_0], qw: &[f32]) {
    for (xb, w, yb) in weighted_blocks(x, y, qw) {
        let mut l = [0i8; QK];
        let d = make_qx_quants(16, xb, &mut l, Some(&w));
        yb.d = f16::from_f32(d);
        yb.qh = pack_q5(&l.map(|v| v as u8), &mut yb.qs);
    }
}

/// ggml's `quantize_row_q5_1_impl` with importance weights `qw`.
pub fn quantize_row_q5_1_weighted(x: &[f32], y: &mut [BlockQ5_1], qw: &[f32]) {
    for (xb, w, yb) in weighted_blocks(x, y, qw) {
        let (mut l, mut aux) = ([0u8; QK], [0u8; QK]);
        let (d, the_min) = make_qkx2_quants(31, xb, &w, &mut l, &mut aux, SEARCH_QKX3);
        yb.d = f16::from_f32(d);
        yb.m = f16::from_f32(-the_min);
        yb.qh = pack_q5(&l, &mut yb.qs);
    }
}

pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    check_len(y.len(), QK, x.len());
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (amax, _) = signed_absmax(xb);
        let d = amax / 127.0;
        let id = inv(d);
        yb.d = f16::from_f32(d);
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = roundf(v * id) as i8;
        }
    }
}

pub fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    check_len(x.len(), QK, y.len());
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = xb.d.to_f32();
        for (o, &q) in yb.iter_mut().zip(&xb.qs) {
            *o = q as f32 * d;
        }
    }
}

pub fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let sumi: i32 = xb
            .qs
            .iter()
            .zip(&yb.qs)
            .map(|(&a, &b)| a as i32 * b as i32)
            .sum();
        sumf += sumi as f32 * (xb.d.to_f32() * yb.d.to_f32());
    }
    sumf
}

pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    check_len(y.len(), QK, x.len());
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (amax, _) = signed_absmax(xb);
        let d = amax / 127.0;
        let id = inv(d);
        let mut sum = 0i32;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = roundf(v * id) as i8;
            sum += *q as i32;
        }
        yb.d = f16::from_f32(d);
        yb.s = f16::from_f32(sum as f32 * d);
    }
}

pub fn dequantize_row_q8_1(x: &[BlockQ8_1], y: &mut [f32]) {
    check_len(x.len(), QK, y.len());
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = xb.d.to_f32();
        for (o, &q) in yb.iter_mut().zip(&xb.qs) {
            *o = q as f32 * d;
        }
    }
}

pub fn vec_dot_q8_1_q8_1(x: &[BlockQ8_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let sumi: i32 = xb
            .qs
            .iter()
            .zip(&yb.qs)
            .map(|(&a, &b)| a as i32 * b as i32)
            .sum();
        sumf += sumi as f32 * (xb.d.to_f32() * yb.d.to_f32());
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundf_matches_c() {
        for (x, r) in [
            (0.5f32, 1.0f32),
            (-0.5, -1.0),
            (1.49, 1.0),
            (2.5, 3.0),
            (-2.5, -3.0),
            (0.0, 0.0),
        ] {
            assert_eq!(roundf(x), r, "{x}");
        }
    }
}
