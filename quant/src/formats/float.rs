//! Float rows: F32, F16 and BF16 (conversions round to nearest even, like ggml).

use half::{bf16, f16};

pub fn f32_from_f32(x: &[f32], y: &mut [f32]) {
    y.copy_from_slice(x);
}

pub fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: length mismatch");
    // Accumulate in f64 like ggml's scalar path (ggml_float).
    x.iter()
        .zip(y)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum::<f64>() as f32
}

pub fn quantize_row_f16(x: &[f32], y: &mut [f16]) {
    assert_eq!(x.len(), y.len(), "row length mismatch");
    for (o, &v) in y.iter_mut().zip(x) {
        *o = f16::from_f32(v);
    }
}

pub fn dequantize_row_f16(x: &[f16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "row length mismatch");
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v.to_f32();
    }
}

pub fn vec_dot_f16(x: &[f16], y: &[f16]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: length mismatch");
    x.iter()
        .zip(y)
        .map(|(&a, &b)| (a.to_f32() * b.to_f32()) as f64)
        .sum::<f64>() as f32
}

pub fn quantize_row_bf16(x: &[f32], y: &mut [bf16]) {
    assert_eq!(x.len(), y.len(), "row length mismatch");
    for (o, &v) in y.iter_mut().zip(x) {
        *o = bf16::from_f32(v);
    }
}

pub fn dequantize_row_bf16(x: &[bf16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "row length mismatch");
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v.to_f32();
    }
}

pub fn vec_dot_bf16(x: &[bf16], y: &[bf16]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: length mismatch");
    x.iter()
        .zip(y)
        .map(|(&a, &b)| (a.to_f32() * b.to_f32()) as f64)
        .sum::<f64>() as f32
}
