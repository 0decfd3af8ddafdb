//! Unit tests: the helpers, and every K-quant on edge-case rows (zeros,
//! constants, a huge outlier, values at the f16 limit, magnitudes ~1e-8).

use super::common::{
    ScaleSearch, get_scale_min_k4, make_q3_quants, make_qkx2_quants, make_qx_quants,
    pack_scale_min_k4, sqrtf,
};
use super::*;
use crate::blocks::*;
use crate::types::QK_K;
use alloc::vec;
use alloc::vec::Vec;
use bytemuck::{Pod, Zeroable};

/// A deterministic, roughly N(0, 1) stream (xorshift; sum of four uniforms).
fn gauss(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    let mut uniform = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n)
        .map(|_| (uniform() + uniform() + uniform() + uniform()) * 1.7)
        .collect()
}

/// A row's quantized bytes and its dequantized values.
type RoundTrip = (Vec<u8>, Vec<f32>);

/// One format under test: a quantize + dequantize round trip and the
/// largest error allowed, as a fraction of the block's largest magnitude.
struct Kind {
    name: &'static str,
    roundtrip: fn(&[f32]) -> RoundTrip,
    max_rel_err: f32,
}

fn roundtrip<B: Pod>(
    x: &[f32],
    quantize: fn(&[f32], &mut [B]),
    dequantize: fn(&[B], &mut [f32]),
) -> RoundTrip {
    let mut blocks = vec![B::zeroed(); x.len() / QK_K];
    quantize(x, &mut blocks);
    let mut y = vec![0f32; x.len()];
    dequantize(&blocks, &mut y);
    (bytemuck::cast_slice(&blocks).to_vec(), y)
}

/// Bounds: about 1.3× the worst case measured over the rows below (Q2_K
/// 0.35, Q3_K 0.175, Q4_K 0.068, Q5_K 0.035, Q6_K 0.023 of the block max);
/// Q8_K is round-to-nearest with d = max/127, so exactly half a step.
const KINDS: [Kind; 6] = [
    Kind {
        name: "Q2_K",
        roundtrip: |x| roundtrip(x, quantize_row_q2_k, dequantize_row_q2_k),
        max_rel_err: 0.45,
    },
    Kind {
        name: "Q3_K",
        roundtrip: |x| roundtrip(x, quantize_row_q3_k, dequantize_row_q3_k),
        max_rel_err: 0.23,
    },
    Kind {
        name: "Q4_K",
        roundtrip: |x| roundtrip(x, quantize_row_q4_k, dequantize_row_q4_k),
        max_rel_err: 0.09,
    },
    Kind {
        name: "Q5_K",
        roundtrip: |x| roundtrip(x, quantize_row_q5_k, dequantize_row_q5_k),
        max_rel_err: 0.045,
    },
    Kind {
        name: "Q6_K",
        roundtrip: |x| roundtrip(x, quantize_row_q6_k, dequantize_row_q6_k),
        max_rel_err: 0.03,
    },
    Kind {
        name: "Q8_K",
        roundtrip: |x| roundtrip(x, quantize_row_q8_k, dequantize_row_q8_k),
        max_rel_err: 0.5 / 127.0 * 1.001,
    },
];

/// The largest |x − y| of each block, divided by the block's max |x|.
fn worst_rel_err(x: &[f32], y: &[f32]) -> f32 {
    let mut worst = 0.0f32;
    for (xb, yb) in x.chunks(QK_K).zip(y.chunks(QK_K)) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = xb
            .iter()
            .zip(yb)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        if amax > 0.0 {
            worst = worst.max(err / amax);
        } else {
            assert_eq!(err, 0.0);
        }
    }
    worst
}

/// Round trips `x` through every format: no NaN or infinity, and every
/// block within its format's error bound. Returns the dequantized rows.
fn check_all(what: &str, x: &[f32]) -> Vec<RoundTrip> {
    KINDS
        .iter()
        .map(|k| {
            let (bytes, y) = (k.roundtrip)(x);
            for (i, v) in y.iter().enumerate() {
                assert!(v.is_finite(), "{} {what}: value {i} is {v}", k.name);
            }
            let rel = worst_rel_err(x, &y);
            #[cfg(feature = "std")]
            std::eprintln!("{} {what}: worst error {rel:.4} of the block max", k.name);
            assert!(
                rel <= k.max_rel_err,
                "{} {what}: error {rel} of the block max exceeds {}",
                k.name,
                k.max_rel_err
            );
            (bytes, y)
        })
        .collect()
}

#[test]
fn gaussian_rows_round_trip() {
    for seed in 1..=8 {
        let x = gauss(4 * QK_K, seed);
        check_all("gaussian", &x);
    }
}

