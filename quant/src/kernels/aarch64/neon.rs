//! Baseline Advanced SIMD kernels (every aarch64 CPU).
//!
//! Without `sdot`, int8 products are widened with `smull`/`smlal` into i16
//! lanes and folded into i32 with pairwise widening adds (`sadalp`), as in
//! ggml's `ggml_vdotq_s32` fallback. Every kernel sizes how many products an
//! i16 lane may hold so the integer sums stay exact for *any* block contents
//! (not only what the quantizers produce). Activation quantizers live here too:
//! the dotprod and i8mm levels inherit them.
//!
//! Arithmetic intrinsics are called inside `unsafe` blocks that also hold the
//! loads they feed, so the code builds on Rust 1.85 (where they are `unsafe
//! fn`) and later (where they are safe in a NEON function).

use super::{f16_to_f32, fcvtl_hi, fcvtl_lo, q4k_scales_mins};
use crate::blocks::*;
use crate::formats::check_len;
use crate::formats::k_quants::common::block_value;
use crate::types::QK_K;
use core::arch::aarch64::*;
use half::f16;

/// `acc + Σ a·b` over 16 int8 pairs, four i32 lanes; exact for any int8
/// values (one product, |p| ≤ 2^14, per i16 lane before widening).
macro_rules! dot16_i8 {
    ($acc:expr, $a:expr, $b:expr) => {{
        let (a, b): (int8x16_t, int8x16_t) = ($a, $b);
        let acc = vpadalq_s16($acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
        vpadalq_s16(acc, vmull_high_s8(a, b))
    }};
}

/// Σ a·b over 32 pairs where |a| ≤ 15 (4-bit values): four products per i16
/// lane, |Σ| ≤ 4·15·128 < 2^15, then one pairwise widening add into `acc`.
macro_rules! dot32_i4 {
    ($acc:expr, $a0:expr, $b0:expr, $a1:expr, $b1:expr) => {{
        let (a0, b0, a1, b1): (int8x16_t, int8x16_t, int8x16_t, int8x16_t) = ($a0, $b0, $a1, $b1);
        let p = vmull_s8(vget_low_s8(a0), vget_low_s8(b0));
        let p = vmlal_high_s8(p, a0, b0);
        let p = vmlal_s8(p, vget_low_s8(a1), vget_low_s8(b1));
        let p = vmlal_high_s8(p, a1, b1);
        vpadalq_s16($acc, p)
    }};
}

// ---------------------------------------------------------------------------
// F16
// ---------------------------------------------------------------------------

/// F16 × F16: exact f16 → f32 conversion (`fcvtl`), f32 FMA into four
/// accumulators (each product of two halves is exact in f32).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn vec_dot_f16(x: &[f16], y: &[f16]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: length mismatch");
    let (xc, yc) = (x.chunks_exact(16), y.chunks_exact(16));
    let (xt, yt) = (xc.remainder(), yc.remainder());
    let mut acc = [0.0f32; 4];
    // SAFETY: each chunk holds 16 halves: two 8-lane loads of 16 bytes from
    // each; `f16` is a plain u16 bit pattern.
    let mut sum = unsafe {
        let mut a0 = vdupq_n_f32(0.0);
        let mut a1 = vdupq_n_f32(0.0);
        let mut a2 = vdupq_n_f32(0.0);
        let mut a3 = vdupq_n_f32(0.0);
        for (xs, ys) in xc.zip(yc) {
            let (xp, yp) = (xs.as_ptr() as *const u16, ys.as_ptr() as *const u16);
            let (x0, x1) = (vld1q_u16(xp), vld1q_u16(xp.add(8)));
            let (y0, y1) = (vld1q_u16(yp), vld1q_u16(yp.add(8)));
            a0 = vfmaq_f32(a0, fcvtl_lo(x0), fcvtl_lo(y0));
            a1 = vfmaq_f32(a1, fcvtl_hi(x0), fcvtl_hi(y0));
            a2 = vfmaq_f32(a2, fcvtl_lo(x1), fcvtl_lo(y1));
            a3 = vfmaq_f32(a3, fcvtl_hi(x1), fcvtl_hi(y1));
        }
        vst1q_f32(
            acc.as_mut_ptr(),
            vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)),
        );
        (acc[0] + acc[1]) + (acc[2] + acc[3])
    };
    for (&a, &b) in xt.iter().zip(yt) {
        sum += f16_to_f32(a) * f16_to_f32(b);
    }
    sum
}

