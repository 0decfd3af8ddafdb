//! K-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and the Q8_K activation format
//! (ggml-quants.c `quantize_row_q*_K_ref`, `dequantize_row_q*_K`,
//! `ggml_vec_dot_q*_K_q8_K_generic`).

use super::check_len;
use crate::blocks::*;
use crate::types::QK_K;

macro_rules! pending {
    ($($q:ident, $dq:ident, $dot:ident: $b:ty;)*) => {$(
        pub fn $q(x: &[f32], y: &mut [$b]) {
            check_len(y.len(), QK_K, x.len());
            unimplemented!(concat!(stringify!($q), " is being written"))
        }
        pub fn $dq(x: &[$b], y: &mut [f32]) {
            check_len(x.len(), QK_K, y.len());
            unimplemented!(concat!(stringify!($dq), " is being written"))
        }
        pub fn $dot(x: &[$b], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len());
            unimplemented!(concat!(stringify!($dot), " is being written"))
        }
    )*};
}

pending! {
    quantize_row_q2_k, dequantize_row_q2_k, vec_dot_q2_k_q8_k: BlockQ2K;
    quantize_row_q3_k, dequantize_row_q3_k, vec_dot_q3_k_q8_k: BlockQ3K;
    quantize_row_q4_k, dequantize_row_q4_k, vec_dot_q4_k_q8_k: BlockQ4K;
    quantize_row_q5_k, dequantize_row_q5_k, vec_dot_q5_k_q8_k: BlockQ5K;
    quantize_row_q6_k, dequantize_row_q6_k, vec_dot_q6_k_q8_k: BlockQ6K;
    quantize_row_q8_k, dequantize_row_q8_k, vec_dot_q8_k_q8_k: BlockQ8K;
}
