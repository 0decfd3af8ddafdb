//! The NEON implementations of the generic gemm's [`Simd`] trait and the
//! `#[target_feature]` entry points, one per (ISA level, format).
//!
//! A vector holds four weight rows (`LANES = 4`, one 32-bit lane each); a
//! panel is two vectors (`NV = 2`, eight rows), and the micro-kernels take
//! four activation rows at a time: 8 integer and 8 f32 accumulators, 8
//! weight chunks and 4 activation vectors in the 32 registers.
//!
//! * [`NeonDotprod`]: `sdot vd.4s, vchunk.16b, vact.4b[i]`, the four
//!   activation bytes of chunk `i` taken by element: one instruction per
//!   chunk, vector and activation row.
//! * [`Neon`] (Armv8.0): the chunk's two halves times the broadcast bytes
//!   with `smull`/`smull2` (i16, exact: |q·a| ≤ 2¹⁴), pairs summed into i32
//!   with `sadalp` into two accumulators (rows 0-1, rows 2-3), folded with
//!   one `addp` per block.
//! * [`NeonI8mm`]: `smmla` on 2×8 tiles — the panel keeps eight consecutive
//!   weights of two rows per vector ([`Simd::byte_at`]), two activation rows
//!   are zipped into the other operand, and the 2×2 results are unzipped
//!   once per block ([`Simd::sums_rows`]).
//!
//! The float gemms (F32, F16, BF16) are `fmla` only and live at the `Neon`
//! level; the higher levels inherit them.

use super::super::gemm::{Simd, gemm_float, gemm_k, gemm_legacy};
use super::super::gemv::{SimdRow, gemv_legacy};
use super::super::{GemmFn, GemvFn, Isa, vec_dot};
use crate::GgmlType as T;
use crate::blocks::*;
use core::arch::aarch64::*;
use core::arch::asm;
use half::f16;

/// Baseline Advanced SIMD: only built where run-time detection found it.
#[derive(Clone, Copy)]
pub(crate) struct Neon(());

/// NEON with the Armv8.2 dot products (`sdot`).
#[derive(Clone, Copy)]
pub(crate) struct NeonDotprod(());

/// NEON with the Armv8.6 8-bit matrix multiply (`smmla`).
#[derive(Clone, Copy)]
pub(crate) struct NeonI8mm(());

impl NeonI8mm {
    #[cfg_attr(not(test), allow(dead_code))] // the entries build it from their features
    pub(crate) fn new() -> Option<Self> {
        Isa::NeonI8mm.is_supported().then_some(NeonI8mm(()))
    }
}

impl Neon {
    #[cfg_attr(not(test), allow(dead_code))] // the entries build it from their features
    pub(crate) fn new() -> Option<Self> {
        Isa::Neon.is_supported().then_some(Neon(()))
    }
}

impl NeonDotprod {
    #[cfg_attr(not(test), allow(dead_code))] // the entries build it from their features
    pub(crate) fn new() -> Option<Self> {
        Isa::NeonDotprod.is_supported().then_some(NeonDotprod(()))
    }
}

