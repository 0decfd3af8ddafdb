//! aarch64 kernels: baseline NEON, NEON with dotprod (`sdot`), and with i8mm
//! (`smmla`).
//!
//! `vdotq_s32` / `vmmlaq_s32` and the `float16x4_t` conversions are not stable
//! Rust intrinsics, so `sdot`, `smmla` and `fcvt`/`fcvtl` are written with
//! `asm!` (the `sdot!` / `smmla!` macros, `f16_to_f32`, `fcvtl_lo`/`fcvtl_hi`).
//! The algorithms follow ggml's `arch/arm/quants.c`; loops over 32-wide
//! blocks take two blocks per step into two accumulators.
//!
//! | ISA           | vec_dot                                       | from_float / to_float       |
//! |---------------|-----------------------------------------------|-----------------------------|
//! | `Neon`        | Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, the grid i-quants (`smull`+`sadalp`/`smlal`), IQ4_NL, IQ4_XS (`tbl`), F16 (`fcvtl`+`fmla`) | Q8_0, Q8_1, Q8_K / F16 |
//! | `NeonDotprod` | the same with `sdot`, except Q3_K, IQ4_NL, IQ4_XS, F16 (inherited) | inherited        |
//! | `NeonI8mm`    | inherited from `NeonDotprod` (see below)      | inherited                   |
//!
//! Where the kernels live: `neon.rs` / `dotprod.rs` (Q4_0, Q4_1, Q8_0, Q4_K,
//! Q6_K, F16 and the activation quantizers), `legacy5.rs` (Q5_0, Q5_1),
//! `kquants.rs` (Q2_K, Q3_K, Q5_K), `iq_grid.rs` (IQ3_XXS, IQ3_S, IQ2_XXS,
//! IQ2_XS, IQ2_S, IQ1_S, IQ1_M), `iq4.rs` (IQ4_NL, IQ4_XS: a `tbl` lookup of
//! the 16 values, which the dotprod and i8mm levels inherit). The kernels of
//! `legacy5.rs`, `kquants.rs` and `iq_grid.rs` are bit-identical to the
//! scalar `vec_dot` (each file's docs say how). Q3_K's dotprod level keeps
//! the NEON kernel (`kquants.rs` says why).
//!
//! Everything else (F32, BF16, Q8_1 and Q8_K as weights) is inherited from
//! the scalar table.
//!
//! **Why the i8mm `vec_dot`s equal the dotprod ones.** `smmla` multiplies a
//! 2×8 by an 8×2 int8 matrix: 32 multiply-adds per instruction against
//! `sdot`'s 16. A single-row dot product has only one activation row, so a
//! `smmla` formulation (two consecutive blocks of the same row as the two
//! "rows", ggml's `nrc == 2` trick applied to one row) discards the two
//! off-diagonal products: the same useful work per instruction as `sdot`,
//! plus the zip shuffles. (Reasoned from the instruction definitions, not
//! measured: only qemu is available here.) The gain needs two weight rows ×
//! two activation rows, which the i8mm gemm below has; `i8mm`'s
//! `vec_dot_*_2rows` kernels compute such 2×2 tiles too, tested against
//! scalar.
//!
//! # Register-blocked gemm (prompt processing)
//!
//! `gemm.rs` instantiates the generic drivers of `kernels/gemm.rs` (written
//! once over the [`Simd`](super::gemm::Simd) trait and the per-format
//! `Repack`/`RepackK` traits) with a zero-sized token per level, in one
//! `#[target_feature]` entry per (level, format):
//!
//! | type                                 | `Neon`             | `NeonDotprod`      | `NeonI8mm`          |
//! |--------------------------------------|--------------------|--------------------|---------------------|
//! | Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL      | `smull`+`sadalp`   | `sdot` by element  | `smmla` 2×2 tiles   |
//! | Q4_K Q5_K Q6_K                       | `smull`+`sadalp`   | `sdot` by element  | `smmla` 2×2 tiles   |
//! | F32 F16 BF16                         | `fmla`             | inherited          | inherited           |
//!
//! Q2_K, Q3_K and the other i-quants loop over `vec_dot`.
//!
//! *Repacking.* Per pass of up to 128 activation rows and chunk of 512
//! elements of `k` (two super-blocks), eight weight rows are unpacked into a
//! stack panel as signed bytes, exactly the integers the scalar `vec_dot`
//! multiplies (Q4_0 `q − 8`, Q5_0 `q − 16`, IQ4_NL's table values, Q6_K
//! `q − 32`, Q4_1/Q5_1/Q4_K/Q5_K the unsigned quants), with the rows'
//! scales (and mins) as f32. For `sdot` and `smull` a 16-byte vector holds
//! four bytes of each of four rows (chunk layout, as x86); for `smmla` it
//! holds eight consecutive bytes of two rows (a 2×8 tile).
//!
//! *Register blocking.* A panel is two vectors wide (8 weight rows) and the
//! micro-kernel takes 4 activation rows: 8 integer accumulators (16 with
//! `smull`'s pair sums), 8 f32 accumulators, 8 weight vectors, 4 activation
//! vectors. `sdot vd.4s, vw.16b, vx.4b[i]` multiplies chunk `i` of the 16
//! activation bytes with four rows at once; `smmla` takes two activation
//! rows (their 8-byte halves zipped) against two weight rows, and the 2×2
//! tiles are unzipped (`uzp1`/`uzp2`) once per block. An odd last row is
//! paired with itself.
//!
//! *Arithmetic.* The integer block (or group) sums are exact; per block the
//! f32 steps are the x86 kernels': `acc += (Σq·a · d_a) · d_w` (`+ m_w ·
//! s_a` with a min); per K-quant super-block `Σ_g sum_g · d·sc_g`, then
//! `+ (Σ_g m_g · bsum_g) · (−dmin)` (an integer below 2²⁴, exact in f32),
//! times the activation's `d`. Results match the scalar `vec_dot` up to
//! float summation order, and a row's bits do not depend on which other
//! rows share the call. Below two activation rows (eight for the float
//! types) the entries call the level's `vec_dot`.
//!
//! # One-row products (decode)
//!
//! `gemm.rs` also instantiates the one-row driver of `kernels/gemv.rs`
//! (`SimdRow` on top of `Simd`, `RowBlock` per format) as the tables'
//! `gemv`, which [`Kernels::gemm`] takes for one activation row:
//!
//! | type                            | `Neon`            | `NeonDotprod`     | `NeonI8mm`        |
//! |---------------------------------|-------------------|-------------------|-------------------|
//! | Q4_0 Q8_0 Q4_1 Q5_0 Q5_1 IQ4_NL | `smull`+`sadalp`  | `sdot`            | the dotprod one   |
//! | Q4_K Q5_K Q6_K, the rest        | `vec_dot` per row | `vec_dot` per row | `vec_dot` per row |
//!
//! Each weight block is unpacked once into two vectors of sixteen signed
//! bytes in element order (nibble mask and shift for Q4_0/Q4_1, `tbl` for
//! IQ4_NL, a load for Q8_0; for Q5_0/Q5_1 the fifth bits by `tbl` of
//! `qh`'s bytes, `cmtst` against the bit and a mask of 0x10), multiplied with the activation block as it lies in
//! memory (no layout step: Q8_0/Q8_1 are in element order), four weight
//! rows per pass in four accumulators, reduced once per block by pairwise
//! adds (`addp`) so that lane `r` holds row `r`'s exact block sum. The f32
//! steps per block are the gemm's (`acc += (Σq·a · d_a) · d_w`, `+ m_w ·
//! s_a`). A lane depends only on its row, so a split of the rows between
//! threads does not change any row's bits. The i8mm level keeps the
//! dotprod kernels: with one activation row `smmla` has no second row to
//! pair, so half its products would be discarded (as for `vec_dot` above).
//!
//! Semantics match [`crate::formats`]: integer sums inside a block are exact;
//! Q4_K and Q6_K form block values and row sums in f64 (the canonical rule of
//! [`crate::kernels`], which gives the scalar twin's bits); the other kernels
//! still round in f32 and differ from the scalar twin in that rounding. The activation quantizers
//! compute the same `d` bit for bit (same `amax`, same f32 division, same f16
//! rounding) and the same `q` (`fcvtas` is C `roundf`, `fcvtns` is ggml's
//! `nearest_int`).