/// F16 → f32 row (`fcvtl`, exact), 16 values per step.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dequantize_row_f16(x: &[f16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "row length mismatch");
    let mut xc = x.chunks_exact(16);
    let mut yc = y.chunks_exact_mut(16);
    for (xs, ys) in (&mut xc).zip(&mut yc) {
        // SAFETY: both chunks hold 16 elements: two 8-half loads, four
        // 4-float stores; `f16` is a plain u16 bit pattern.
        unsafe {
            let xp = xs.as_ptr() as *const u16;
            let (a, b) = (vld1q_u16(xp), vld1q_u16(xp.add(8)));
            let v = float32x4x4_t(fcvtl_lo(a), fcvtl_hi(a), fcvtl_lo(b), fcvtl_hi(b));
            vst1q_f32_x4(ys.as_mut_ptr(), v);
        }
    }
    for (&h, o) in xc.remainder().iter().zip(yc.into_remainder()) {
        *o = f16_to_f32(h);
    }
}

// ---------------------------------------------------------------------------
// Legacy 32-wide formats
// ---------------------------------------------------------------------------

/// Q4_0 × Q8_0, two blocks per step into two float accumulators.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    /// Σ (q−8)·y of one block as four i32 lanes.
    macro_rules! block {
        ($x:expr, $y:expr) => {{
            let (x, y): (&BlockQ4_0, &BlockQ8_0) = ($x, $y);
            let q = vld1q_u8(x.qs.as_ptr());
            let lo = vsubq_s8(
                vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f))),
                vdupq_n_s8(8),
            );
            let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(q)), vdupq_n_s8(8));
            let y0 = vld1q_s8(y.qs.as_ptr());
            let y1 = vld1q_s8(y.qs.as_ptr().add(16));
            dot32_i4!(vdupq_n_s32(0), lo, y0, hi, y1)
        }};
    }
    let (xc, yc) = (x.chunks_exact(2), y.chunks_exact(2));
    let (xt, yt) = (xc.remainder(), yc.remainder());
    // SAFETY: every load reads a block's own array: 16 bytes of `qs` from a
    // Q4_0 block, 2×16 of the 32 bytes of `qs` from a Q8_0 block.
    unsafe {
        let mut acc0 = vdupq_n_f32(0.0);
        let mut acc1 = vdupq_n_f32(0.0);
        for (xp, yp) in xc.zip(yc) {
            let p0 = block!(&xp[0], &yp[0]);
            let p1 = block!(&xp[1], &yp[1]);
            let d0 = f16_to_f32(xp[0].d) * f16_to_f32(yp[0].d);
            let d1 = f16_to_f32(xp[1].d) * f16_to_f32(yp[1].d);
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), d0);
            acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(p1), d1);
        }
        if let (Some(xb), Some(yb)) = (xt.first(), yt.first()) {
            let p = block!(xb, yb);
            let d = f16_to_f32(xb.d) * f16_to_f32(yb.d);
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p), d);
        }
        vaddvq_f32(vaddq_f32(acc0, acc1))
    }
}

/// Q4_1 × Q8_1: `d_x·d_y·Σq·y + m_x·s_y` per block.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    macro_rules! block {
        ($x:expr, $y:expr) => {{
            let (x, y): (&BlockQ4_1, &BlockQ8_1) = ($x, $y);
            let q = vld1q_u8(x.qs.as_ptr());
            let lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f)));
            let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q));
            let y0 = vld1q_s8(y.qs.as_ptr());
            let y1 = vld1q_s8(y.qs.as_ptr().add(16));
            dot32_i4!(vdupq_n_s32(0), lo, y0, hi, y1)
        }};
    }
    let (xc, yc) = (x.chunks_exact(2), y.chunks_exact(2));
    let (xt, yt) = (xc.remainder(), yc.remainder());
    let (mut summs0, mut summs1) = (0.0f32, 0.0f32);
    // SAFETY: as in `vec_dot_q4_0_q8_0` (Q8_1 `qs` is 32 bytes too).
    let sum = unsafe {
        let mut acc0 = vdupq_n_f32(0.0);
        let mut acc1 = vdupq_n_f32(0.0);
        for (xp, yp) in xc.zip(yc) {
            let p0 = block!(&xp[0], &yp[0]);
            let p1 = block!(&xp[1], &yp[1]);
            let d0 = f16_to_f32(xp[0].d) * f16_to_f32(yp[0].d);
            let d1 = f16_to_f32(xp[1].d) * f16_to_f32(yp[1].d);
            summs0 += f16_to_f32(xp[0].m) * f16_to_f32(yp[0].s);
            summs1 += f16_to_f32(xp[1].m) * f16_to_f32(yp[1].s);
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), d0);
            acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(p1), d1);
        }
        if let (Some(xb), Some(yb)) = (xt.first(), yt.first()) {
            let p = block!(xb, yb);
            let d = f16_to_f32(xb.d) * f16_to_f32(yb.d);
            summs0 += f16_to_f32(xb.m) * f16_to_f32(yb.s);
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p), d);
        }
        vaddvq_f32(vaddq_f32(acc0, acc1))
    };
    sum + (summs0 + summs1)
}

