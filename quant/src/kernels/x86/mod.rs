//! x86-64 kernels: AVX2 (+FMA, F16C), AVX-VNNI, AVX-512 (F/BW/VL/DQ) and
//! AVX-512 VNNI. Each level starts from the one below and replaces the entries
//! it speeds up.

// The crate's MSRV (1.85) is set for the aarch64 cross toolchain; this module is
// only compiled for x86-64 by the host toolchain, which has the AVX-512
// intrinsics (stable since 1.89).
#![allow(clippy::incompatible_msrv)]

use super::{FromFloatFn, Isa, Kernels, ToFloatFn, VecDotFn, scalar};
use crate::GgmlType as T;
use crate::blocks::*;
use half::f16;

// `super::vec_dot!(unsafe W, A, f)` (and its two siblings) cannot expand:
// the first arm's `$w:ty` fragment commits on the keyword `unsafe` and fails
// before the `unsafe` arm is tried. These are the same wrappers with that arm
// alone; drop them once the parent macros list their `unsafe` arms first.

/// Wraps a `#[target_feature]` `unsafe fn(&[W], &[A]) -> f32` as a byte-level
/// [`VecDotFn`]; only for the table of an ISA that implies those features.
macro_rules! vec_dot_tf {
    ($w:ty, $a:ty, $f:path) => {{
        fn wrapper(w: &[u8], a: &[u8]) -> f32 {
            let (w, a) = (
                bytemuck::cast_slice::<u8, $w>(w),
                bytemuck::cast_slice::<u8, $a>(a),
            );
            // SAFETY: this wrapper only sits in the table of an ISA whose
            // features the kernel needs; such a table is only handed out by
            // `Kernels::for_isa` after run-time detection confirmed them.
            unsafe { $f(w, a) }
        }
        wrapper as VecDotFn
    }};
}

/// Wraps a `#[target_feature]` `unsafe fn(&[f32], &mut [B])` as a
/// [`FromFloatFn`]; only for the table of an ISA that implies its features.
macro_rules! from_float_tf {
    ($b:ty, $f:path) => {{
        fn wrapper(x: &[f32], y: &mut [u8]) {
            let y = bytemuck::cast_slice_mut::<u8, $b>(y);
            // SAFETY: as for `vec_dot_tf!`: only in a detected ISA's table.
            unsafe { $f(x, y) }
        }
        wrapper as FromFloatFn
    }};
}

/// Wraps a `#[target_feature]` `unsafe fn(&[B], &mut [f32])` as a
/// [`ToFloatFn`]; only for the table of an ISA that implies its features.
macro_rules! to_float_tf {
    ($b:ty, $f:path) => {{
        fn wrapper(x: &[u8], y: &mut [f32]) {
            let x = bytemuck::cast_slice::<u8, $b>(x);
            // SAFETY: as for `vec_dot_tf!`: only in a detected ISA's table.
            unsafe { $f(x, y) }
        }
        wrapper as ToFloatFn
    }};
}

#[macro_use]
mod v256;
#[macro_use]
mod v512;
mod avx2;
mod avx512;
mod avx512_vnni;
mod avx_vnni;
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

const AVX2_TABLE: Kernels = scalar::TABLE
    .derive(Isa::Avx2)
    .set_vec_dot(T::F16, vec_dot_tf!(f16, f16, avx2::vec_dot_f16))
    .set_from_float(T::F16, from_float_tf!(f16, avx2::quantize_row_f16))
    .set_to_float(T::F16, to_float_tf!(f16, avx2::dequantize_row_f16))
    .set_from_float(T::Q8_0, from_float_tf!(BlockQ8_0, avx2::quantize_row_q8_0))
    .set_from_float(T::Q8_1, from_float_tf!(BlockQ8_1, avx2::quantize_row_q8_1))
    .set_from_float(T::Q8K, from_float_tf!(BlockQ8K, avx2::quantize_row_q8_k))
    .set_vec_dot(
        T::Q4_0,
        vec_dot_tf!(BlockQ4_0, BlockQ8_0, avx2::vec_dot_q4_0_q8_0),
    )
    .set_vec_dot(
        T::Q4_1,
        vec_dot_tf!(BlockQ4_1, BlockQ8_1, avx2::vec_dot_q4_1_q8_1),
    )
    .set_vec_dot(
        T::Q5_0,
        vec_dot_tf!(BlockQ5_0, BlockQ8_0, avx2::vec_dot_q5_0_q8_0),
    )
    .set_vec_dot(
        T::Q5_1,
        vec_dot_tf!(BlockQ5_1, BlockQ8_1, avx2::vec_dot_q5_1_q8_1),
    )
    .set_vec_dot(
        T::Q8_0,
        vec_dot_tf!(BlockQ8_0, BlockQ8_0, avx2::vec_dot_q8_0_q8_0),
    )
    .set_vec_dot(
        T::Q4K,
        vec_dot_tf!(BlockQ4K, BlockQ8K, avx2::vec_dot_q4_k_q8_k),
    )
    .set_vec_dot(
        T::Q6K,
        vec_dot_tf!(BlockQ6K, BlockQ8K, avx2::vec_dot_q6_k_q8_k),
    );

