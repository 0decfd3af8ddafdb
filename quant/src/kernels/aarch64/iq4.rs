//! IQ4_NL · Q8_0 and IQ4_XS · Q8_K with baseline NEON (the dotprod and
//! i8mm levels inherit them). A block's 4-bit indices become its signed
//! values through one `tbl` of ggml's 16-entry table; the i8 × i8 products
//! are widened by `smull` and summed pairwise into i32 by `sadalp`, so each
//! block's integer sum is exact and only the f32 accumulation order differs
//! from the scalar code.

use super::f16_to_f32;
use crate::blocks::{BlockIQ4NL, BlockIQ4XS, BlockQ8_0, BlockQ8K};
use crate::formats::iquants::{KVALUES_IQ4NL, xs_scale};
use core::arch::aarch64::*;

/// `acc + Σ a·b` of 16 i8 pairs, in four i32 lanes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// `Σ w·a` of one 32-element block in four i32 lanes: `qs` the 16 packed
/// index bytes (element `j` low nibble of byte `j`, `16 + j` high), `a` the
/// 32 activations.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block(table: int8x16_t, qs: &[u8; 16], a: &[i8]) -> int32x4_t {
    assert!(a.len() >= 32);
    // SAFETY: one 16-byte load of `qs`, two of the 32 checked bytes of `a`.
    unsafe {
        let q = vld1q_u8(qs.as_ptr());
        let lo = vqtbl1q_s8(table, vandq_u8(q, vdupq_n_u8(0x0f)));
        let hi = vqtbl1q_s8(table, vshrq_n_u8::<4>(q));
        let a0 = vld1q_s8(a.as_ptr());
        let a1 = vld1q_s8(a.as_ptr().add(16));
        dot16(dot16(vdupq_n_s32(0), lo, a0), hi, a1)
    }
}

/// IQ4_NL · Q8_0.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn vec_dot_iq4_nl_q8_0(x: &[BlockIQ4NL], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    // SAFETY: a 16-byte load of the 16-entry table; `block` checks its slices.
    unsafe {
        let t = vld1q_s8(KVALUES_IQ4NL.as_ptr());
        let mut acc = vdupq_n_f32(0.0);
        for (xb, yb) in x.iter().zip(y) {
            let s = vcvtq_f32_s32(block(t, &xb.qs, &yb.qs));
            acc = vfmaq_n_f32(acc, s, f16_to_f32(xb.d) * f16_to_f32(yb.d));
        }
        vaddvq_f32(acc)
    }
}

/// IQ4_XS · Q8_K: per super-block `Σ_b (ls_b − 32)·Σ w·a` exact in i32,
/// then scaled by `d_x·d_y`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn vec_dot_iq4_xs_q8_k(x: &[BlockIQ4XS], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    // SAFETY: as in `vec_dot_iq4_nl_q8_0`.
    unsafe {
        let t = vld1q_s8(KVALUES_IQ4NL.as_ptr());
        let mut acc = vdupq_n_f32(0.0);
        for (xb, yb) in x.iter().zip(y) {
            let mut sumi = vdupq_n_s32(0);
            for (ib, (q, a)) in xb
                .qs
                .chunks_exact(16)
                .zip(yb.qs.chunks_exact(32))
                .enumerate()
            {
                let q = q.try_into().expect("16 bytes");
                sumi = vmlaq_n_s32(sumi, block(t, q, a), xs_scale(xb, ib));
            }
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(sumi), f16_to_f32(xb.d) * yb.d);
        }
        vaddvq_f32(acc)
    }
}