/// Q8_0 × Q8_0.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    macro_rules! block {
        ($x:expr, $y:expr) => {{
            let (x, y): (&BlockQ8_0, &BlockQ8_0) = ($x, $y);
            let x0 = vld1q_s8(x.qs.as_ptr());
            let x1 = vld1q_s8(x.qs.as_ptr().add(16));
            let y0 = vld1q_s8(y.qs.as_ptr());
            let y1 = vld1q_s8(y.qs.as_ptr().add(16));
            dot16_i8!(dot16_i8!(vdupq_n_s32(0), x0, y0), x1, y1)
        }};
    }
    let (xc, yc) = (x.chunks_exact(2), y.chunks_exact(2));
    let (xt, yt) = (xc.remainder(), yc.remainder());
    // SAFETY: two 16-byte loads from each block's 32-byte `qs`.
    unsafe {
        let mut acc0 = vdupq_n_f32(0.0);
        let mut acc1 = vdupq_n_f32(0.0);
        for (xp, yp) in xc.zip(yc) {
            let p0 = block!(&xp[0], &yp[0]);
            let p1 = block!(&xp[1], &yp[1]);
            let d0 = f16_to_f32(xp[0].d) * f16_to_f32(yp[0].d);
            let d1 = f16_to_f32(xp[1].d) * f16_to_f32(yp[1].d);
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p0), d0);
            acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(p1), d1);
        }
        if let (Some(xb), Some(yb)) = (xt.first(), yt.first()) {
            let p = block!(xb, yb);
            let d = f16_to_f32(xb.d) * f16_to_f32(yb.d);
            acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(p), d);
        }
        vaddvq_f32(vaddq_f32(acc0, acc1))
    }
}

// ---------------------------------------------------------------------------
// K-quants
// ---------------------------------------------------------------------------

/// `Σ_j mins[j]·(bsums[2j] + bsums[2j+1])`, widened to i32 before any add so
/// it is exact for any `bsums`.
///
/// # Safety
/// NEON (always present on aarch64); reads the block's own `bsums`.
#[inline(always)]
pub(super) unsafe fn q4k_mins_dot(mins: &[u8; 8], y: &BlockQ8K) -> i32 {
    // SAFETY: 2×8 i16 loads from the 16-entry `bsums`, one 8-byte load of `mins`.
    unsafe {
        let s_lo = vpaddlq_s16(vld1q_s16(y.bsums.as_ptr()));
        let s_hi = vpaddlq_s16(vld1q_s16(y.bsums.as_ptr().add(8)));
        let m = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mins.as_ptr())));
        let m_lo = vmovl_s16(vget_low_s16(m));
        let m_hi = vmovl_high_s16(m);
        vaddvq_s32(vmlaq_s32(vmulq_s32(s_lo, m_lo), s_hi, m_hi))
    }
}