use super::{Isa, Kernels, from_float, scalar, to_float, vec_dot};
use crate::blocks::*;
use core::arch::aarch64::*;
use core::arch::asm;
use half::f16;

mod dotprod;
pub(crate) mod fwht;
mod gemm;
#[cfg(test)]
mod gemm_tests;
#[cfg(test)]
mod gemv_tests;
// The two-row kernels are crate-internal API for a batched matmul; until one
// calls them, only the tests do.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod i8mm;
mod iq4;
mod iq_grid;
mod kquants;
mod legacy5;
mod neon;
#[cfg(test)]
mod tests;

pub(super) fn supported(isa: Isa) -> bool {
    macro_rules! has {
        ($($f:tt),*) => {{
            #[cfg(feature = "std")]
            { true $(&& std::arch::is_aarch64_feature_detected!($f))* }
            #[cfg(not(feature = "std"))]
            { true $(&& cfg!(target_feature = $f))* }
        }};
    }
    match isa {
        Isa::Neon => has!("neon"),
        Isa::NeonDotprod => has!("neon", "dotprod"),
        Isa::NeonI8mm => has!("neon", "dotprod", "i8mm"),
        _ => false,
    }
}

use crate::GgmlType as T;

const NEON_BASE: Kernels = scalar::TABLE
    .derive(Isa::Neon)
    .set_vec_dot(T::F16, vec_dot!(unsafe f16, f16, neon::vec_dot_f16))
    .set_to_float(T::F16, to_float!(unsafe f16, neon::dequantize_row_f16))
    .set_vec_dot(
        T::Q4_0,
        vec_dot!(unsafe BlockQ4_0, BlockQ8_0, neon::vec_dot_q4_0_q8_0),
    )
    .set_vec_dot(
        T::Q4_1,
        vec_dot!(unsafe BlockQ4_1, BlockQ8_1, neon::vec_dot_q4_1_q8_1),
    )
    .set_vec_dot(
        T::Q8_0,
        vec_dot!(unsafe BlockQ8_0, BlockQ8_0, neon::vec_dot_q8_0_q8_0),
    )
    .set_vec_dot(
        T::Q4K,
        vec_dot!(unsafe BlockQ4K, BlockQ8K, neon::vec_dot_q4_k_q8_k),
    )
    .set_vec_dot(
        T::Q6K,
        vec_dot!(unsafe BlockQ6K, BlockQ8K, neon::vec_dot_q6_k_q8_k),
    )
    .set_from_float(
        T::Q8_0,
        from_float!(unsafe BlockQ8_0, neon::quantize_row_q8_0),
    )
    .set_from_float(
        T::Q8_1,
        from_float!(unsafe BlockQ8_1, neon::quantize_row_q8_1),
    )
    .set_from_float(
        T::Q8K,
        from_float!(unsafe BlockQ8K, neon::quantize_row_q8_k),
    )
    .set_vec_dot(
        T::IQ4NL,
        vec_dot!(unsafe BlockIQ4NL, BlockQ8_0, iq4::vec_dot_iq4_nl_q8_0),
    )
    .set_vec_dot(
        T::IQ4XS,
        vec_dot!(unsafe BlockIQ4XS, BlockQ8K, iq4::vec_dot_iq4_xs_q8_k),
    )
    .set_vec_dot(
        T::Q5_0,
        vec_dot!(unsafe BlockQ5_0, BlockQ8_0, legacy5::vec_dot_q5_0_q8_0),
    )
    .set_vec_dot(
        T::Q5_1,
        vec_dot!(unsafe BlockQ5_1, BlockQ8_1, legacy5::vec_dot_q5_1_q8_1),
    )
    .set_vec_dot(
        T::Q2K,
        vec_dot!(unsafe BlockQ2K, BlockQ8K, kquants::vec_dot_q2_k_q8_k),
    )
    .set_vec_dot(
        T::Q3K,
        vec_dot!(unsafe BlockQ3K, BlockQ8K, kquants::vec_dot_q3_k_q8_k),
    )
    .set_vec_dot(
        T::Q5K,
        vec_dot!(unsafe BlockQ5K, BlockQ8K, kquants::vec_dot_q5_k_q8_k),
    )
    .set_vec_dot(
        T::IQ2XXS,
        vec_dot!(unsafe BlockIQ2XXS, BlockQ8K, iq_grid::vec_dot_iq2_xxs_q8_k),
    )
    .set_vec_dot(
        T::IQ2XS,
        vec_dot!(unsafe BlockIQ2XS, BlockQ8K, iq_grid::vec_dot_iq2_xs_q8_k),
    )
    .set_vec_dot(
        T::IQ2S,
        vec_dot!(unsafe BlockIQ2S, BlockQ8K, iq_grid::vec_dot_iq2_s_q8_k),
    )
    .set_vec_dot(
        T::IQ3XXS,
        vec_dot!(unsafe BlockIQ3XXS, BlockQ8K, iq_grid::vec_dot_iq3_xxs_q8_k),
    )
    .set_vec_dot(
        T::IQ3S,
        vec_dot!(unsafe BlockIQ3S, BlockQ8K, iq_grid::vec_dot_iq3_s_q8_k),
    )
    .set_vec_dot(
        T::IQ1S,
        vec_dot!(unsafe BlockIQ1S, BlockQ8K, iq_grid::vec_dot_iq1_s_q8_k),
    )
    .set_vec_dot(
        T::IQ1M,
        vec_dot!(unsafe BlockIQ1M, BlockQ8K, iq_grid::vec_dot_iq1_m_q8_k),
    );
