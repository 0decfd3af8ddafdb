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
//! | `Neon`        | Q4_0, Q4_1, Q8_0, Q4_K, Q6_K (`smull`+`sadalp`), F16 (`fcvtl`+`fmla`) | Q8_0, Q8_1, Q8_K / F16 |
//! | `NeonDotprod` | Q4_0, Q4_1, Q8_0, Q4_K, Q6_K with `sdot`      | inherited                   |
//! | `NeonI8mm`    | inherited from `NeonDotprod` (see below)      | inherited                   |
//!
//! IQ4_NL and IQ4_XS have NEON `vec_dot` kernels (`iq4.rs`, a `tbl` lookup
//! of the 16 values) that the dotprod and i8mm levels inherit.
//!
//! Everything else is inherited from the scalar table.
//!
//! **Why the i8mm table equals the dotprod one.** `smmla` multiplies a 2×8 by
//! an 8×2 int8 matrix: 32 multiply-adds per instruction against `sdot`'s 16.
//! A single-row dot product has only one activation row, so a `smmla`
//! formulation (two consecutive blocks of the same row as the two "rows",
//! ggml's `nrc == 2` trick applied to one row) discards the two off-diagonal
//! products: the same useful work per instruction as `sdot`, plus the zip
//! shuffles. (Reasoned from the instruction definitions, not measured: only
//! qemu is available here.) The gain needs two weight rows × two activation
//! rows: `i8mm`'s `vec_dot_*_2rows` kernels compute such 2×2 tiles with every
//! product used, for a batched matmul to call; they are tested against scalar.
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
// The two-row kernels are crate-internal API for a batched matmul; until one
// calls them, only the tests do.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod i8mm;
mod iq4;
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

const NEON_TABLE: Kernels = scalar::TABLE
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
    );

const NEON_DOTPROD_TABLE: Kernels = NEON_TABLE
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
    );

/// One-row dot products gain nothing from `smmla` (module docs); the i8mm
/// level keeps the dotprod entries and adds the two-row kernels in [`i8mm`].
const NEON_I8MM_TABLE: Kernels = NEON_DOTPROD_TABLE.derive(Isa::NeonI8mm);

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
