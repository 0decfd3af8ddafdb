//! NEON + dotprod kernels: `sdot` multiplies 16 int8 pairs and adds each group
//! of four into an i32 lane, exact for any int8 inputs. Layouts and scale
//! handling are the baseline kernels' ([`super::neon`]); only the products
//! change.

use super::neon::{q4k_mins_dot, q6k_half, q6k_unpack};
use super::{f16_to_f32, q4k_scales_mins, sdot};
use crate::blocks::*;
use crate::formats::k_quants::common::block_value;
use crate::types::QK_K;
use core::arch::aarch64::*;

/// Q4_0 × Q8_0, two blocks per step into two float accumulators.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
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
            sdot!(sdot!(vdupq_n_s32(0), lo, y0), hi, y1)
        }};
    }
    let (xc, yc) = (x.chunks_exact(2), y.chunks_exact(2));
    let (xt, yt) = (xc.remainder(), yc.remainder());
    // SAFETY: loads read each block's own `qs` (16 bytes of Q4_0, 2×16 of the
    // 32 of Q8_0); `sdot` needs dotprod, which this function enables.
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
#[target_feature(enable = "neon,dotprod")]
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
            sdot!(sdot!(vdupq_n_s32(0), lo, y0), hi, y1)
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
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    macro_rules! block {
        ($x:expr, $y:expr) => {{
            let (x, y): (&BlockQ8_0, &BlockQ8_0) = ($x, $y);
            let x0 = vld1q_s8(x.qs.as_ptr());
            let x1 = vld1q_s8(x.qs.as_ptr().add(16));
            let y0 = vld1q_s8(y.qs.as_ptr());
            let y1 = vld1q_s8(y.qs.as_ptr().add(16));
            sdot!(sdot!(vdupq_n_s32(0), x0, y0), x1, y1)
        }};
    }
    let (xc, yc) = (x.chunks_exact(2), y.chunks_exact(2));
    let (xt, yt) = (xc.remainder(), yc.remainder());
    // SAFETY: two 16-byte loads from each block's 32-byte `qs`; `sdot` needs
    // dotprod, which this function enables.
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

/// Q4_K × Q8_K: per 64 values, one `sdot` pair for the low nibbles (scale
/// `2j`) and one for the high nibbles (scale `2j+1`), scaled in i32 lanes.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sum = 0.0f64;
    for (xb, yb) in x.iter().zip(y) {
        let (sc, mn) = q4k_scales_mins(&xb.scales);
        // SAFETY: NEON is baseline; reads the block's own arrays only.
        let summins = unsafe { q4k_mins_dot(&mn, yb) };
        // SAFETY: for j < 4, 32 bytes of the 128-byte `qs` at 32j and 64 of
        // the 256-byte Q8_K `qs` at 64j; `sdot` needs dotprod (enabled).
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
                let pl = sdot!(sdot!(vdupq_n_s32(0), l0, q8.0), l1, q8.1);
                let ph = sdot!(sdot!(vdupq_n_s32(0), h0, q8.2), h1, q8.3);
                acc_lo = vmlaq_n_s32(acc_lo, pl, sc[2 * j] as i32);
                acc_hi = vmlaq_n_s32(acc_hi, ph, sc[2 * j + 1] as i32);
            }
            vaddvq_s32(vaddq_s32(acc_lo, acc_hi))
        };
        sum += block_value(f16_to_f32(xb.d), f16_to_f32(xb.dmin), yb.d, sumi, summins);
    }
    sum as f32
}

/// Q6_K × Q8_K: one `sdot` per 16-value sub-block of re-centred (−32..31)
/// values, scaled by its int8 scale in i32 lanes; no `bsums` needed.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sum = 0.0f64;
    for (xb, yb) in x.iter().zip(y) {
        // SAFETY: for h < 2, 128 bytes of the 256-byte Q8_K `qs` at 128h; the
        // unpacking reads the block's own arrays; `sdot` needs dotprod.
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
                for k in (0..8).step_by(2) {
                    let p0 = sdot!(vdupq_n_s32(0), v[k], q8[k]);
                    let p1 = sdot!(vdupq_n_s32(0), v[k + 1], q8[k + 1]);
                    acc0 = vmlaq_n_s32(acc0, p0, sc[k] as i32);
                    acc1 = vmlaq_n_s32(acc1, p1, sc[k + 1] as i32);
                }
            }
            vaddvq_s32(vaddq_s32(acc0, acc1))
        };
        sum += block_value(f16_to_f32(xb.d), 0.0, yb.d, sumi, 0);
    }
    sum as f32
}