const AVX_VNNI_TABLE: Kernels = AVX2_TABLE
    .derive(Isa::AvxVnni)
    .set_vec_dot(
        T::Q4_0,
        vec_dot_tf!(BlockQ4_0, BlockQ8_0, avx_vnni::vec_dot_q4_0_q8_0),
    )
    .set_vec_dot(
        T::Q4_1,
        vec_dot_tf!(BlockQ4_1, BlockQ8_1, avx_vnni::vec_dot_q4_1_q8_1),
    )
    .set_vec_dot(
        T::Q5_0,
        vec_dot_tf!(BlockQ5_0, BlockQ8_0, avx_vnni::vec_dot_q5_0_q8_0),
    )
    .set_vec_dot(
        T::Q5_1,
        vec_dot_tf!(BlockQ5_1, BlockQ8_1, avx_vnni::vec_dot_q5_1_q8_1),
    )
    .set_vec_dot(
        T::Q8_0,
        vec_dot_tf!(BlockQ8_0, BlockQ8_0, avx_vnni::vec_dot_q8_0_q8_0),
    )
    .set_vec_dot(
        T::Q4K,
        vec_dot_tf!(BlockQ4K, BlockQ8K, avx_vnni::vec_dot_q4_k_q8_k),
    )
    .set_vec_dot(
        T::Q6K,
        vec_dot_tf!(BlockQ6K, BlockQ8K, avx_vnni::vec_dot_q6_k_q8_k),
    );
const AVX512_TABLE: Kernels = AVX2_TABLE
    .derive(Isa::Avx512)
    .set_vec_dot(T::F16, vec_dot_tf!(f16, f16, avx512::vec_dot_f16))
    .set_vec_dot(
        T::Q4_0,
        vec_dot_tf!(BlockQ4_0, BlockQ8_0, avx512::vec_dot_q4_0_q8_0),
    )
    .set_vec_dot(
        T::Q4_1,
        vec_dot_tf!(BlockQ4_1, BlockQ8_1, avx512::vec_dot_q4_1_q8_1),
    )
    .set_vec_dot(
        T::Q5_0,
        vec_dot_tf!(BlockQ5_0, BlockQ8_0, avx512::vec_dot_q5_0_q8_0),
    )
    .set_vec_dot(
        T::Q5_1,
        vec_dot_tf!(BlockQ5_1, BlockQ8_1, avx512::vec_dot_q5_1_q8_1),
    )
    .set_vec_dot(
        T::Q8_0,
        vec_dot_tf!(BlockQ8_0, BlockQ8_0, avx512::vec_dot_q8_0_q8_0),
    )
    .set_vec_dot(
        T::Q4K,
        vec_dot_tf!(BlockQ4K, BlockQ8K, avx512::vec_dot_q4_k_q8_k),
    )
    .set_vec_dot(
        T::Q6K,
        vec_dot_tf!(BlockQ6K, BlockQ8K, avx512::vec_dot_q6_k_q8_k),
    );

const AVX512_VNNI_TABLE: Kernels = AVX512_TABLE
    .derive(Isa::Avx512Vnni)
    .set_vec_dot(
        T::Q4_0,
        vec_dot_tf!(BlockQ4_0, BlockQ8_0, avx512_vnni::vec_dot_q4_0_q8_0),
    )
    .set_vec_dot(
        T::Q4_1,
        vec_dot_tf!(BlockQ4_1, BlockQ8_1, avx512_vnni::vec_dot_q4_1_q8_1),
    )
    .set_vec_dot(
        T::Q5_0,
        vec_dot_tf!(BlockQ5_0, BlockQ8_0, avx512_vnni::vec_dot_q5_0_q8_0),
    )
    .set_vec_dot(
        T::Q5_1,
        vec_dot_tf!(BlockQ5_1, BlockQ8_1, avx512_vnni::vec_dot_q5_1_q8_1),
    )
    .set_vec_dot(
        T::Q8_0,
        vec_dot_tf!(BlockQ8_0, BlockQ8_0, avx512_vnni::vec_dot_q8_0_q8_0),
    )
    .set_vec_dot(
        T::Q4K,
        vec_dot_tf!(BlockQ4K, BlockQ8K, avx512_vnni::vec_dot_q4_k_q8_k),
    )
    .set_vec_dot(
        T::Q6K,
        vec_dot_tf!(BlockQ6K, BlockQ8K, avx512_vnni::vec_dot_q6_k_q8_k),
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