/// The f32 and memory primitives both levels share.
macro_rules! neon_common {
    () => {
        const LANES: usize = 4;
        type Chunk = [i8; 16];
        type Lanes = [f32; 4];
        type W = int8x16_t;
        type A = int8x16_t;
        type F = float32x4_t;

        #[inline(always)]
        fn load_chunk(self, c: &[i8; 16]) -> int8x16_t {
            // SAFETY: 16 readable bytes; NEON is proven by the token.
            unsafe { vld1q_s8(c.as_ptr()) }
        }
        #[inline(always)]
        fn load_act(self, a: &[i8; 16]) -> int8x16_t {
            // SAFETY: as for `load_chunk`.
            unsafe { vld1q_s8(a.as_ptr()) }
        }
        #[inline(always)]
        fn load_f(self, x: &[f32; 4]) -> float32x4_t {
            // SAFETY: 4 readable f32.
            unsafe { vld1q_f32(x.as_ptr()) }
        }
        #[inline(always)]
        fn store_f(self, x: &mut [f32; 4], v: float32x4_t) {
            // SAFETY: 4 writable f32.
            unsafe { vst1q_f32(x.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn splat(self, x: f32) -> float32x4_t {
            // SAFETY: NEON is proven by the token (as below).
            unsafe { vdupq_n_f32(x) }
        }
        #[inline(always)]
        fn fzero(self) -> float32x4_t {
            // SAFETY: NEON.
            unsafe { vdupq_n_f32(0.0) }
        }
        #[inline(always)]
        fn fma(self, acc: float32x4_t, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: NEON.
            unsafe { vfmaq_f32(acc, a, b) }
        }
        #[inline(always)]
        fn mul(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: NEON.
            unsafe { vmulq_f32(a, b) }
        }
        #[inline(always)]
        fn add(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: NEON.
            unsafe { vaddq_f32(a, b) }
        }
        #[inline(always)]
        fn f16(self, h: f16) -> f32 {
            super::f16_to_f32(h)
        }
    };
}

impl Simd for Neon {
    neon_common!();
    /// Pair sums of rows 0-1 and of rows 2-3.
    type I = (int32x4_t, int32x4_t);

    #[inline(always)]
    fn izero(self) -> Self::I {
        // SAFETY: NEON.
        unsafe { (vdupq_n_s32(0), vdupq_n_s32(0)) }
    }
    #[inline(always)]
    fn dot4(self, acc: Self::I, w: [int8x16_t; 4], a: int8x16_t) -> Self::I {
        // SAFETY: NEON is proven by the token.
        unsafe {
            let a = vreinterpretq_s32_s8(a);
            let bc = [
                vreinterpretq_s8_s32(vdupq_laneq_s32::<0>(a)),
                vreinterpretq_s8_s32(vdupq_laneq_s32::<1>(a)),
                vreinterpretq_s8_s32(vdupq_laneq_s32::<2>(a)),
                vreinterpretq_s8_s32(vdupq_laneq_s32::<3>(a)),
            ];
            let (mut lo, mut hi) = acc;
            for c in 0..4 {
                lo = vpadalq_s16(lo, vmull_s8(vget_low_s8(w[c]), vget_low_s8(bc[c])));
                hi = vpadalq_s16(hi, vmull_high_s8(w[c], bc[c]));
            }
            (lo, hi)
        }
    }
    #[inline(always)]
    fn sums(self, acc: Self::I) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { vcvtq_f32_s32(vpaddq_s32(acc.0, acc.1)) }
    }
}

/// `acc + Σ_t w_{r,t} · a[4L + t]` per lane `r` (`sdot` by element).
///
/// # Safety
/// The CPU must have dotprod.
#[inline]
#[target_feature(enable = "dotprod")]
unsafe fn sdot_lane<const L: i32>(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` needs dotprod (the caller's contract); registers only.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{l}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            l = const L,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

impl Simd for NeonDotprod {
    neon_common!();
    type I = int32x4_t;

    #[inline(always)]
    fn izero(self) -> int32x4_t {
        // SAFETY: NEON.
        unsafe { vdupq_n_s32(0) }
    }
    #[inline(always)]
    fn dot4(self, acc: int32x4_t, w: [int8x16_t; 4], a: int8x16_t) -> int32x4_t {
        // SAFETY: the token proves dotprod.
        unsafe {
            let acc = sdot_lane::<0>(acc, w[0], a);
            let acc = sdot_lane::<1>(acc, w[1], a);
            let acc = sdot_lane::<2>(acc, w[2], a);
            sdot_lane::<3>(acc, w[3], a)
        }
    }
    #[inline(always)]
    fn sums(self, acc: int32x4_t) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { vcvtq_f32_s32(acc) }
    }
}

/// `acc + A·Bᵀ`, `A` and `B` 2×8 (rows: bytes 0..8, 8..16): lanes
/// `[a0·b0, a0·b1, a1·b0, a1·b1]` (`smmla`).
///
/// # Safety
/// The CPU must have i8mm.
#[inline]
#[target_feature(enable = "i8mm")]
unsafe fn smmla(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: `smmla` needs i8mm (the caller's contract); registers only.
    unsafe { super::smmla!(acc, a, b) }
}

impl NeonI8mm {
    /// Both 2×2 tiles of the four rows of `w` with the activation pair
    /// `z` (`z[h]`: bytes `8h..8h+8` of the two rows).
    #[inline(always)]
    fn tiles(
        self,
        acc: (int32x4_t, int32x4_t),
        w: [int8x16_t; 4],
        z: [int8x16_t; 2],
    ) -> (int32x4_t, int32x4_t) {
        // SAFETY: the token proves i8mm.
        unsafe {
            let lo = smmla(smmla(acc.0, w[0], z[0]), w[2], z[1]);
            let hi = smmla(smmla(acc.1, w[1], z[0]), w[3], z[1]);
            (lo, hi)
        }
    }

    /// The activation pair `(x, y)` as `smmla`'s right operands.
    #[inline(always)]
    fn pair(self, x: int8x16_t, y: int8x16_t) -> [int8x16_t; 2] {
        // SAFETY: NEON.
        unsafe {
            let (x, y) = (vreinterpretq_s64_s8(x), vreinterpretq_s64_s8(y));
            [
                vreinterpretq_s8_s64(vzip1q_s64(x, y)),
                vreinterpretq_s8_s64(vzip2q_s64(x, y)),
            ]
        }
    }
}

/// Weights in 2×8 tiles: chunk `2h + p` of a group of 16 weights holds
/// weights `8h..8h+8` of rows `2p` and `2p + 1`. Activation rows go in
/// pairs, `sum[i]` of the pair's first row holding the tiles of rows 0-1
/// and 2-3 (the second row's entry is unused); `sums_rows` unzips them.
/// An odd last row is paired with itself.
impl Simd for NeonI8mm {
    neon_common!();
    /// The 2×2 tiles of weight rows 0-1 and 2-3.
    type I = (int32x4_t, int32x4_t);

    #[inline(always)]
    fn byte_at(r: usize, e: usize) -> usize {
        16 * (2 * (e / 8) + r / 2) + 8 * (r % 2) + e % 8
    }
    #[inline(always)]
    fn izero(self) -> Self::I {
        // SAFETY: NEON.
        unsafe { (vdupq_n_s32(0), vdupq_n_s32(0)) }
    }
    #[inline(always)]
    fn dot4(self, acc: Self::I, w: [int8x16_t; 4], a: int8x16_t) -> Self::I {
        self.tiles(acc, w, self.pair(a, a))
    }
    #[inline(always)]
    fn sums(self, acc: Self::I) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { vcvtq_f32_s32(vuzp1q_s32(acc.0, acc.1)) }
    }
    #[inline(always)]
    fn dot_rows<const NV: usize, const R: usize>(
        self,
        sum: &mut [[Self::I; NV]; R],
        w: &[[int8x16_t; 4]; NV],
        x: &[int8x16_t; R],
    ) {
        for i in (0..R).step_by(2) {
            let z = self.pair(x[i], x[(i + 1).min(R - 1)]);
            for v in 0..NV {
                sum[i][v] = self.tiles(sum[i][v], w[v], z);
            }
        }
    }
    #[inline(always)]
    fn sums_rows<const NV: usize, const R: usize>(
        self,
        sum: &[[Self::I; NV]; R],
    ) -> [[float32x4_t; NV]; R] {
        let mut out = [[self.fzero(); NV]; R];
        for i in (0..R).step_by(2) {
            for v in 0..NV {
                let (lo, hi) = sum[i][v];
                // SAFETY: NEON.
                unsafe {
                    out[i][v] = vcvtq_f32_s32(vuzp1q_s32(lo, hi));
                    if i + 1 < R {
                        out[i + 1][v] = vcvtq_f32_s32(vuzp2q_s32(lo, hi));
                    }
                }
            }
        }
        out
    }
}

/// The one-row primitives both levels share (all but `dot16`).
macro_rules! neon_row {
    () => {
        type V = int8x16_t;
        type Acc = int32x4_t;

        #[inline(always)]
        fn load16(self, x: &[i8; 16]) -> int8x16_t {
            // SAFETY: 16 readable bytes; NEON is proven by the token.
            unsafe { vld1q_s8(x.as_ptr()) }
        }
        #[inline(always)]
        fn lo4(self, x: int8x16_t) -> int8x16_t {
            // SAFETY: NEON (as below).
            unsafe { vandq_s8(x, vdupq_n_s8(0xf)) }
        }
        #[inline(always)]
        fn hi4(self, x: int8x16_t) -> int8x16_t {
            // SAFETY: NEON.
            unsafe { vreinterpretq_s8_u8(vshrq_n_u8::<4>(vreinterpretq_u8_s8(x))) }
        }
        #[inline(always)]
        fn sub(self, x: int8x16_t, c: i8) -> int8x16_t {
            // SAFETY: NEON.
            unsafe { vsubq_s8(x, vdupq_n_s8(c)) }
        }
        #[inline(always)]
        fn or(self, x: int8x16_t, y: int8x16_t) -> int8x16_t {
            // SAFETY: NEON.
            unsafe { vorrq_s8(x, y) }
        }
        #[inline(always)]
        fn fifth(self, qh: [u8; 4]) -> [int8x16_t; 2] {
            /// Byte `e` of a half: byte `e / 8` of `qh` (of the half's
            /// two), then bit `e % 8` of it.
            const IDX: [[u8; 16]; 2] = [
                [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
                [2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3],
            ];
            const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
            // SAFETY: NEON; 16 readable bytes per load.
            unsafe {
                let q = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes(qh)));
                let (bit, x10) = (vld1q_u8(BIT.as_ptr()), vdupq_n_u8(0x10));
                let half = |i: usize| {
                    let b = vqtbl1q_u8(q, vld1q_u8(IDX[i].as_ptr()));
                    vreinterpretq_s8_u8(vandq_u8(vtstq_u8(b, bit), x10))
                };
                [half(0), half(1)]
            }
        }
        #[inline(always)]
        fn lookup(self, table: &[i8; 16], x: int8x16_t) -> int8x16_t {
            // SAFETY: 16 readable bytes; NEON (`tbl`).
            unsafe { vqtbl1q_s8(vld1q_s8(table.as_ptr()), vreinterpretq_u8_s8(x)) }
        }
        #[inline(always)]
        fn azero(self) -> int32x4_t {
            // SAFETY: NEON.
            unsafe { vdupq_n_s32(0) }
        }
        #[inline(always)]
        fn sums4(self, acc: [int32x4_t; 4]) -> float32x4_t {
            // SAFETY: NEON. Pairwise adds: lane r is the total of acc[r].
            unsafe {
                let lo = vpaddq_s32(acc[0], acc[1]);
                let hi = vpaddq_s32(acc[2], acc[3]);
                vcvtq_f32_s32(vpaddq_s32(lo, hi))
            }
        }
    };
}

impl SimdRow for Neon {
    neon_row!();
    /// `smull`/`smull2` (i16, exact) summed in pairs into i32 (`sadalp`).
    #[inline(always)]
    fn dot16(self, acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
        // SAFETY: NEON.
        unsafe {
            let acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w), vget_low_s8(a)));
            vpadalq_s16(acc, vmull_high_s8(w, a))
        }
    }
}

/// `acc + Σ_t w[4i + t] · a[4i + t]` in lane `i` (`sdot`).
///
/// # Safety
/// The CPU must have dotprod.
#[inline]
#[target_feature(enable = "dotprod")]
unsafe fn sdot_vec(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: `sdot` needs dotprod (the caller's contract); registers only.
    unsafe { super::sdot!(acc, w, a) }
}

impl SimdRow for NeonDotprod {
    neon_row!();
    #[inline(always)]
    fn dot16(self, acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
        // SAFETY: the token proves dotprod.
        unsafe { sdot_vec(acc, w, a) }
    }
}

/// Stamps `#[target_feature]` one-row entries of one level (as
/// `entries!`), each one call of [`gemv_legacy`].
macro_rules! gemv_entries {
    ($feat:literal, $tok:ident, $(($name:ident, $w:ty)),* $(,)?) => {
        $(
            /// One-row product (see `kernels/gemv.rs`).
            ///
            /// # Safety
            /// The CPU must have the features this function enables.
            #[target_feature(enable = $feat)]
            unsafe fn $name(k: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
                gemv_legacy::<_, $w>($tok(()), k, w, a, out)
            }
        )*
    };
}

/// Wraps an entry as a [`GemvFn`].
macro_rules! gemv_fn {
    ($f:path) => {{
        fn wrapper(k: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
            // SAFETY: as for `gemm_fn!`: only in the table of an ISA whose
            // features the entry enables, handed out after detection.
            unsafe { $f(k, w, a, out) }
        }
        wrapper as GemvFn
    }};
}

gemv_entries!(
    "neon",
    Neon,
    (neon_gemv_q4_0, BlockQ4_0),
    (neon_gemv_q4_1, BlockQ4_1),
    (neon_gemv_q5_0, BlockQ5_0),
    (neon_gemv_q5_1, BlockQ5_1),
    (neon_gemv_q8_0, BlockQ8_0),
    (neon_gemv_iq4_nl, BlockIQ4NL),
);

gemv_entries!(
    "dotprod",
    NeonDotprod,
    (dotprod_gemv_q4_0, BlockQ4_0),
    (dotprod_gemv_q4_1, BlockQ4_1),
    (dotprod_gemv_q5_0, BlockQ5_0),
    (dotprod_gemv_q5_1, BlockQ5_1),
    (dotprod_gemv_q8_0, BlockQ8_0),
    (dotprod_gemv_iq4_nl, BlockIQ4NL),
);

/// Stamps `#[target_feature]` gemm entries of one level: the attribute, the signature, and the level's token (sound to
/// build here: the entry's contract is that the CPU has its features), then
/// one call of the generic driver `$drv`. `$dot` is the format's `vec_dot`
/// for fewer than `$min_m` activation rows (where repacking does not pay).
macro_rules! entries {
    ($feat:literal, $tok:ident, $drv:ident, $min_m:expr, $(($name:ident, $w:ty, $dot:expr)),* $(,)?) => {
        $(
            /// Register-blocked gemm (see `kernels/gemm.rs`).
            ///
            /// # Safety
            /// The CPU must have the features this function enables.
            #[target_feature(enable = $feat)]
            unsafe fn $name(k: usize, w: &[u8], a: &[u8], out: &mut [f32], ldo: usize) {
                $drv::<_, $w, 2, 4>($tok(()), k, w, a, out, ldo, $min_m, $dot)
            }
        )*
    };
}

/// Wraps an entry as a [`GemmFn`].
macro_rules! gemm_fn {
    ($f:path) => {{
        fn wrapper(k: usize, w: &[u8], a: &[u8], out: &mut [f32], ldo: usize) {
            // SAFETY: this wrapper only sits in the table of an ISA whose
            // features the entry enables; such a table is only handed out
            // by `Kernels::for_isa` after run-time detection confirmed them.
            unsafe { $f(k, w, a, out, ldo) }
        }
        wrapper as GemmFn
    }};
}

entries!(
    "neon",
    Neon,
    gemm_legacy,
    2,
    (
        neon_q4_0,
        BlockQ4_0,
        vec_dot!(unsafe BlockQ4_0, BlockQ8_0, super::neon::vec_dot_q4_0_q8_0)
    ),
    (
        neon_q4_1,
        BlockQ4_1,
        vec_dot!(unsafe BlockQ4_1, BlockQ8_1, super::neon::vec_dot_q4_1_q8_1)
    ),
    (
        neon_q5_0,
        BlockQ5_0,
        vec_dot!(unsafe BlockQ5_0, BlockQ8_0, super::legacy5::vec_dot_q5_0_q8_0)
    ),
    (
        neon_q5_1,
        BlockQ5_1,
        vec_dot!(unsafe BlockQ5_1, BlockQ8_1, super::legacy5::vec_dot_q5_1_q8_1)
    ),
    (
        neon_q8_0,
        BlockQ8_0,
        vec_dot!(unsafe BlockQ8_0, BlockQ8_0, super::neon::vec_dot_q8_0_q8_0)
    ),
    (
        neon_iq4_nl,
        BlockIQ4NL,
        vec_dot!(unsafe BlockIQ4NL, BlockQ8_0, super::iq4::vec_dot_iq4_nl_q8_0)
    ),
);

entries!(
    "dotprod",
    NeonDotprod,
    gemm_legacy,
    2,
    (
        dotprod_q4_0,
        BlockQ4_0,
        vec_dot!(unsafe BlockQ4_0, BlockQ8_0, super::dotprod::vec_dot_q4_0_q8_0)
    ),
    (
        dotprod_q4_1,
        BlockQ4_1,
        vec_dot!(unsafe BlockQ4_1, BlockQ8_1, super::dotprod::vec_dot_q4_1_q8_1)
    ),
    (
        dotprod_q5_0,
        BlockQ5_0,
        vec_dot!(unsafe BlockQ5_0, BlockQ8_0, super::legacy5::vec_dot_q5_0_q8_0_dotprod)
    ),
    (
        dotprod_q5_1,
        BlockQ5_1,
        vec_dot!(unsafe BlockQ5_1, BlockQ8_1, super::legacy5::vec_dot_q5_1_q8_1_dotprod)
    ),
    (
        dotprod_q8_0,
        BlockQ8_0,
        vec_dot!(unsafe BlockQ8_0, BlockQ8_0, super::dotprod::vec_dot_q8_0_q8_0)
    ),
    (
        dotprod_iq4_nl,
        BlockIQ4NL,
        vec_dot!(unsafe BlockIQ4NL, BlockQ8_0, super::iq4::vec_dot_iq4_nl_q8_0)
    ),
);

entries!(
    "neon",
    Neon,
    gemm_k,
    2,
    (
        neon_q4_k,
        BlockQ4K,
        vec_dot!(unsafe BlockQ4K, BlockQ8K, super::neon::vec_dot_q4_k_q8_k)
    ),
    (
        neon_q5_k,
        BlockQ5K,
        vec_dot!(unsafe BlockQ5K, BlockQ8K, super::kquants::vec_dot_q5_k_q8_k)
    ),
    (
        neon_q6_k,
        BlockQ6K,
        vec_dot!(unsafe BlockQ6K, BlockQ8K, super::neon::vec_dot_q6_k_q8_k)
    ),
);

entries!(
    "dotprod",
    NeonDotprod,
    gemm_k,
    2,
    (
        dotprod_q4_k,
        BlockQ4K,
        vec_dot!(unsafe BlockQ4K, BlockQ8K, super::dotprod::vec_dot_q4_k_q8_k)
    ),
    (
        dotprod_q5_k,
        BlockQ5K,
        vec_dot!(unsafe BlockQ5K, BlockQ8K, super::kquants::vec_dot_q5_k_q8_k_dotprod)
    ),
    (
        dotprod_q6_k,
        BlockQ6K,
        vec_dot!(unsafe BlockQ6K, BlockQ8K, super::dotprod::vec_dot_q6_k_q8_k)
    ),
);

// The float kernels need nothing beyond NEON's `fmla`: every level uses
// these (the dotprod table inherits them).
entries!(
    "neon",
    Neon,
    gemm_float,
    8,
    (
        neon_f32,
        f32,
        vec_dot!(f32, f32, crate::formats::float::vec_dot_f32)
    ),
    (
        neon_f16,
        f16,
        vec_dot!(unsafe f16, f16, super::neon::vec_dot_f16)
    ),
    (
        neon_bf16,
        half::bf16,
        vec_dot!(half::bf16, half::bf16, crate::formats::float::vec_dot_bf16)
    ),
);

entries!(
    "i8mm",
    NeonI8mm,
    gemm_legacy,
    2,
    (
        i8mm_q4_0,
        BlockQ4_0,
        vec_dot!(unsafe BlockQ4_0, BlockQ8_0, super::dotprod::vec_dot_q4_0_q8_0)
    ),
    (
        i8mm_q4_1,
        BlockQ4_1,
        vec_dot!(unsafe BlockQ4_1, BlockQ8_1, super::dotprod::vec_dot_q4_1_q8_1)
    ),
    (
        i8mm_q5_0,
        BlockQ5_0,
        vec_dot!(unsafe BlockQ5_0, BlockQ8_0, super::legacy5::vec_dot_q5_0_q8_0_dotprod)
    ),
    (
        i8mm_q5_1,
        BlockQ5_1,
        vec_dot!(unsafe BlockQ5_1, BlockQ8_1, super::legacy5::vec_dot_q5_1_q8_1_dotprod)
    ),
    (
        i8mm_q8_0,
        BlockQ8_0,
        vec_dot!(unsafe BlockQ8_0, BlockQ8_0, super::dotprod::vec_dot_q8_0_q8_0)
    ),
    (
        i8mm_iq4_nl,
        BlockIQ4NL,
        vec_dot!(unsafe BlockIQ4NL, BlockQ8_0, super::iq4::vec_dot_iq4_nl_q8_0)
    ),
);

entries!(
    "i8mm",
    NeonI8mm,
    gemm_k,
    2,
    (
        i8mm_q4_k,
        BlockQ4K,
        vec_dot!(unsafe BlockQ4K, BlockQ8K, super::dotprod::vec_dot_q4_k_q8_k)
    ),
    (
        i8mm_q5_k,
        BlockQ5K,
        vec_dot!(unsafe BlockQ5K, BlockQ8K, super::kquants::vec_dot_q5_k_q8_k_dotprod)
    ),
    (
        i8mm_q6_k,
        BlockQ6K,
        vec_dot!(unsafe BlockQ6K, BlockQ8K, super::dotprod::vec_dot_q6_k_q8_k)
    ),
);

/// Sets the baseline NEON gemm entries.
pub(super) const fn set_neon(t: super::Kernels) -> super::Kernels {
    t.set_gemm(T::Q4_0, gemm_fn!(neon_q4_0))
        .set_gemm(T::Q4_1, gemm_fn!(neon_q4_1))
        .set_gemm(T::Q5_0, gemm_fn!(neon_q5_0))
        .set_gemm(T::Q5_1, gemm_fn!(neon_q5_1))
        .set_gemm(T::Q8_0, gemm_fn!(neon_q8_0))
        .set_gemm(T::IQ4NL, gemm_fn!(neon_iq4_nl))
        .set_gemm(T::Q4K, gemm_fn!(neon_q4_k))
        .set_gemm(T::Q5K, gemm_fn!(neon_q5_k))
        .set_gemm(T::Q6K, gemm_fn!(neon_q6_k))
        .set_gemm(T::F32, gemm_fn!(neon_f32))
        .set_gemm(T::F16, gemm_fn!(neon_f16))
        .set_gemm(T::BF16, gemm_fn!(neon_bf16))
        .set_gemv(T::Q4_0, gemv_fn!(neon_gemv_q4_0))
        .set_gemv(T::Q4_1, gemv_fn!(neon_gemv_q4_1))
        .set_gemv(T::Q5_0, gemv_fn!(neon_gemv_q5_0))
        .set_gemv(T::Q5_1, gemv_fn!(neon_gemv_q5_1))
        .set_gemv(T::Q8_0, gemv_fn!(neon_gemv_q8_0))
        .set_gemv(T::IQ4NL, gemv_fn!(neon_gemv_iq4_nl))
}

/// Sets the dotprod gemm entries.
pub(super) const fn set_dotprod(t: super::Kernels) -> super::Kernels {
    t.set_gemm(T::Q4_0, gemm_fn!(dotprod_q4_0))
        .set_gemm(T::Q4_1, gemm_fn!(dotprod_q4_1))
        .set_gemm(T::Q5_0, gemm_fn!(dotprod_q5_0))
        .set_gemm(T::Q5_1, gemm_fn!(dotprod_q5_1))
        .set_gemm(T::Q8_0, gemm_fn!(dotprod_q8_0))
        .set_gemm(T::IQ4NL, gemm_fn!(dotprod_iq4_nl))
        .set_gemm(T::Q4K, gemm_fn!(dotprod_q4_k))
        .set_gemm(T::Q5K, gemm_fn!(dotprod_q5_k))
        .set_gemm(T::Q6K, gemm_fn!(dotprod_q6_k))
        .set_gemv(T::Q4_0, gemv_fn!(dotprod_gemv_q4_0))
        .set_gemv(T::Q4_1, gemv_fn!(dotprod_gemv_q4_1))
        .set_gemv(T::Q5_0, gemv_fn!(dotprod_gemv_q5_0))
        .set_gemv(T::Q5_1, gemv_fn!(dotprod_gemv_q5_1))
        .set_gemv(T::Q8_0, gemv_fn!(dotprod_gemv_q8_0))
        .set_gemv(T::IQ4NL, gemv_fn!(dotprod_gemv_iq4_nl))
}

/// Sets the i8mm gemm entries (the float ones and the one-row kernels are
/// inherited: one activation row gives `smmla` no second row to pair).
pub(super) const fn set_i8mm(t: super::Kernels) -> super::Kernels {
    t.set_gemm(T::Q4_0, gemm_fn!(i8mm_q4_0))
        .set_gemm(T::Q4_1, gemm_fn!(i8mm_q4_1))
        .set_gemm(T::Q5_0, gemm_fn!(i8mm_q5_0))
        .set_gemm(T::Q5_1, gemm_fn!(i8mm_q5_1))
        .set_gemm(T::Q8_0, gemm_fn!(i8mm_q8_0))
        .set_gemm(T::IQ4NL, gemm_fn!(i8mm_iq4_nl))
        .set_gemm(T::Q4K, gemm_fn!(i8mm_q4_k))
        .set_gemm(T::Q5K, gemm_fn!(i8mm_q5_k))
        .set_gemm(T::Q6K, gemm_fn!(i8mm_q6_k))
}