#[test]
fn all_zero_rows_give_zero_bytes_and_zeros() {
    let x = vec![0.0f32; 2 * QK_K];
    for (k, (bytes, y)) in KINDS.iter().zip(check_all("zeros", &x)) {
        assert!(
            bytes.iter().all(|&b| b == 0),
            "{}: zero row, zero bytes",
            k.name
        );
        assert!(
            y.iter().all(|&v| v == 0.0),
            "{}: zero row dequantizes to 0",
            k.name
        );
    }
}

#[test]
fn constant_rows_round_trip() {
    for c in [0.5f32, -2.0, 1e-3, 3.0e4, -65504.0, 65504.0] {
        let x = vec![c; 2 * QK_K];
        for (k, (_, y)) in KINDS.iter().zip(check_all("constant", &x)) {
            // Every value of a constant row dequantizes to the same number.
            assert!(
                y.iter().all(|&v| v == y[0]),
                "{} constant {c}: {y:?}",
                k.name
            );
        }
    }
}

#[test]
fn one_huge_outlier() {
    for (pos, big) in [(77usize, 1000.0f32), (300, -1000.0)] {
        let mut x: Vec<f32> = gauss(2 * QK_K, 42).iter().map(|v| v * 0.01).collect();
        x[pos] = big;
        for (k, (_, y)) in KINDS.iter().zip(check_all("outlier", &x)) {
            // The outlier sets the scale, so it survives nearly exactly.
            assert!(
                (y[pos] - big).abs() <= 0.02 * big.abs(),
                "{}: outlier {big} dequantized to {}",
                k.name,
                y[pos]
            );
        }
    }
}

#[test]
fn values_at_the_f16_limit_stay_finite() {
    let mut x: Vec<f32> = gauss(2 * QK_K, 5)
        .iter()
        .map(|v| (v * 20000.0).clamp(-65504.0, 65504.0))
        .collect();
    x[3] = 65504.0;
    x[300] = -65504.0;
    check_all("near f16 max", &x);
    let alternating: Vec<f32> = (0..2 * QK_K)
        .map(|i| if i % 2 == 0 { 65504.0 } else { -65504.0 })
        .collect();
    check_all("alternating ±65504", &alternating);
}

#[test]
fn tiny_values_do_not_produce_nan() {
    // The f16 scales underflow (to subnormals or zero): the result may lose
    // all precision but must stay finite and no larger than the input.
    for scale in [1e-8f32, 1e-12, 1e-30] {
        let x: Vec<f32> = gauss(2 * QK_K, 9).iter().map(|v| v * scale).collect();
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for k in &KINDS {
            let (_, y) = (k.roundtrip)(&x);
            for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
                assert!(b.is_finite(), "{} ×{scale}: value {i} is {b}", k.name);
                assert!(
                    (a - b).abs() <= amax,
                    "{} ×{scale}: value {i}: {a:e} → {b:e}",
                    k.name
                );
            }
        }
    }
}

#[test]
fn blocks_are_quantized_independently() {
    // A huge block next to a tiny one: each keeps its own scale.
    let mut x = gauss(2 * QK_K, 11);
    for v in &mut x[..QK_K] {
        *v *= 1e4;
    }
    for v in &mut x[QK_K..] {
        *v *= 1e-2;
    }
    let all = check_all("huge then small", &x);
    for (k, (bytes, y)) in KINDS.iter().zip(all) {
        let (alone_bytes, alone) = (k.roundtrip)(&x[QK_K..]);
        assert_eq!(&bytes[bytes.len() / 2..], &alone_bytes[..], "{}", k.name);
        assert_eq!(&y[QK_K..], &alone[..], "{}", k.name);
    }
}

#[cfg(feature = "std")]
#[test]
fn sqrtf_is_correctly_rounded() {
    let check = |x: f32| {
        let (got, want) = (sqrtf(x), x.sqrt());
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "sqrt({x:e} = {:#x}): got {got:e}, want {want:e}",
            x.to_bits()
        );
    };
    // Every 997th bit pattern of the positive floats (subnormals, normals,
    // infinity, NaNs), every small subnormal, and a few specials.
    for bits in (0..=0x7fff_ffffu32).step_by(997) {
        check(f32::from_bits(bits));
    }
    for bits in 0..100_000u32 {
        check(f32::from_bits(bits));
    }
    for x in [
        0.0,
        -0.0,
        1.0,
        2.0,
        4.0,
        0.25,
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        -1.0,
    ] {
        check(x);
    }
}

#[test]
fn sqrtf_of_squares_is_exact() {
    for i in 1..5000u32 {
        let f = i as f32;
        assert_eq!(sqrtf(f * f), f);
        assert_eq!(sqrtf(f * f / 4.0), f / 2.0);
    }
    assert_eq!(sqrtf(0.0), 0.0);
    assert!(sqrtf(-1.0).is_nan());
}

