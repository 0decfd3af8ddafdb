//! The grid i-quants: IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M.
//!
//! Their values are groups of 8 (or 4) coordinates snapped to a fixed set
//! of lattice points (ggml's grids, [`tables`]), with signs stored apart
//! (IQ2/IQ3) or a ±1/8 shift (IQ1), under 3- or 4-bit block scales.
//! Dequantization and the Q8_K dot products follow ggml's scalar code;
//! quantization is ggml's, operation for operation, including its optional
//! importance weights (`quant_weights`), which IQ2_XXS, IQ2_XS and IQ1_S
//! require.

mod decode;
mod encode;
mod iq1;
mod lattice;
pub mod tables;

use crate::GgmlType;

#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
pub(crate) use decode::{IQ1_DELTA, SignedGrid, iq1_grid, iq1m_block, iq1m_d, iq1s_block};
pub use decode::{
    dequantize_row_iq1_m, dequantize_row_iq1_s, dequantize_row_iq2_s, dequantize_row_iq2_xs,
    dequantize_row_iq2_xxs, dequantize_row_iq3_s, dequantize_row_iq3_xxs, vec_dot_iq1_m_q8_k,
    vec_dot_iq1_s_q8_k, vec_dot_iq2_s_q8_k, vec_dot_iq2_xs_q8_k, vec_dot_iq2_xxs_q8_k,
    vec_dot_iq3_s_q8_k, vec_dot_iq3_xxs_q8_k,
};
pub use encode::{
    QuantizeError, quantize_iq2_s, quantize_iq2_xs, quantize_iq2_xxs, quantize_iq3_s,
    quantize_iq3_xxs,
};
pub use iq1::{quantize_iq1_m, quantize_iq1_s};

/// Whether ggml refuses to quantize to `t` without an importance matrix
/// (`ggml_quantize_requires_imatrix`).
pub const fn requires_imatrix(t: GgmlType) -> bool {
    matches!(t, GgmlType::IQ2XXS | GgmlType::IQ2XS | GgmlType::IQ1S)
}

/// Quantizes rows `x` to type `t` into `y` (whole rows of `t`) with
/// ggml's `quantize_*`, passing `weights` (one per column, the same for
/// every row: llama-quantize's importance matrix of the tensor) where the
/// type's quantizer takes them.
///
/// Without weights every type works except those ggml refuses
/// ([`requires_imatrix`]); with weights, every type ggml has a weighted
/// quantizer for uses it ([`super::quantize_row_weighted`]), and the others
/// (Q8_0, the float types) ignore them as ggml does.
///
/// # Panics
/// If `y` is not exactly the rows of `x` in type `t`.
pub fn quantize_weighted(
    t: GgmlType,
    x: &[f32],
    y: &mut [u8],
    weights: Option<&[f32]>,
) -> Result<(), QuantizeError> {
    use bytemuck::cast_slice_mut as c;
    let want = t.row_size(x.len());
    assert_eq!(want, Some(y.len()), "quantize_weighted: {t} output size");
    match t {
        GgmlType::IQ2XXS => quantize_iq2_xxs(x, c(y), weights),
        GgmlType::IQ2XS => quantize_iq2_xs(x, c(y), weights),
        GgmlType::IQ2S => quantize_iq2_s(x, c(y), weights),
        GgmlType::IQ3XXS => quantize_iq3_xxs(x, c(y), weights),
        GgmlType::IQ3S => quantize_iq3_s(x, c(y), weights),
        GgmlType::IQ1S => quantize_iq1_s(x, c(y), weights),
        GgmlType::IQ1M => quantize_iq1_m(x, c(y), weights),
        _ => match weights {
            // The other types: ggml's weighted algorithm where the type has
            // one, row by row; else (or without weights) `from_float`.
            Some(w) => {
                let n = w.len();
                if n == 0 || x.len() % n != 0 {
                    return Err(QuantizeError::WeightsLength {
                        expected: n,
                        got: x.len(),
                    });
                }
                let row = t.row_size(n).ok_or(QuantizeError::WeightsLength {
                    expected: t.block_size(),
                    got: n,
                })?;
                for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(row)) {
                    if !super::quantize_row_weighted(t, xr, w, yr) {
                        (crate::Kernels::get().of(t).from_float)(xr, yr);
                    }
                }
                Ok(())
            }
            None => {
                (crate::Kernels::get().of(t).from_float)(x, y);
                Ok(())
            }
        },
    }
}

/// The kernel table's `from_float` for these types: quantization without
/// importance weights (ggml's `quantize_row_*_ref`).
///
/// # Panics
/// For a type that requires an importance matrix: callers check
/// [`requires_imatrix`] first and quantize through the functions taking
/// weights.
pub(crate) mod row {
    use super::*;
    use crate::blocks::*;

    #[track_caller]
    fn done(r: Result<(), QuantizeError>) {
        if let Err(e) = r {
            panic!("from_float: {e}; use the quantize function taking importance weights");
        }
    }

    macro_rules! rows {
        ($($name:ident: $b:ty => $f:path;)*) => {$(
            pub(crate) fn $name(x: &[f32], y: &mut [$b]) {
                done($f(x, y, None))
            }
        )*};
    }

    rows! {
        iq2_xxs: BlockIQ2XXS => quantize_iq2_xxs;
        iq2_xs: BlockIQ2XS => quantize_iq2_xs;
        iq2_s: BlockIQ2S => quantize_iq2_s;
        iq3_xxs: BlockIQ3XXS => quantize_iq3_xxs;
        iq3_s: BlockIQ3S => quantize_iq3_s;
        iq1_s: BlockIQ1S => quantize_iq1_s;
        iq1_m: BlockIQ1M => quantize_iq1_m;
    }
}
