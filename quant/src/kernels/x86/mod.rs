//! x86-64 kernels: AVX2 (+FMA, F16C), AVX-VNNI, AVX-512 (F/BW/VL/DQ) and
//! AVX-512 VNNI. Each level starts from the one below and replaces the entries
//! it speeds up.
//!
//! | ISA           | vec_dot                                         | from_float / to_float        |
//! |---------------|-------------------------------------------------|------------------------------|
//! | `Avx2`        | Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K–Q6_K, F16 F32 BF16 | Q8_0 Q8_1 Q8_K; F16 BF16     |
//! | `AvxVnni`     | the integer ones with VEX `vpdpbusd`/`vpdpwssd`  | inherited                    |
//! | `Avx512`      | all of `Avx2`'s at 512 bits (`vpmaddubsw`)       | inherited                    |
//! | `Avx512Vnni`  | the integer ones with `vpdpbusd`/`vpdpwssd`      | inherited                    |
//!
//! IQ4_NL and IQ4_XS have AVX2 `vec_dot` kernels (`iq4.rs`, a `vpshufb`
//! table lookup and the sign trick) that every level inherits. IQ4_NL also
//! has a `gemm` at every level: the same panels as Q8_0, its nibbles looked
//! up while repacking. IQ4_XS products loop over `vec_dot`.
//!
//! The grid i-quants (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S,
//! IQ1_M) have AVX2 `vec_dot` kernels (`iq_grid.rs`: grid lookups, then
//! `vpsignb` + `vpmaddubsw`), inherited by every level, bit-identical to
//! the scalar ones; their products loop over `vec_dot`.
//!
//! Every level also has register-blocked `gemm` kernels (`gemm.rs`) for
//! Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K and F32 F16 BF16: weight rows
//! repacked on the fly into interleaved panels (16 rows per register with
//! AVX-512, 8 with AVX2), the dot products of a panel with 8 (AVX-512) or 4
//! (AVX2) activation rows at a time in registers. Q2_K and Q3_K use the
//! `vec_dot` loop.
//!
//! Every level also has one-row `gemv` kernels (`gemv.rs`) for Q4_0
//! Q4_1 Q5_0 Q5_1 Q8_0: the activation row laid out once per call in the
//! order the weight bytes come in, four weight rows per pass, no horizontal
//! sums but one per row; [`Kernels::gemm`] uses them for m = 1.
//!
//! The 256-bit kernels are written once (`v256.rs`, instantiated by
//! `avx2.rs` and `avx_vnni.rs`) and so are the 512-bit ones (`v512.rs`, by
//! `avx512.rs` and `avx512_vnni.rs`); each instantiation supplies its 8-bit
//! and 16-bit dot-product primitives. The 512-bit kernels put two 32-element
//! blocks in one register for the 32-wide formats and 64 elements of a
//! super-block for the K-quants.
//!
//! Semantics match [`crate::formats`]: integer sums inside a block are exact
//! (weight offsets such as Q4_0's −8 are taken out through activation sums,
//! exact for every activation byte; Q8_0 · Q8_0 uses ggml's sign trick below
//! AVX-512 VNNI, exact unless an activation is −128, which the quantizers
//! never produce); only float accumulation order differs, and the formats with
//! mins combine each block's two terms before they can cancel. The activation quantizers are bit-identical to the scalar
//! ones (same amax, same division, same C `roundf`, same f16 rounding).

// The crate's MSRV (1.85) is set for the aarch64 cross toolchain; this module is
// only compiled for x86-64 by the host toolchain, which has the AVX-512
// intrinsics (stable since 1.89).
#![allow(clippy::incompatible_msrv)]

use super::{Isa, Kernels, from_float, scalar, to_float, vec_dot};
use crate::GgmlType as T;
use crate::blocks::*;
use half::{bf16, f16};