const NEON_TABLE: Kernels = gemm::set_neon(NEON_BASE);

const NEON_DOTPROD_TABLE: Kernels = gemm::set_dotprod(NEON_DOTPROD_BASE);
const NEON_DOTPROD_BASE: Kernels = NEON_TABLE
    .derive(Isa::NeonDotprod)
    .set_vec_dot(
        T::Q4_0,
        vec_dot!(unsafe BlockQ4_0, BlockQ8_0, dotprod::vec_dot_q4_0_q8_0),
    )
    .set_vec_dot(
        T::Q4_1,
        vec_dot!(unsafe BlockQ4_1, BlockQ8_1, dotprod::vec_dot_q4_1_q8_1),
    )
    .set_vec_dot(
        T::Q8_0,
        vec_dot!(unsafe BlockQ8_0, BlockQ8_0, dotprod::vec_dot_q8_0_q8_0),
    )
    .set_vec_dot(
        T::Q4K,
        vec_dot!(unsafe BlockQ4K, BlockQ8K, dotprod::vec_dot_q4_k_q8_k),
    )
    .set_vec_dot(
        T::Q6K,
        vec_dot!(unsafe BlockQ6K, BlockQ8K, dotprod::vec_dot_q6_k_q8_k),
    )
    .set_vec_dot(
        T::Q5_0,
        vec_dot!(unsafe BlockQ5_0, BlockQ8_0, legacy5::vec_dot_q5_0_q8_0_dotprod),
    )
    .set_vec_dot(
        T::Q5_1,
        vec_dot!(unsafe BlockQ5_1, BlockQ8_1, legacy5::vec_dot_q5_1_q8_1_dotprod),
    )
    .set_vec_dot(
        T::Q2K,
        vec_dot!(unsafe BlockQ2K, BlockQ8K, kquants::vec_dot_q2_k_q8_k_dotprod),
    )
    .set_vec_dot(
        T::Q5K,
        vec_dot!(unsafe BlockQ5K, BlockQ8K, kquants::vec_dot_q5_k_q8_k_dotprod),
    )
    .set_vec_dot(
        T::IQ2XXS,
        vec_dot!(unsafe BlockIQ2XXS, BlockQ8K, iq_grid::dotprod::vec_dot_iq2_xxs_q8_k),
    )
    .set_vec_dot(
        T::IQ2XS,
        vec_dot!(unsafe BlockIQ2XS, BlockQ8K, iq_grid::dotprod::vec_dot_iq2_xs_q8_k),
    )
    .set_vec_dot(
        T::IQ2S,
        vec_dot!(unsafe BlockIQ2S, BlockQ8K, iq_grid::dotprod::vec_dot_iq2_s_q8_k),
    )
    .set_vec_dot(
        T::IQ3XXS,
        vec_dot!(unsafe BlockIQ3XXS, BlockQ8K, iq_grid::dotprod::vec_dot_iq3_xxs_q8_k),
    )
    .set_vec_dot(
        T::IQ3S,
        vec_dot!(unsafe BlockIQ3S, BlockQ8K, iq_grid::dotprod::vec_dot_iq3_s_q8_k),
    )
    .set_vec_dot(
        T::IQ1S,
        vec_dot!(unsafe BlockIQ1S, BlockQ8K, iq_grid::vec_dot_iq1_s_q8_k_dotprod),
    )
    .set_vec_dot(
        T::IQ1M,
        vec_dot!(unsafe BlockIQ1M, BlockQ8K, iq_grid::vec_dot_iq1_m_q8_k_dotprod),
    );

