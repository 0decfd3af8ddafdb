//! K-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and the Q8_K activation format.
//!
//! Each format has ggml's reference quantizer (`quantize_row_q*_K_ref`),
//! its dequantizer (`dequantize_row_q*_K`) and its generic dot product with
//! Q8_K activations (`ggml_vec_dot_q*_K_q8_K_generic`). Weights live in
//! super-blocks of [`QK_K`](crate::QK_K) = 256 values split into groups of
//! 16 or 32 with their own small integer scales.
//!
//! Quantization reproduces ggml's algorithm operation for operation (same
//! constants, iteration order and float evaluation order, no fused
//! multiply-add), so it matches ggml compiled without FMA contraction;
//! dequantization and the dot products are bit-exact with ggml's scalar
//! code.

pub(crate) mod common;
mod q2_k;
mod q3_k;
mod q4_k;
mod q5_k;
mod q6_k;
mod q8_k;

#[cfg(test)]
mod tests;

pub use q2_k::{dequantize_row_q2_k, quantize_row_q2_k, vec_dot_q2_k_q8_k};
pub use q3_k::{dequantize_row_q3_k, quantize_row_q3_k, vec_dot_q3_k_q8_k};
pub use q4_k::{dequantize_row_q4_k, quantize_row_q4_k, vec_dot_q4_k_q8_k};
pub use q5_k::{dequantize_row_q5_k, quantize_row_q5_k, vec_dot_q5_k_q8_k};
pub use q6_k::{dequantize_row_q6_k, quantize_row_q6_k, vec_dot_q6_k_q8_k};
pub use q8_k::{dequantize_row_q8_k, quantize_row_q8_k, vec_dot_q8_k_q8_k};
