//! Scalar reference implementations of every format: quantize a row (ggml's
//! `_ref` algorithm, bit for bit), dequantize a row, and the dot product of a
//! weight row with an activation row in its `vec_dot_type`.
//!
//! These are the ground truth the SIMD kernels are tested against, and the
//! fallback on CPUs without SIMD. All functions take typed block slices and
//! panic when lengths disagree (a caller bug, never a property of input data).

pub mod float;
pub mod iq_grid;
pub mod iquants;
pub mod k_quants;
pub mod legacy;

/// Panics unless `blocks` blocks of `per_block` elements fill `elems` exactly.
#[inline]
#[track_caller]
pub(crate) fn check_len(blocks: usize, per_block: usize, elems: usize) {
    assert_eq!(
        blocks * per_block,
        elems,
        "row length mismatch: {blocks} blocks of {per_block} vs {elems} values"
    );
}

/// ggml's `nearest_int`: adds 1.5·2^23 and reads the mantissa, which rounds
/// half to even. Valid for |fval| ≤ 4194303.
#[inline]
pub(crate) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// Quantizes one row of `ty` as ggml's `ggml_quantize_chunk` does when given
/// importance weights `qw` (one per value of the row: llama-quantize's
/// `in_sum2 / counts` of an importance matrix): the weighted `_impl`
/// algorithm of each type, which differs from the reference `from_float`.
///
/// Returns `false` (writing nothing) for the types ggml quantizes without
/// looking at the weights (F32, F16, BF16, Q8_0 …): quantize those with
/// their `from_float`. Panics when the lengths disagree (a caller bug).
pub fn quantize_row_weighted(ty: crate::GgmlType, x: &[f32], qw: &[f32], out: &mut [u8]) -> bool {
    use crate::GgmlType as T;
    use bytemuck::cast_slice_mut as cast;
    match ty {
        T::Q4_0 => legacy::quantize_row_q4_0_weighted(x, cast(out), qw),
        T::Q4_1 => legacy::quantize_row_q4_1_weighted(x, cast(out), qw),
        T::Q5_0 => legacy::quantize_row_q5_0_weighted(x, cast(out), qw),
        T::Q5_1 => legacy::quantize_row_q5_1_weighted(x, cast(out), qw),
        T::Q2K => k_quants::quantize_row_q2_k_weighted(x, cast(out), qw),
        T::Q3K => k_quants::quantize_row_q3_k_weighted(x, cast(out), qw),
        T::Q4K => k_quants::quantize_row_q4_k_weighted(x, cast(out), qw),
        T::Q5K => k_quants::quantize_row_q5_k_weighted(x, cast(out), qw),
        T::Q6K => k_quants::quantize_row_q6_k_weighted(x, cast(out), qw),
        T::IQ4NL => iquants::quantize_row_iq4_nl_weighted(x, cast(out), qw),
        T::IQ4XS => iquants::quantize_row_iq4_xs_weighted(x, cast(out), qw),
        _ => return false,
    }
    true
}
