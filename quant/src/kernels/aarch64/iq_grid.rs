//! The grid i-quants (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M)
//! · Q8_K at the baseline NEON and dotprod levels.
//!
//! Each block of 32 is decoded to bytes as in the scalar code (four grid
//! entries of 8 looked up through [`SignedGrid::group`], or the IQ1 helpers)
//! and, as in ggml's arm code, the signs are applied to the weights, not the
//! activations: the grid magnitudes are at most 62, so `±g` is an exact int8
//! and the products are exact for any activation, −128 included (negating
//! the activations, as x86's `vpsignb` does, wraps −128). The products go
//! through `smull` + the 16-element block scale in `smlal` (NEON; two
//! products of at most 62·128 per i16 lane) or `sdot` + `mla` (dotprod),
//! so each super-block's integer sum is the scalar's, and its float step
//! is the scalar's expression accumulated in block order: every result is
//! bit-identical to the scalar `vec_dot` ([`crate::formats::iq_grid`]).

use super::{f16_to_f32, sdot};
use crate::blocks::*;
use crate::formats::iq_grid::tables::IQ1S_GRID;
use crate::formats::iq_grid::{IQ1_DELTA, SignedGrid, iq1m_block, iq1m_d, iq1s_block};
use core::arch::aarch64::*;

/// Bit `j % 8` of byte `j`: tests a broadcast sign byte per element.
const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];

/// The signed values of groups `2k` and `2k + 1` (16 elements) of block
/// `ib`: magnitudes with the elements whose sign bit is set negated.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn signed16<B: SignedGrid>(xb: &B, ib: usize, k: usize) -> int8x16_t {
    let (g0, s0) = xb.group(ib, 2 * k);
    let (g1, s1) = xb.group(ib, 2 * k + 1);
    // SAFETY: a 16-byte load of `BITS`; register arithmetic.
    unsafe {
        let g = vcombine_u8(
            vcreate_u8(u64::from_le_bytes(g0)),
            vcreate_u8(u64::from_le_bytes(g1)),
        );
        let s = vcombine_u8(vdup_n_u8(s0), vdup_n_u8(s1));
        let neg = vtstq_u8(s, vld1q_u8(BITS.as_ptr()));
        // (g ^ m) − m: g where m = 0, −g where m = −1.
        let v = vsubq_u8(veorq_u8(g, neg), neg);
        vreinterpretq_s8_u8(v)
    }
}

/// Two 16-byte loads of a 32-value slice of activations.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn load32(a: &[i8]) -> (int8x16_t, int8x16_t) {
    assert!(a.len() >= 32);
    // SAFETY: two 16-byte loads of the 32 bytes just checked.
    unsafe { (vld1q_s8(a.as_ptr()), vld1q_s8(a.as_ptr().add(16))) }
}

/// `acc + scale·Σ a·b` over 16 pairs with |a| ≤ 62: two products per i16
/// lane, then widened by the scale (≤ 31) into i32.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn scaled16(acc: int32x4_t, a: int8x16_t, b: int8x16_t, scale: i16) -> int32x4_t {
    // SAFETY: register arithmetic only.
    unsafe {
        let p = vmlal_high_s8(vmull_s8(vget_low_s8(a), vget_low_s8(b)), a, b);
        vmlal_high_n_s16(vmlal_n_s16(acc, vget_low_s16(p), scale), p, scale)
    }
}

/// `Σ a·b` over 16 int8 pairs (`smull` + `sadalp`), exact for any values.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn dot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: register arithmetic only.
    unsafe {
        let acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
        vpadalq_s16(acc, vmull_high_s8(a, b))
    }
}

/// Generates the `vec_dot` of every signed-grid type at one level from a
/// `$scaled!(acc, values, activations, scale)` step.
macro_rules! signed_dots {
    ($feat:literal, $scaled:ident; $($name:ident: $b:ty;)*) => {$(
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn $name(x: &[$b], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let mut sumf = 0f32;
            for (xb, yb) in x.iter().zip(y) {
                let d = xb.d() * yb.d;
                // SAFETY: the helpers read the blocks' own arrays; `sdot`
                // (dotprod level only) is enabled by this function.
                let bsum = unsafe {
                    let mut acc = vdupq_n_s32(0);
                    for (ib, a) in yb.qs.chunks_exact(32).enumerate() {
                        let (s1, s2) = xb.scales(ib);
                        let (a0, a1) = load32(a);
                        let ls1 = 2 * i32::from(s1) + 1;
                        let ls2 = 2 * i32::from(s2) + 1;
                        acc = $scaled!(acc, signed16(xb, ib, 0), a0, ls1);
                        acc = $scaled!(acc, signed16(xb, ib, 1), a1, ls2);
                    }
                    vaddvq_s32(acc)
                };
                sumf += d * bsum as f32;
            }
            <$b as SignedGrid>::DOT_SCALE * sumf
        }
    )*};
}

macro_rules! scaled_neon {
    ($acc:expr, $a:expr, $b:expr, $s:expr) => {
        scaled16($acc, $a, $b, $s as i16)
    };
}

macro_rules! scaled_sdot {
    ($acc:expr, $a:expr, $b:expr, $s:expr) => {
        vmlaq_n_s32($acc, sdot!(vdupq_n_s32(0), $a, $b), $s)
    };
}

signed_dots! {
    "neon", scaled_neon;
    vec_dot_iq2_xxs_q8_k: BlockIQ2XXS;
    vec_dot_iq2_xs_q8_k: BlockIQ2XS;
    vec_dot_iq2_s_q8_k: BlockIQ2S;
    vec_dot_iq3_xxs_q8_k: BlockIQ3XXS;
    vec_dot_iq3_s_q8_k: BlockIQ3S;
}