/// One-row dot products gain nothing from `smmla` (module docs): the i8mm
/// level keeps the dotprod `vec_dot`s and replaces the integer gemms.
const NEON_I8MM_TABLE: Kernels = gemm::set_i8mm(NEON_DOTPROD_TABLE.derive(Isa::NeonI8mm));

static NEON: Kernels = NEON_TABLE;
static NEON_DOTPROD: Kernels = NEON_DOTPROD_TABLE;
static NEON_I8MM: Kernels = NEON_I8MM_TABLE;

/// The table for an aarch64 ISA; the caller has checked `supported(isa)`.
pub(super) fn table(isa: Isa) -> &'static Kernels {
    match isa {
        Isa::NeonDotprod => &NEON_DOTPROD,
        Isa::NeonI8mm => &NEON_I8MM,
        _ => &NEON,
    }
}

// ---------------------------------------------------------------------------
// Shared helpers.
// ---------------------------------------------------------------------------

/// `acc + Σ a[4i..4i+4]·b[4i..4i+4]` per i32 lane (`sdot`, Armv8.2 dotprod).
///
/// Expands to an `asm!` block: use it inside an `unsafe` block of a function
/// compiled with `#[target_feature(enable = "dotprod")]`.
macro_rules! sdot {
    ($acc:expr, $a:expr, $b:expr) => {{
        let mut acc: core::arch::aarch64::int32x4_t = $acc;
        let a: core::arch::aarch64::int8x16_t = $a;
        let b: core::arch::aarch64::int8x16_t = $b;
        core::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
        acc
    }};
}