/// Q4_K × Q8_K: 8 sub-blocks of 32 with 6-bit scales and mins; the mins use
/// the activation's `bsums`, like ggml.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sum = 0.0f64;
    for (xb, yb) in x.iter().zip(y) {
        let (sc, mn) = q4k_scales_mins(&xb.scales);
        // SAFETY: NEON is baseline; reads the block's own arrays only.
        let summins = unsafe { q4k_mins_dot(&mn, yb) };
        // SAFETY: for j < 4, 32 bytes of the 128-byte `qs` at 32j and 64 of
        // the 256-byte Q8_K `qs` at 64j.
        let sumi = unsafe {
            let mut acc_lo = vdupq_n_s32(0);
            let mut acc_hi = vdupq_n_s32(0);
            for j in 0..QK_K / 64 {
                let q4 = vld1q_u8_x2(xb.qs.as_ptr().add(32 * j));
                let q8 = vld1q_s8_x4(yb.qs.as_ptr().add(64 * j));
                let m4 = vdupq_n_u8(0x0f);
                let l0 = vreinterpretq_s8_u8(vandq_u8(q4.0, m4));
                let l1 = vreinterpretq_s8_u8(vandq_u8(q4.1, m4));
                let h0 = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q4.0));
                let h1 = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q4.1));
                // |Σ| per i16 lane ≤ 4·15·128; × scale ≤ 63 widens into i32.
                let p = vmull_s8(vget_low_s8(l0), vget_low_s8(q8.0));
                let p = vmlal_high_s8(p, l0, q8.0);
                let p = vmlal_s8(p, vget_low_s8(l1), vget_low_s8(q8.1));
                let p = vmlal_high_s8(p, l1, q8.1);
                let s = sc[2 * j] as i16;
                acc_lo = vmlal_n_s16(acc_lo, vget_low_s16(p), s);
                acc_lo = vmlal_high_n_s16(acc_lo, p, s);
                let p = vmull_s8(vget_low_s8(h0), vget_low_s8(q8.2));
                let p = vmlal_high_s8(p, h0, q8.2);
                let p = vmlal_s8(p, vget_low_s8(h1), vget_low_s8(q8.3));
                let p = vmlal_high_s8(p, h1, q8.3);
                let s = sc[2 * j + 1] as i16;
                acc_hi = vmlal_n_s16(acc_hi, vget_low_s16(p), s);
                acc_hi = vmlal_high_n_s16(acc_hi, p, s);
            }
            vaddvq_s32(vaddq_s32(acc_lo, acc_hi))
        };
        sum += block_value(f16_to_f32(xb.d), f16_to_f32(xb.dmin), yb.d, sumi, summins);
    }
    sum as f32
}

/// The eight 16-wide signed (−32..31) Q6_K value vectors of one 128-element
/// half: `ql` = 64 bytes, `qh` = 32 bytes. Vector `k` holds elements
/// `16k..16k+16` of the half, which share `scales[k]`.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
pub(super) unsafe fn q6k_unpack(ql: &[u8; 64], qh: &[u8; 32]) -> [int8x16_t; 8] {
    // SAFETY: a 64-byte load of `ql` and a 32-byte load of `qh`.
    unsafe {
        let l = vld1q_u8_x4(ql.as_ptr());
        let h = vld1q_u8_x2(qh.as_ptr());
        let m4 = vdupq_n_u8(0x0f);
        let m30 = vdupq_n_u8(0x30);
        let m32 = vdupq_n_s8(32);
        let v = |lo: uint8x16_t, hi: uint8x16_t| {
            vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, vandq_u8(hi, m30))), m32)
        };
        [
            v(vandq_u8(l.0, m4), vshlq_n_u8::<4>(h.0)),
            v(vandq_u8(l.1, m4), vshlq_n_u8::<4>(h.1)),
            v(vandq_u8(l.2, m4), vshlq_n_u8::<2>(h.0)),
            v(vandq_u8(l.3, m4), vshlq_n_u8::<2>(h.1)),
            v(vshrq_n_u8::<4>(l.0), h.0),
            v(vshrq_n_u8::<4>(l.1), h.1),
            v(vshrq_n_u8::<4>(l.2), vshrq_n_u8::<2>(h.0)),
            v(vshrq_n_u8::<4>(l.3), vshrq_n_u8::<2>(h.1)),
        ]
    }
}

/// Split a Q6_K block into its two 128-element halves: `(ql, qh)` of half `h`.
#[inline(always)]
pub(super) fn q6k_half(x: &BlockQ6K, h: usize) -> (&[u8; 64], &[u8; 32]) {
    let ql = x.ql[64 * h..64 * h + 64].try_into().unwrap();
    let qh = x.qh[32 * h..32 * h + 32].try_into().unwrap();
    (ql, qh)
}

