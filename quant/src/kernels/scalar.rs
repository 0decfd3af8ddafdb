//! The scalar table: the reference implementations of `crate::formats`.

use super::{Isa, Kernels, TypeKernels, from_float, to_float, vec_dot};
use crate::blocks::*;
use crate::formats::iq_grid::{self as g, row};
use crate::formats::{float, iquants as iq, k_quants as k, legacy as l};
use half::{bf16, f16};

macro_rules! entry {
    ($b:ty, $a:ty, $q:path, $dq:path, $dot:path) => {
        TypeKernels {
            to_float: to_float!($b, $dq),
            from_float: from_float!($b, $q),
            vec_dot: vec_dot!($b, $a, $dot),
            gemm: None,
            gemv: None,
            gemv_rows: None,
        }
    };
}

/// Every type's scalar kernels, in the order of `slot`.
pub(crate) const TABLE: Kernels = Kernels {
    isa: Isa::Scalar,
    types: [
        entry!(
            f32,
            f32,
            float::f32_from_f32,
            float::f32_from_f32,
            float::vec_dot_f32
        ),
        entry!(
            f16,
            f16,
            float::quantize_row_f16,
            float::dequantize_row_f16,
            float::vec_dot_f16
        ),
        entry!(
            BlockQ4_0,
            BlockQ8_0,
            l::quantize_row_q4_0,
            l::dequantize_row_q4_0,
            l::vec_dot_q4_0_q8_0
        ),
        entry!(
            BlockQ4_1,
            BlockQ8_1,
            l::quantize_row_q4_1,
            l::dequantize_row_q4_1,
            l::vec_dot_q4_1_q8_1
        ),
        entry!(
            BlockQ5_0,
            BlockQ8_0,
            l::quantize_row_q5_0,
            l::dequantize_row_q5_0,
            l::vec_dot_q5_0_q8_0
        ),
        entry!(
            BlockQ5_1,
            BlockQ8_1,
            l::quantize_row_q5_1,
            l::dequantize_row_q5_1,
            l::vec_dot_q5_1_q8_1
        ),
        entry!(
            BlockQ8_0,
            BlockQ8_0,
            l::quantize_row_q8_0,
            l::dequantize_row_q8_0,
            l::vec_dot_q8_0_q8_0
        ),
        entry!(
            BlockQ8_1,
            BlockQ8_1,
            l::quantize_row_q8_1,
            l::dequantize_row_q8_1,
            l::vec_dot_q8_1_q8_1
        ),
        entry!(
            BlockQ2K,
            BlockQ8K,
            k::quantize_row_q2_k,
            k::dequantize_row_q2_k,
            k::vec_dot_q2_k_q8_k
        ),
        entry!(
            BlockQ3K,
            BlockQ8K,
            k::quantize_row_q3_k,
            k::dequantize_row_q3_k,
            k::vec_dot_q3_k_q8_k
        ),
        entry!(
            BlockQ4K,
            BlockQ8K,
            k::quantize_row_q4_k,
            k::dequantize_row_q4_k,
            k::vec_dot_q4_k_q8_k
        ),
        entry!(
            BlockQ5K,
            BlockQ8K,
            k::quantize_row_q5_k,
            k::dequantize_row_q5_k,
            k::vec_dot_q5_k_q8_k
        ),
        entry!(
            BlockQ6K,
            BlockQ8K,
            k::quantize_row_q6_k,
            k::dequantize_row_q6_k,
            k::vec_dot_q6_k_q8_k
        ),
        entry!(
            BlockQ8K,
            BlockQ8K,
            k::quantize_row_q8_k,
            k::dequantize_row_q8_k,
            k::vec_dot_q8_k_q8_k
        ),
        entry!(
            bf16,
            bf16,
            float::quantize_row_bf16,
            float::dequantize_row_bf16,
            float::vec_dot_bf16
        ),
        entry!(
            BlockIQ4NL,
            BlockQ8_0,
            iq::quantize_row_iq4_nl,
            iq::dequantize_row_iq4_nl,
            iq::vec_dot_iq4_nl_q8_0
        ),
        entry!(
            BlockIQ4XS,
            BlockQ8K,
            iq::quantize_row_iq4_xs,
            iq::dequantize_row_iq4_xs,
            iq::vec_dot_iq4_xs_q8_k
        ),
        entry!(
            BlockIQ2XXS,
            BlockQ8K,
            row::iq2_xxs,
            g::dequantize_row_iq2_xxs,
            g::vec_dot_iq2_xxs_q8_k
        ),
        entry!(
            BlockIQ2XS,
            BlockQ8K,
            row::iq2_xs,
            g::dequantize_row_iq2_xs,
            g::vec_dot_iq2_xs_q8_k
        ),
        entry!(
            BlockIQ2S,
            BlockQ8K,
            row::iq2_s,
            g::dequantize_row_iq2_s,
            g::vec_dot_iq2_s_q8_k
        ),
        entry!(
            BlockIQ3XXS,
            BlockQ8K,
            row::iq3_xxs,
            g::dequantize_row_iq3_xxs,
            g::vec_dot_iq3_xxs_q8_k
        ),
        entry!(
            BlockIQ3S,
            BlockQ8K,
            row::iq3_s,
            g::dequantize_row_iq3_s,
            g::vec_dot_iq3_s_q8_k
        ),
        entry!(
            BlockIQ1S,
            BlockQ8K,
            row::iq1_s,
            g::dequantize_row_iq1_s,
            g::vec_dot_iq1_s_q8_k
        ),
        entry!(
            BlockIQ1M,
            BlockQ8K,
            row::iq1_m,
            g::dequantize_row_iq1_m,
            g::vec_dot_iq1_m_q8_k
        ),
    ],
};