#[macro_use]
mod v256;
#[macro_use]
mod v512;
#[macro_use]
mod gemm;
#[macro_use]
mod gemv;
mod avx2;
mod avx512;
mod avx512_vnni;
mod avx_vnni;
mod iq4;
mod iq_grid;
#[cfg(test)]
mod tests;
mod util;

pub(super) fn supported(isa: Isa) -> bool {
    macro_rules! has {
        ($($f:tt),*) => {{
            #[cfg(feature = "std")]
            { true $(&& std::arch::is_x86_feature_detected!($f))* }
            #[cfg(not(feature = "std"))]
            { true $(&& cfg!(target_feature = $f))* }
        }};
    }
    let avx2 = has!("avx2", "fma", "f16c");
    match isa {
        Isa::Avx2 => avx2,
        Isa::AvxVnni => avx2 && has!("avxvnni"),
        Isa::Avx512 => avx2 && has!("avx512f", "avx512bw", "avx512vl", "avx512dq"),
        Isa::Avx512Vnni => {
            avx2 && has!("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni")
        }
        _ => false,
    }
}

/// Wraps a `#[target_feature]` gemm kernel (`unsafe fn(k, w, a, out, ldo)`)
/// as a [`GemmFn`](super::GemmFn): only put into the table of an ISA that
/// implies its features.
macro_rules! gemm_fn {
    ($f:path) => {{
        fn wrapper(k: usize, w: &[u8], a: &[u8], out: &mut [f32], ldo: usize) {
            // SAFETY: this wrapper only sits in the table of an ISA whose
            // features the kernel needs; such a table is only handed out by
            // `Kernels::for_isa` after run-time detection confirmed them.
            unsafe { $f(k, w, a, out, ldo) }
        }
        wrapper as super::GemmFn
    }};
}

/// Sets the register-blocked gemm kernels of module `$m::gemm`.
macro_rules! gemms {
    ($table:expr, $m:ident) => {
        $table
            .set_gemm(T::Q4_0, gemm_fn!($m::gemm::gemm_q4_0))
            .set_gemm(T::Q4_1, gemm_fn!($m::gemm::gemm_q4_1))
            .set_gemm(T::Q5_0, gemm_fn!($m::gemm::gemm_q5_0))
            .set_gemm(T::Q5_1, gemm_fn!($m::gemm::gemm_q5_1))
            .set_gemm(T::Q8_0, gemm_fn!($m::gemm::gemm_q8_0))
            .set_gemm(T::IQ4NL, gemm_fn!($m::gemm::gemm_iq4_nl))
            .set_gemm(T::Q4K, gemm_fn!($m::gemm::gemm_q4_k))
            .set_gemm(T::Q5K, gemm_fn!($m::gemm::gemm_q5_k))
            .set_gemm(T::Q6K, gemm_fn!($m::gemm::gemm_q6_k))
            .set_gemm(T::F32, gemm_fn!($m::gemm::gemm_f32))
            .set_gemm(T::F16, gemm_fn!($m::gemm::gemm_f16))
            .set_gemm(T::BF16, gemm_fn!($m::gemm::gemm_bf16))
    };
}

/// Wraps a `#[target_feature]` gemv kernel (`unsafe fn(k, w, a, out)`) as a
/// [`GemvFn`](super::GemvFn): only put into the table of an ISA that implies
/// its features.
macro_rules! gemv_fn {
    ($f:path) => {{
        fn wrapper(k: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
            // SAFETY: as for `gemm_fn!`: only in a detected ISA's table.
            unsafe { $f(k, w, a, out) }
        }
        wrapper as super::GemvFn
    }};
}

/// Sets the one-row kernels of module `$m::gemv`.
macro_rules! gemvs {
    ($table:expr, $m:ident) => {
        $table
            .set_gemv(T::Q4_0, gemv_fn!($m::gemv::gemv_q4_0))
            .set_gemv(T::Q4_1, gemv_fn!($m::gemv::gemv_q4_1))
            .set_gemv(T::Q5_0, gemv_fn!($m::gemv::gemv_q5_0))
            .set_gemv(T::Q5_1, gemv_fn!($m::gemv::gemv_q5_1))
            .set_gemv(T::Q8_0, gemv_fn!($m::gemv::gemv_q8_0))
    };
}