/// Q6_K × Q8_K: 16 sub-blocks of 16 with int8 scales. The 6-bit values are
/// re-centred to −32..31 before multiplying, so `bsums` are not needed.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sum = 0.0f64;
    for (xb, yb) in x.iter().zip(y) {
        // SAFETY: for h < 2, 128 bytes of the 256-byte Q8_K `qs` at 128h and
        // 8 scales at 8h; the unpacking reads the block's own arrays.
        let sumi = unsafe {
            let mut acc0 = vdupq_n_s32(0);
            let mut acc1 = vdupq_n_s32(0);
            for h in 0..2 {
                let (ql, qh) = q6k_half(xb, h);
                let v = q6k_unpack(ql, qh);
                let qa = vld1q_s8_x4(yb.qs.as_ptr().add(128 * h));
                let qb = vld1q_s8_x4(yb.qs.as_ptr().add(128 * h + 64));
                let q8 = [qa.0, qa.1, qa.2, qa.3, qb.0, qb.1, qb.2, qb.3];
                let sc = &xb.scales[8 * h..8 * h + 8];
                for k in 0..8 {
                    // Two products per i16 lane: |Σ| ≤ 2·32·128 = 2^13.
                    let p = vmull_s8(vget_low_s8(v[k]), vget_low_s8(q8[k]));
                    let p = vmlal_high_s8(p, v[k], q8[k]);
                    let s = sc[k] as i16;
                    if k % 2 == 0 {
                        acc0 = vmlal_n_s16(acc0, vget_low_s16(p), s);
                        acc0 = vmlal_high_n_s16(acc0, p, s);
                    } else {
                        acc1 = vmlal_n_s16(acc1, vget_low_s16(p), s);
                        acc1 = vmlal_high_n_s16(acc1, p, s);
                    }
                }
            }
            vaddvq_s32(vaddq_s32(acc0, acc1))
        };
        sum += block_value(f16_to_f32(xb.d), 0.0, yb.d, sumi, 0);
    }
    sum as f32
}

// ---------------------------------------------------------------------------
// Activation quantizers
// ---------------------------------------------------------------------------

/// Loads a 32-float block as eight vectors.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn load32(x: &[f32]) -> [float32x4_t; 8] {
    assert_eq!(x.len(), 32);
    // SAFETY: two 16-float loads of the 32 floats just checked.
    unsafe {
        let a = vld1q_f32_x4(x.as_ptr());
        let b = vld1q_f32_x4(x.as_ptr().add(16));
        [a.0, a.1, a.2, a.3, b.0, b.1, b.2, b.3]
    }
}

/// `max |v|` over 32 floats; NaNs are ignored like the scalar `amax < |v|`.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn absmax32(v: &[float32x4_t; 8]) -> f32 {
    let mut m = [0.0f32; 4];
    // SAFETY: register arithmetic and one 4-float store into `m`.
    unsafe {
        let a = vmaxnmq_f32(vabsq_f32(v[0]), vabsq_f32(v[1]));
        let b = vmaxnmq_f32(vabsq_f32(v[2]), vabsq_f32(v[3]));
        let c = vmaxnmq_f32(vabsq_f32(v[4]), vabsq_f32(v[5]));
        let d = vmaxnmq_f32(vabsq_f32(v[6]), vabsq_f32(v[7]));
        vst1q_f32(
            m.as_mut_ptr(),
            vmaxnmq_f32(vmaxnmq_f32(a, b), vmaxnmq_f32(c, d)),
        );
    }
    m[0].max(m[1]).max(m[2].max(m[3]))
}

/// `roundf(v·id)` (half away from zero, `fcvtas`) of 32 floats, narrowed with
/// saturation to 32 int8 and stored to `qs`; returns their exact sum.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn round_store32(v: &[float32x4_t; 8], id: f32, qs: &mut [i8; 32]) -> i32 {
    // SAFETY: two 16-byte stores into the 32-byte `qs`.
    unsafe {
        let r = |a: float32x4_t, b: float32x4_t| {
            let a = vcvtaq_s32_f32(vmulq_n_f32(a, id));
            let b = vcvtaq_s32_f32(vmulq_n_f32(b, id));
            vqmovn_high_s32(vqmovn_s32(a), b)
        };
        let q0 = vqmovn_high_s16(vqmovn_s16(r(v[0], v[1])), r(v[2], v[3]));
        let q1 = vqmovn_high_s16(vqmovn_s16(r(v[4], v[5])), r(v[6], v[7]));
        vst1q_s8(qs.as_mut_ptr(), q0);
        vst1q_s8(qs.as_mut_ptr().add(16), q1);
        vaddlvq_s8(q0) as i32 + vaddlvq_s8(q1) as i32
    }
}

