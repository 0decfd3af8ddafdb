//! Q5_0 · Q8_0 and Q5_1 · Q8_1 at the baseline NEON and dotprod levels.
//!
//! As ggml's arm `ggml_vec_dot_q5_0_q8_0`: the 32 fifth bits of a block are
//! spread to one byte per element (a `tbl` broadcast of the `qh` bytes, a
//! bit test against `1, 2, 4, …, 128`), OR-ed onto the nibbles, and the
//! 5-bit values meet the activations in `smull` + `sadalp` (NEON) or `sdot`
//! (dotprod). Each block's integer sum is exact for any block contents, and
//! its float contribution is the scalar code's expression
//! ([`crate::formats::legacy`]) accumulated in block order: the results are
//! bit-identical to the scalar `vec_dot`.

use super::{f16_to_f32, sdot};
use crate::blocks::*;
use core::arch::aarch64::*;

/// The 32 values `nibble | fifth bit << 4` (0..=31) of a Q5 block as two
/// vectors: elements 0..16 and 16..32.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn unpack_q5(qs: &[u8; 16], qh: [u8; 4]) -> (int8x16_t, int8x16_t) {
    const IDX_LO: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
    const IDX_HI: [u8; 16] = [2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3];
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    // SAFETY: 16-byte loads of `qs` and of the three 16-byte constants.
    unsafe {
        let h = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes(qh)));
        let bits = vld1q_u8(BITS.as_ptr());
        let m10 = vdupq_n_u8(0x10);
        let h0 = vandq_u8(
            vtstq_u8(vqtbl1q_u8(h, vld1q_u8(IDX_LO.as_ptr())), bits),
            m10,
        );
        let h1 = vandq_u8(
            vtstq_u8(vqtbl1q_u8(h, vld1q_u8(IDX_HI.as_ptr())), bits),
            m10,
        );
        let q = vld1q_u8(qs.as_ptr());
        let lo = vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0f)), h0);
        let hi = vorrq_u8(vshrq_n_u8::<4>(q), h1);
        (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi))
    }
}

/// `Σ a·b` over 32 int8 pairs (`smull` + `sadalp`: one product per i16
/// lane before widening, exact for any int8 values).
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn dot32_widen(a: (int8x16_t, int8x16_t), b: (int8x16_t, int8x16_t)) -> i32 {
    // SAFETY: register arithmetic only.
    unsafe {
        let mut acc = vpaddlq_s16(vmull_s8(vget_low_s8(a.0), vget_low_s8(b.0)));
        acc = vpadalq_s16(acc, vmull_high_s8(a.0, b.0));
        acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a.1), vget_low_s8(b.1)));
        acc = vpadalq_s16(acc, vmull_high_s8(a.1, b.1));
        vaddvq_s32(acc)
    }
}

/// Two 16-byte loads of a 32-value activation block.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn load32(q: &[i8; 32]) -> (int8x16_t, int8x16_t) {
    // SAFETY: two 16-byte loads of the 32-byte array.
    unsafe { (vld1q_s8(q.as_ptr()), vld1q_s8(q.as_ptr().add(16))) }
}

/// Q5_0's values `q − 16` (−16..=15).
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn q5_0_values(x: &BlockQ5_0) -> (int8x16_t, int8x16_t) {
    // SAFETY: register arithmetic on the unpacked block.
    unsafe {
        let (lo, hi) = unpack_q5(&x.qs, x.qh);
        let m16 = vdupq_n_s8(16);
        (vsubq_s8(lo, m16), vsubq_s8(hi, m16))
    }
}

/// Q5_0 × Q8_0, baseline NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn vec_dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        // SAFETY: NEON is baseline; the helpers read the blocks' own arrays.
        let sumi = unsafe { dot32_widen(q5_0_values(xb), load32(&yb.qs)) };
        sumf += sumi as f32 * (f16_to_f32(xb.d) * f16_to_f32(yb.d));
    }
    sumf
}

/// Q5_1 × Q8_1, baseline NEON: `d_x·d_y·Σq·y + m_x·s_y` per block.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn vec_dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        // SAFETY: NEON is baseline; the helpers read the blocks' own arrays.
        let sumi = unsafe { dot32_widen(unpack_q5(&xb.qs, xb.qh), load32(&yb.qs)) };
        sumf += (f16_to_f32(xb.d) * f16_to_f32(yb.d)) * sumi as f32
            + f16_to_f32(xb.m) * f16_to_f32(yb.s);
    }
    sumf
}

/// `Σ a·b` over 32 int8 pairs with two `sdot`s.
macro_rules! dot32_sdot {
    ($a:expr, $b:expr) => {{
        let (a, b): ((int8x16_t, int8x16_t), (int8x16_t, int8x16_t)) = ($a, $b);
        vaddvq_s32(sdot!(sdot!(vdupq_n_s32(0), a.0, b.0), a.1, b.1))
    }};
}

/// Q5_0 × Q8_0 with `sdot`.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn vec_dot_q5_0_q8_0_dotprod(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        // SAFETY: the helpers read the blocks' own arrays; `sdot` needs
        // dotprod, which this function enables.
        let sumi = unsafe { dot32_sdot!(q5_0_values(xb), load32(&yb.qs)) };
        sumf += sumi as f32 * (f16_to_f32(xb.d) * f16_to_f32(yb.d));
    }
    sumf
}

/// Q5_1 × Q8_1 with `sdot`.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn vec_dot_q5_1_q8_1_dotprod(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        // SAFETY: as in `vec_dot_q5_0_q8_0_dotprod`.
        let sumi = unsafe { dot32_sdot!(unpack_q5(&xb.qs, xb.qh), load32(&yb.qs)) };
        sumf += (f16_to_f32(xb.d) * f16_to_f32(yb.d)) * sumi as f32
            + f16_to_f32(xb.m) * f16_to_f32(yb.s);
    }
    sumf
}