/// Sets the multi-row one-row kernels of module `$m::gemv` (512-bit).
macro_rules! gemv_rows {
    ($table:expr, $m:ident) => {
        $table
            .set_gemv_rows(T::Q4_0, gemm_fn!($m::gemv::gemv_rows_q4_0))
            .set_gemv_rows(T::Q4_1, gemm_fn!($m::gemv::gemv_rows_q4_1))
            .set_gemv_rows(T::Q5_0, gemm_fn!($m::gemv::gemv_rows_q5_0))
            .set_gemv_rows(T::Q5_1, gemm_fn!($m::gemv::gemv_rows_q5_1))
            .set_gemv_rows(T::Q8_0, gemm_fn!($m::gemv::gemv_rows_q8_0))
    };
}

/// Sets the integer dot products every x86 level specialises, taken from
/// module `$m` (which all define the same names).
macro_rules! int_dots {
    ($table:expr, $m:ident) => {
        $table
            .set_vec_dot(T::Q4_0, vec_dot!(unsafe BlockQ4_0, BlockQ8_0, $m::vec_dot_q4_0_q8_0))
            .set_vec_dot(T::Q4_1, vec_dot!(unsafe BlockQ4_1, BlockQ8_1, $m::vec_dot_q4_1_q8_1))
            .set_vec_dot(T::Q5_0, vec_dot!(unsafe BlockQ5_0, BlockQ8_0, $m::vec_dot_q5_0_q8_0))
            .set_vec_dot(T::Q5_1, vec_dot!(unsafe BlockQ5_1, BlockQ8_1, $m::vec_dot_q5_1_q8_1))
            .set_vec_dot(T::Q8_0, vec_dot!(unsafe BlockQ8_0, BlockQ8_0, $m::vec_dot_q8_0_q8_0))
            .set_vec_dot(T::Q2K, vec_dot!(unsafe BlockQ2K, BlockQ8K, $m::vec_dot_q2_k_q8_k))
            .set_vec_dot(T::Q3K, vec_dot!(unsafe BlockQ3K, BlockQ8K, $m::vec_dot_q3_k_q8_k))
            .set_vec_dot(T::Q4K, vec_dot!(unsafe BlockQ4K, BlockQ8K, $m::vec_dot_q4_k_q8_k))
            .set_vec_dot(T::Q5K, vec_dot!(unsafe BlockQ5K, BlockQ8K, $m::vec_dot_q5_k_q8_k))
            .set_vec_dot(T::Q6K, vec_dot!(unsafe BlockQ6K, BlockQ8K, $m::vec_dot_q6_k_q8_k))
    };
}

