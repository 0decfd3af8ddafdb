//! Bit-compatibility with ggml/gguf-py for the 32-wide formats, and exact
//! dequantization for every type (including the real SmolLM2 rows).

mod common;

use common::*;
use spinel_quant::{GgmlType, Kernels};

const LEGACY: [&str; 5] = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"];
const ALL: [&str; 10] = [
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
];

fn scalar() -> &'static Kernels {
    Kernels::for_isa(spinel_quant::Isa::Scalar).unwrap()
}

#[test]
fn legacy_quantized_bytes_are_identical() {
    let rows = rows();
    assert_eq!(rows.len(), 15, "expected the 15 reference rows");
    for name in LEGACY {
        let ty = GgmlType::from_name(name).unwrap();
        for (row, x) in &rows {
            let (want, _) = reference(name, row);
            let mut got = vec![0u8; ty.row_size(x.len()).unwrap()];
            (scalar().of(ty).from_float)(x, &mut got);
            if got != want {
                let bs = ty.type_size();
                let first = got
                    .chunks(bs)
                    .zip(want.chunks(bs))
                    .position(|(a, b)| a != b)
                    .unwrap();
                panic!(
                    "{name}/{row}: block {first} differs\n got  {:?}\n want {:?}",
                    &got[first * bs..(first + 1) * bs],
                    &want[first * bs..(first + 1) * bs]
                );
            }
        }
    }
}

fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: value {i}: got {g:e}, want {w:e}"
        );
    }
}

#[test]
fn dequantization_is_identical_for_every_type() {
    let rows = rows();
    for name in ALL {
        let ty = GgmlType::from_name(name).unwrap();
        for (row, x) in &rows {
            let (q, want) = reference(name, row);
            assert_eq!(want.len(), x.len());
            let mut got = vec![0f32; want.len()];
            (scalar().of(ty).to_float)(&q, &mut got);
            assert_bits_eq(&format!("{name}/{row}"), &got, &want);
        }
    }
}

#[test]
fn dequantization_of_real_smollm2_rows() {
    let tensors = vectors()["real_gguf_rows"]["tensors"].as_object().unwrap();
    assert!(tensors.len() >= 2);
    let mut seen = Vec::new();
    for (name, t) in tensors {
        let ty = GgmlType::from_name(t["type"].as_str().unwrap()).unwrap();
        seen.push(ty);
        let q = b64(&t["quant_b64"]);
        let want = f32s(&b64(&t["dequant_f32_b64"]));
        let ne0: usize = t["ne0"]
            .as_str()
            .map(|s| s.parse().unwrap())
            .unwrap_or_else(|| t["ne0"].as_u64().unwrap() as usize);
        assert_eq!(want.len() % ne0, 0);
        assert_eq!(q.len(), ty.row_size(want.len()).unwrap(), "{name}");
        let mut got = vec![0f32; want.len()];
        (scalar().of(ty).to_float)(&q, &mut got);
        assert_bits_eq(name, &got, &want);
        // Requantizing the dequantized Q8_0 row reproduces its bytes (the
        // quantizer is idempotent on its own grid).
        if ty == GgmlType::Q8_0 {
            let mut again = vec![0u8; q.len()];
            (scalar().of(ty).from_float)(&want, &mut again);
            assert_eq!(again, q, "{name}: Q8_0 requantization");
        }
    }
    assert!(seen.contains(&GgmlType::Q4_1) && seen.contains(&GgmlType::Q8_0));
}

#[test]
fn dot_products_match_f64_reference() {
    // The scalar dot of each format against its activation type agrees with the
    // dot of the dequantized rows (the only error is the float accumulation).
    let rows = rows();
    let (_, act) = rows.iter().find(|(n, _)| n == "gauss_4096").unwrap();
    for ty in GgmlType::ALL {
        if matches!(ty.vec_dot_type(), GgmlType::Q8K) {
            continue; // covered by the K-quant tests
        }
        let k = scalar().of(ty);
        let adt = ty.vec_dot_type();
        for (row, x) in rows.iter().filter(|(_, x)| x.len() == act.len()) {
            let mut w = vec![0u8; ty.row_size(x.len()).unwrap()];
            (k.from_float)(x, &mut w);
            let mut a = vec![0u8; adt.row_size(act.len()).unwrap()];
            (scalar().of(adt).from_float)(act, &mut a);
            let (mut wf, mut af) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            (k.to_float)(&w, &mut wf);
            (scalar().of(adt).to_float)(&a, &mut af);
            let exact: f64 = wf.iter().zip(&af).map(|(&p, &q)| p as f64 * q as f64).sum();
            let mag: f64 = wf
                .iter()
                .zip(&af)
                .map(|(&p, &q)| (p as f64 * q as f64).abs())
                .sum();
            let got = (k.vec_dot)(&w, &a) as f64;
            // Q4_1/Q5_1 use the activation block's f16 sum `s`, rounded once per block.
            let tol = 1e-5 * mag
                + if ty.vec_dot_type() == GgmlType::Q8_1 {
                    2e-3 * mag
                } else {
                    0.0
                }
                + 1e-30;
            assert!(
                (got - exact).abs() <= tol,
                "{ty}/{row}: dot {got} vs {exact} (tol {tol})"
            );
        }
    }
}
