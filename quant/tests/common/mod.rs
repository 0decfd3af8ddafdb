//! Shared helpers for the integration tests: the reference vectors from
//! `../shared/testdata/quant_vectors.json` (made by gguf-py and ggml's C
//! reference; see that folder's README).

#![allow(dead_code)]

use base64::Engine;
use serde_json::Value;
use std::sync::OnceLock;

pub const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/quant_vectors.json"
);

pub fn vectors() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| {
        let text = std::fs::read_to_string(VECTORS).unwrap_or_else(|e| {
            panic!(
                "cannot read {VECTORS}: {e} (the shared testdata folder must sit beside the repo)"
            )
        });
        serde_json::from_str(&text).expect("quant_vectors.json is valid JSON")
    })
}

pub fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 string"))
        .expect("valid base64")
}

pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The named input rows: (name, values).
pub fn rows() -> Vec<(String, Vec<f32>)> {
    let rows = vectors()["rows"].as_object().expect("rows object");
    rows.iter()
        .map(|(name, r)| (name.clone(), f32s(&b64(&r["x_f32_b64"]))))
        .collect()
}

/// The reference (quantized bytes, dequantized values) of `row` for type `ty`.
pub fn reference(ty: &str, row: &str) -> (Vec<u8>, Vec<f32>) {
    let v = &vectors()["types"][ty]["vectors"][row];
    assert!(v.is_object(), "no vector for {ty}/{row}");
    (b64(&v["quant_b64"]), f32s(&b64(&v["dequant_f32_b64"])))
}
