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