#[test]
fn scale_min_k4_packing_round_trips() {
    for a in 0..64u8 {
        for b in 0..64u8 {
            let scales = [a, b, 63 - a, 63 - b, b, a, a ^ 21, b ^ 42];
            let mins = [b, a, a ^ 42, b ^ 21, 63 - a, 63 - b, a, b];
            let packed = pack_scale_min_k4(&scales, &mins);
            for j in 0..8 {
                assert_eq!(get_scale_min_k4(j, &packed), (scales[j], mins[j]));
            }
        }
    }
}

#[test]
fn q3_k_scales_round_trip_through_the_block() {
    // Sixteen groups with growing magnitudes: every 6-bit scale differs,
    // and the dequantized groups keep their order of magnitude.
    let mut x = gauss(QK_K, 3);
    for (j, g) in x.chunks_mut(16).enumerate() {
        let sign = if j % 3 == 0 { -1.0 } else { 1.0 };
        for v in g {
            *v *= sign * (j + 1) as f32;
        }
    }
    let (_, y) = roundtrip(&x, quantize_row_q3_k, dequantize_row_q3_k);
    for (j, (xg, yg)) in x.chunks(16).zip(y.chunks(16)).enumerate() {
        let xa = xg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let ya = yg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!((ya - xa).abs() <= 0.35 * xa, "group {j}: max {xa} → {ya}");
    }
}

#[test]
fn make_qkx2_quants_constant_and_ramp() {
    let search = ScaleSearch {
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    let mut l = [9u8; 32];
    let mut scratch = [0u8; 32];
    // A constant positive group: the min clamps to 0 and the top quant
    // carries the value.
    let x = [2.0f32; 32];
    let w = [1.0f32; 32];
    let (scale, min) = make_qkx2_quants(15, &x, &w, &mut l, &mut scratch, search);
    assert_eq!(min, 0.0);
    for &q in &l {
        assert!((scale * q as f32 - 2.0).abs() < 1e-6, "{scale} · {q}");
    }
    // A constant negative group is all min: scale 0, quants 0.
    let x = [-3.0f32; 32];
    let (scale, min) = make_qkx2_quants(15, &x, &w, &mut l, &mut scratch, search);
    assert_eq!((scale, min), (0.0, 3.0));
    assert!(l.iter().all(|&q| q == 0));
    // A ramp 0..=15 is represented exactly.
    let x: Vec<f32> = (0..32).map(|i| (i / 2) as f32).collect();
    let (scale, min) = make_qkx2_quants(15, &x, &w, &mut l, &mut scratch, search);
    for (&v, &q) in x.iter().zip(&l) {
        assert!((scale * q as f32 - min - v).abs() < 1e-5, "{v} → {q}");
    }
}

#[test]
fn symmetric_searches_fit_a_scaled_grid() {
    // Values already on a grid k · 0.25 (k in −4..=3) are found exactly.
    let x: Vec<f32> = (0..16).map(|i| ((i % 8) as f32 - 4.0) * 0.25).collect();
    let mut l = [0i8; 16];
    let scale = make_q3_quants(4, &x, &mut l);
    for (&v, &q) in x.iter().zip(&l) {
        assert_eq!(scale * (q as f32 - 4.0), v);
    }
    let x: Vec<f32> = (0..16).map(|i| (i as f32 - 8.0) * 4.0).collect();
    let mut l = [0i8; 16];
    let scale = make_qx_quants(32, &x, &mut l, None);
    for (&v, &q) in x.iter().zip(&l) {
        assert!(
            (scale * (q as f32 - 32.0) - v).abs() <= 1e-4 * 32.0,
            "{v} → {q}"
        );
    }
    // All zeros: scale 0, quants 0.
    assert_eq!(make_qx_quants(32, &[0.0; 16], &mut l, None), 0.0);
    assert!(l.iter().all(|&q| q == 0));
    assert_eq!(make_q3_quants(4, &[0.0; 16], &mut l), 0.0);
    assert!(l.iter().all(|&q| q == 0));
}

#[test]
fn q8_k_sums_and_dot() {
    let x = gauss(3 * QK_K, 77);
    let mut q = vec![BlockQ8K::zeroed(); 3];
    quantize_row_q8_k(&x, &mut q);
    for b in &q {
        for (j, s) in b.bsums.iter().enumerate() {
            let want: i32 = b.qs[16 * j..16 * (j + 1)]
                .iter()
                .map(|&v| i32::from(v))
                .sum();
            assert_eq!(i32::from(*s), want);
        }
    }
    // x · x through Q8_K against the exact integer sum.
    let got = vec_dot_q8_k_q8_k(&q, &q);
    let want: f64 = q
        .iter()
        .map(|b| {
            let s: i64 = b.qs.iter().map(|&v| i64::from(v) * i64::from(v)).sum();
            s as f64 * (b.d as f64 * b.d as f64)
        })
        .sum();
    assert!((got as f64 - want).abs() <= 1e-6 * want, "{got} vs {want}");
}