/// f32 → Q8_0: `d = amax/127` (f16), `q = roundf(x/d)`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    check_len(y.len(), QK, x.len());
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: NEON is baseline; `load32` checks the 32-float length.
        unsafe {
            let v = load32(xb);
            let amax = absmax32(&v);
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            yb.d = f16::from_f32(d);
            round_store32(&v, id, &mut yb.qs);
        }
    }
}

/// f32 → Q8_1: as Q8_0 plus `s = d·Σq` (f16) of the stored `q`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    check_len(y.len(), QK, x.len());
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: NEON is baseline; `load32` checks the 32-float length.
        unsafe {
            let v = load32(xb);
            let amax = absmax32(&v);
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let sum = round_store32(&v, id, &mut yb.qs);
            yb.d = f16::from_f32(d);
            yb.s = f16::from_f32(sum as f32 * d);
        }
    }
}

/// f32 → Q8_K (ggml's `quantize_row_q8_K_ref`): `iscale = −127/max` where
/// `max` is the first value of largest magnitude, `q = min(127,
/// nearest_int(iscale·x))` (`fcvtns` rounds half to even like `nearest_int`),
/// `d = 1/iscale`, `bsums` the exact sums of each 16 stored `q`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    check_len(y.len(), QK_K, x.len());
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        // Signed max and min in one pass: the largest magnitude is one of
        // them; only when both signs reach it must we look for the first.
        let mut ext = [0.0f32; 2];
        // SAFETY: 16 loads of 16 floats cover the 256-float chunk; one
        // 2-float store into `ext`.
        unsafe {
            let mut hi = [vdupq_n_f32(f32::NEG_INFINITY); 4];
            let mut lo = [vdupq_n_f32(f32::INFINITY); 4];
            for c in xb.chunks_exact(16) {
                let v = vld1q_f32_x4(c.as_ptr());
                for (k, v) in [v.0, v.1, v.2, v.3].into_iter().enumerate() {
                    hi[k] = vmaxnmq_f32(hi[k], v);
                    lo[k] = vminnmq_f32(lo[k], v);
                }
            }
            let h = vmaxnmq_f32(vmaxnmq_f32(hi[0], hi[1]), vmaxnmq_f32(hi[2], hi[3]));
            let l = vminnmq_f32(vminnmq_f32(lo[0], lo[1]), vminnmq_f32(lo[2], lo[3]));
            let both = vset_lane_f32::<1>(vminnmvq_f32(l), vdup_n_f32(vmaxnmvq_f32(h)));
            vst1_f32(ext.as_mut_ptr(), both);
        }
        let [h, l] = ext;
        let amax = h.abs().max(l.abs());
        if amax == 0.0 {
            // All zeros: the scalar writes d = 0, zero quants and sums.
            yb.d = 0.0;
            yb.qs = [0; QK_K];
            yb.bsums = [0; QK_K / 16];
            continue;
        }
        let max = if h.abs() > l.abs() {
            h
        } else if l.abs() > h.abs() {
            l
        } else {
            *xb.iter().find(|v| v.abs() == amax).unwrap_or(&h)
        };
        let iscale = -127.0 / max;
        // SAFETY: 16 loads of 16 floats from the chunk, 16 stores of 16
        // bytes into the 256-byte `qs`.
        unsafe {
            let top = vdupq_n_s32(127);
            let r = |v: float32x4_t| vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(v, iscale)), top);
            for (j, c) in xb.chunks_exact(16).enumerate() {
                let v = vld1q_f32_x4(c.as_ptr());
                let a = vqmovn_high_s32(vqmovn_s32(r(v.0)), r(v.1));
                let b = vqmovn_high_s32(vqmovn_s32(r(v.2)), r(v.3));
                let q = vqmovn_high_s16(vqmovn_s16(a), b);
                vst1q_s8(yb.qs.as_mut_ptr().add(16 * j), q);
                yb.bsums[j] = vaddlvq_s8(q);
            }
        }
        yb.d = 1.0 / iscale;
    }
}