/// The dotprod-level kernels (`sdot` per 16 elements).
pub(crate) mod dotprod {
    use super::*;

    signed_dots! {
        "neon,dotprod", scaled_sdot;
        vec_dot_iq2_xxs_q8_k: BlockIQ2XXS;
        vec_dot_iq2_xs_q8_k: BlockIQ2XS;
        vec_dot_iq2_s_q8_k: BlockIQ2S;
        vec_dot_iq3_xxs_q8_k: BlockIQ3XXS;
        vec_dot_iq3_s_q8_k: BlockIQ3S;
    }
}

/// Two IQ1 grid entries (signed −1..=1 bytes) as one vector.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn iq1_pair(i0: usize, i1: usize) -> int8x16_t {
    // SAFETY: register construction only.
    unsafe { vcombine_s8(vcreate_s8(IQ1S_GRID[i0]), vcreate_s8(IQ1S_GRID[i1])) }
}

/// `±1` bytes for two groups of 8: −1 where `neg`.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn shift_signs(n0: bool, n1: bool) -> int8x16_t {
    let s = |n: bool| if n { -1i8 } else { 1 };
    // SAFETY: register construction only.
    unsafe { vcombine_s8(vdup_n_s8(s(n0)), vdup_n_s8(s(n1))) }
}

/// `Σ_{ib} ls·bsum` of IQ1_S's shifts, in the scalar's integer arithmetic.
fn iq1s_shift_sum(xb: &BlockIQ1S, yb: &BlockQ8K) -> i32 {
    let mut sumi1 = 0i32;
    for ib in 0..8 {
        let (_, ls, neg) = iq1s_block(xb, ib);
        let bs = i32::from(yb.bsums[2 * ib]) + i32::from(yb.bsums[2 * ib + 1]);
        sumi1 += ls * if neg { -bs } else { bs };
    }
    sumi1
}

/// Generates IQ1_S and IQ1_M at one level from a `$dot!(acc, a, b)` step
/// (`Σ a·b` of 16 pairs added to four i32 lanes).
macro_rules! iq1_dots {
    ($feat:literal, $dot:ident, $s:ident, $m:ident) => {
        /// IQ1_S · Q8_K.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn $s(x: &[BlockIQ1S], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let mut sumf = 0f32;
            for (xb, yb) in x.iter().zip(y) {
                // SAFETY: the helpers read the blocks' own arrays; `sdot`
                // (dotprod level only) is enabled by this function.
                let sumi = unsafe {
                    let mut acc = vdupq_n_s32(0);
                    for (ib, a) in yb.qs.chunks_exact(32).enumerate() {
                        let (idx, ls, _) = iq1s_block(xb, ib);
                        let (a0, a1) = load32(a);
                        let p = $dot!(vdupq_n_s32(0), iq1_pair(idx[0], idx[1]), a0);
                        let p = $dot!(p, iq1_pair(idx[2], idx[3]), a1);
                        acc = vmlaq_n_s32(acc, p, ls);
                    }
                    vaddvq_s32(acc)
                };
                let sumi1 = iq1s_shift_sum(xb, yb);
                sumf += f16_to_f32(xb.d) * yb.d * (sumi as f32 + IQ1_DELTA * sumi1 as f32);
            }
            sumf
        }

        /// IQ1_M · Q8_K.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn $m(x: &[BlockIQ1M], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let mut sumf = 0f32;
            for (xb, yb) in x.iter().zip(y) {
                // SAFETY: as for IQ1_S.
                let (sumi1, sumi2) = unsafe {
                    let (mut acc1, mut acc2) = (vdupq_n_s32(0), vdupq_n_s32(0));
                    for (ib, a) in yb.qs.chunks_exact(32).enumerate() {
                        let (idx, neg, ls) = iq1m_block(xb, ib);
                        let (a0, a1) = load32(a);
                        let g0 = $dot!(vdupq_n_s32(0), iq1_pair(idx[0], idx[1]), a0);
                        let g1 = $dot!(vdupq_n_s32(0), iq1_pair(idx[2], idx[3]), a1);
                        let s0 = $dot!(vdupq_n_s32(0), shift_signs(neg[0], neg[1]), a0);
                        let s1 = $dot!(vdupq_n_s32(0), shift_signs(neg[2], neg[3]), a1);
                        acc1 = vmlaq_n_s32(vmlaq_n_s32(acc1, g0, ls[0]), g1, ls[1]);
                        acc2 = vmlaq_n_s32(vmlaq_n_s32(acc2, s0, ls[0]), s1, ls[1]);
                    }
                    (vaddvq_s32(acc1), vaddvq_s32(acc2))
                };
                sumf += iq1m_d(xb) * yb.d * (sumi1 as f32 + IQ1_DELTA * sumi2 as f32);
            }
            sumf
        }
    };
}

macro_rules! dot_neon {
    ($acc:expr, $a:expr, $b:expr) => {
        dot16($acc, $a, $b)
    };
}

macro_rules! dot_sdot {
    ($acc:expr, $a:expr, $b:expr) => {
        sdot!($acc, $a, $b)
    };
}

iq1_dots!("neon", dot_neon, vec_dot_iq1_s_q8_k, vec_dot_iq1_m_q8_k);

iq1_dots!(
    "neon,dotprod",
    dot_sdot,
    vec_dot_iq1_s_q8_k_dotprod,
    vec_dot_iq1_m_q8_k_dotprod
);