const AVX2_TABLE: Kernels = gemvs!(
    gemms!(
        int_dots!(
            scalar::TABLE
                .derive(Isa::Avx2)
                .set_vec_dot(T::F16, vec_dot!(unsafe f16, f16, avx2::vec_dot_f16))
                .set_vec_dot(T::F32, vec_dot!(unsafe f32, f32, avx2::vec_dot_f32))
                .set_vec_dot(T::BF16, vec_dot!(unsafe bf16, bf16, avx2::vec_dot_bf16))
                .set_from_float(T::BF16, from_float!(unsafe bf16, avx2::quantize_row_bf16))
                .set_to_float(T::BF16, to_float!(unsafe bf16, avx2::dequantize_row_bf16))
                .set_from_float(T::F16, from_float!(unsafe f16, avx2::quantize_row_f16))
                .set_to_float(T::F16, to_float!(unsafe f16, avx2::dequantize_row_f16))
                .set_from_float(
                    T::Q8_0,
                    from_float!(unsafe BlockQ8_0, avx2::quantize_row_q8_0)
                )
                .set_from_float(
                    T::Q8_1,
                    from_float!(unsafe BlockQ8_1, avx2::quantize_row_q8_1)
                )
                .set_from_float(
                    T::Q8K,
                    from_float!(unsafe BlockQ8K, avx2::quantize_row_q8_k)
                )
                .set_vec_dot(
                    T::IQ4NL,
                    vec_dot!(unsafe BlockIQ4NL, BlockQ8_0, iq4::vec_dot_iq4_nl_q8_0)
                )
                .set_vec_dot(
                    T::IQ4XS,
                    vec_dot!(unsafe BlockIQ4XS, BlockQ8K, iq4::vec_dot_iq4_xs_q8_k)
                )
                .set_vec_dot(
                    T::IQ2XXS,
                    vec_dot!(unsafe BlockIQ2XXS, BlockQ8K, iq_grid::vec_dot_iq2_xxs_q8_k)
                )
                .set_vec_dot(
                    T::IQ2XS,
                    vec_dot!(unsafe BlockIQ2XS, BlockQ8K, iq_grid::vec_dot_iq2_xs_q8_k)
                )
                .set_vec_dot(
                    T::IQ2S,
                    vec_dot!(unsafe BlockIQ2S, BlockQ8K, iq_grid::vec_dot_iq2_s_q8_k)
                )
                .set_vec_dot(
                    T::IQ3XXS,
                    vec_dot!(unsafe BlockIQ3XXS, BlockQ8K, iq_grid::vec_dot_iq3_xxs_q8_k)
                )
                .set_vec_dot(
                    T::IQ3S,
                    vec_dot!(unsafe BlockIQ3S, BlockQ8K, iq_grid::vec_dot_iq3_s_q8_k)
                )
                .set_vec_dot(
                    T::IQ1S,
                    vec_dot!(unsafe BlockIQ1S, BlockQ8K, iq_grid::vec_dot_iq1_s_q8_k)
                )
                .set_vec_dot(
                    T::IQ1M,
                    vec_dot!(unsafe BlockIQ1M, BlockQ8K, iq_grid::vec_dot_iq1_m_q8_k)
                ),
            avx2
        ),
        avx2
    ),
    avx2
);

const AVX_VNNI_TABLE: Kernels = gemvs!(
    gemms!(
        int_dots!(AVX2_TABLE.derive(Isa::AvxVnni), avx_vnni),
        avx_vnni
    ),
    avx_vnni
);

const AVX512_TABLE: Kernels = gemv_rows!(
    gemvs!(
        gemms!(
            int_dots!(
                AVX2_TABLE
                    .derive(Isa::Avx512)
                    .set_vec_dot(T::F16, vec_dot!(unsafe f16, f16, avx512::vec_dot_f16))
                    .set_vec_dot(T::F32, vec_dot!(unsafe f32, f32, avx512::vec_dot_f32))
                    .set_vec_dot(T::BF16, vec_dot!(unsafe bf16, bf16, avx512::vec_dot_bf16)),
                avx512
            ),
            avx512
        ),
        avx512
    ),
    avx512
);

const AVX512_VNNI_TABLE: Kernels = gemv_rows!(
    gemvs!(
        gemms!(
            int_dots!(AVX512_TABLE.derive(Isa::Avx512Vnni), avx512_vnni),
            avx512_vnni
        ),
        avx512_vnni
    ),
    avx512_vnni
);

static AVX2: Kernels = AVX2_TABLE;
static AVX_VNNI: Kernels = AVX_VNNI_TABLE;
static AVX512: Kernels = AVX512_TABLE;
static AVX512_VNNI: Kernels = AVX512_VNNI_TABLE;

/// The table for an x86 ISA; the caller has checked `supported(isa)`.
pub(super) fn table(isa: Isa) -> &'static Kernels {
    match isa {
        Isa::AvxVnni => &AVX_VNNI,
        Isa::Avx512 => &AVX512,
        Isa::Avx512Vnni => &AVX512_VNNI,
        _ => &AVX2,
    }
}