/// `acc + A·Bᵀ` for the 2×8 int8 matrices `a` (rows: bytes 0..8, 8..16) and
/// `b`, as a row-major 2×2 i32 matrix (`smmla`, Armv8.6 i8mm):
/// lanes `[a0·b0, a0·b1, a1·b0, a1·b1]`.
///
/// Expands to an `asm!` block: use it inside an `unsafe` block of a function
/// compiled with `#[target_feature(enable = "i8mm")]`.
macro_rules! smmla {
    ($acc:expr, $a:expr, $b:expr) => {{
        let mut acc: core::arch::aarch64::int32x4_t = $acc;
        let a: core::arch::aarch64::int8x16_t = $a;
        let b: core::arch::aarch64::int8x16_t = $b;
        core::arch::asm!(
            "smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
        acc
    }};
}

pub(crate) use {sdot, smmla};

/// Exact f16 → f32 with the scalar `fcvt` (base Armv8-A FP, no FP16 extension
/// needed). `half`'s conversion is a software bit-twiddle without `std`.
#[inline(always)]
fn f16_to_f32(h: f16) -> f32 {
    let out: f32;
    // SAFETY: `fcvt s, h` is part of base Armv8-A (FP is mandatory on
    // aarch64); it reads and writes registers only. The low 16 bits of the
    // input register are the half value.
    unsafe {
        asm!(
            "fcvt {o:s}, {i:h}",
            o = lateout(vreg) out,
            i = in(vreg) f32::from_bits(h.to_bits() as u32),
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// Exact f16 → f32 of lanes 0..4 of `v` (`fcvtl`, base Advanced SIMD).
#[inline(always)]
fn fcvtl_lo(v: uint16x8_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: `fcvtl` (half → single) is base Armv8-A Advanced SIMD; register
    // operands only.
    unsafe {
        asm!(
            "fcvtl {o:v}.4s, {i:v}.4h",
            o = lateout(vreg) out,
            i = in(vreg) v,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// Exact f16 → f32 of lanes 4..8 of `v` (`fcvtl2`, base Advanced SIMD).
#[inline(always)]
fn fcvtl_hi(v: uint16x8_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: as for `fcvtl_lo`.
    unsafe {
        asm!(
            "fcvtl2 {o:v}.4s, {i:v}.8h",
            o = lateout(vreg) out,
            i = in(vreg) v,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// The 6-bit scales and mins of a Q4_K/Q5_K block (ggml's `get_scale_min_k4`,
/// done four at a time on little-endian words): `(scales[0..8], mins[0..8])`.
#[inline(always)]
fn q4k_scales_mins(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let a2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let sc_lo = a0 & KMASK1;
    let sc_hi = (a2 & KMASK2) | (((a0 >> 6) & KMASK3) << 4);
    let mn_lo = a1 & KMASK1;
    let mn_hi = ((a2 >> 4) & KMASK2) | (((a1 >> 6) & KMASK3) << 4);
    let join = |lo: u32, hi: u32| (lo as u64 | ((hi as u64) << 32)).to_le_bytes();
    (join(sc_lo, sc_hi), join(mn_lo, mn_hi))
}
