//! The x86 tables against the scalar one on odd lengths (every block count
//! from 1 to 17, so the paired and 512-bit loops hit their tails) and on
//! edge-case values. `quant/tests/kernels.rs` covers the rest generically.

use crate::blocks::{BlockQ8_0, BlockQ8_1, BlockQ8K};
use crate::{GgmlType, Isa, Kernels};
use alloc::vec;
use alloc::vec::Vec;

const X86: [Isa; 4] = [Isa::Avx2, Isa::AvxVnni, Isa::Avx512, Isa::Avx512Vnni];

fn tables() -> Vec<&'static Kernels> {
    X86.into_iter().filter_map(Kernels::for_isa).collect()
}

fn scalar() -> &'static Kernels {
    Kernels::for_isa(Isa::Scalar).unwrap()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Rows of several shapes: uniform, with an outlier, tiny, near the f16
/// range, ties for the rounding, all zeros.
fn rows(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut r = Rng(seed | 1);
    let uni: Vec<f32> = (0..n).map(|_| r.next()).collect();
    let mut outlier: Vec<f32> = uni.iter().map(|v| v * 0.01).collect();
    outlier[n / 3] = -500.0;
    vec![
        uni.clone(),
        outlier,
        uni.iter().map(|v| v * 1e-8).collect(),
        uni.iter().map(|v| v * 65504.0).collect(),
        (0..n).map(|i| (i % 37) as f32 * 0.5 - 9.0).collect(),
        vec![0.0; n],
        (0..n)
            .map(|i| if i % 2 == 0 { 3.0 } else { -3.0 })
            .collect(),
    ]
}

fn quantize(k: &Kernels, ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_size(x.len()).unwrap()];
    (k.of(ty).from_float)(x, &mut q);
    q
}

fn dequantize(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    (scalar().of(ty).to_float)(q, &mut y);
    y
}

/// `rows` names which of `rows()` the weights and activations are, for the
/// failure message.
fn check_dot(k: &Kernels, ty: GgmlType, w: &[f32], a: &[f32], rows: (usize, usize)) {
    let adt = ty.vec_dot_type();
    let wq = quantize(scalar(), ty, w);
    let aq = quantize(scalar(), adt, a);
    let want = (scalar().of(ty).vec_dot)(&wq, &aq) as f64;
    let got = (k.of(ty).vec_dot)(&wq, &aq) as f64;
    let mag: f64 = dequantize(ty, &wq, w.len())
        .iter()
        .zip(&dequantize(adt, &aq, a.len()))
        .map(|(&p, &q)| (p as f64 * q as f64).abs())
        .sum();
    let tol = 1e-5 * mag + 1e-6 * want.abs() + f32::MIN_POSITIVE as f64;
    // Rows near the f16 limit overflow (Q8_1's `s`); equal non-finite
    // results agree.
    let same = got == want || (got.is_nan() && want.is_nan());
    assert!(
        same || (got - want).abs() <= tol,
        "{} {ty} n={} rows {rows:?}: {got} vs scalar {want} (tol {tol:e})",
        k.isa(),
        w.len()
    );
}

const DOT_TYPES: [GgmlType; 13] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::F16,
    GgmlType::F32,
    GgmlType::BF16,
];

#[test]
fn vec_dot_matches_scalar_for_every_length() {
    for k in tables() {
        for ty in DOT_TYPES {
            let max_blocks = if ty.block_size() == 256 { 6 } else { 17 };
            for nb in 1..=max_blocks {
                let n = nb * ty.block_size();
                let (ws, as_) = (rows(n, nb as u64), rows(n, 1000 + nb as u64));
                for (wi, w) in ws.iter().enumerate() {
                    for (ai, a) in as_.iter().enumerate() {
                        check_dot(k, ty, w, a, (wi, ai));
                    }
                }
            }
        }
    }
}

#[test]
fn float_kernels_match_scalar_for_odd_lengths() {
    for k in tables() {
        for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
            for n in 1..150 {
                for (i, (w, a)) in rows(n, 7 + n as u64).iter().zip(rows(n, 9)).enumerate() {
                    check_dot(k, ty, w, &a, (i, i));
                    let q = quantize(k, ty, w);
                    assert_eq!(q, quantize(scalar(), ty, w), "{} {ty} n={n}", k.isa());
                    let mut y = vec![0f32; n];
                    (k.of(ty).to_float)(&q, &mut y);
                    let want = dequantize(ty, &q, n);
                    assert!(y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
                }
            }
        }
    }
}

#[test]
fn f16_and_bf16_conversion_of_special_values_matches_half() {
    let x = [
        0.0f32,
        -0.0,
        65504.0,
        65520.0,
        -70000.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        1e-8,
        5.96e-8,
        -2.98e-8,
        6.1e-5,
        1.0 / 3.0,
        2049.0,
        2051.0,
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        1.0e-40,
        f32::from_bits(0x3f80_8000), // bf16 tie, even: stays
        f32::from_bits(0x3f81_8000), // bf16 tie, odd: rounds up
        f32::from_bits(0x3f80_8001),
        f32::from_bits(0x7f80_0001), // signalling NaN
        f32::from_bits(0xffc0_1234),
    ];
    for k in tables() {
        for ty in [GgmlType::F16, GgmlType::BF16] {
            let q = quantize(k, ty, &x);
            assert_eq!(q, quantize(scalar(), ty, &x), "{} {ty}", k.isa());
            let mut y = vec![0f32; x.len()];
            (k.of(ty).to_float)(&q, &mut y);
            let want = dequantize(ty, &q, x.len());
            assert!(y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

/// The activation quantizers: identical `d` (and `s`, `bsums` from the
/// block's own quants), each quant within one of scalar. With the exact
/// rounding used here they are in fact identical, which is checked too.
#[test]
fn activation_quantizers_match_scalar() {
    for k in tables() {
        for nb in 1..=9 {
            for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8K] {
                let n = nb * ty.block_size();
                for (i, x) in rows(n, 31 + nb as u64).iter().enumerate() {
                    let got = quantize(k, ty, x);
                    let want = quantize(scalar(), ty, x);
                    assert_eq!(got, want, "{} {ty} n={n} row {i}", k.isa());
                }
            }
        }
    }
}

/// Q8_K takes the sign of its scale from the first element of largest
/// magnitude; ties between +a and −a must pick the same one as scalar.
#[test]
fn q8_k_picks_the_first_extreme() {
    for k in tables() {
        for (pos, neg) in [(3usize, 200usize), (200, 3), (0, 255), (255, 0)] {
            let mut x = vec![0.25f32; 256];
            x[pos] = 2.0;
            x[neg] = -2.0;
            let got = quantize(k, GgmlType::Q8K, &x);
            let want = quantize(scalar(), GgmlType::Q8K, &x);
            let (g, w): (&[BlockQ8K], &[BlockQ8K]) =
                (bytemuck::cast_slice(&got), bytemuck::cast_slice(&want));
            assert_eq!(g[0].d.to_bits(), w[0].d.to_bits(), "{}", k.isa());
            assert_eq!(g, w);
        }
    }
}

/// NaN elements are skipped by the scalar amax; the SIMD one must agree on `d`.
#[test]
fn quantizers_ignore_nan_in_amax_like_scalar() {
    for k in tables() {
        let mut x: Vec<f32> = (0..256).map(|i| i as f32 / 100.0 - 1.0).collect();
        x[5] = f32::NAN;
        for ty in [GgmlType::Q8_0, GgmlType::Q8_1] {
            let got = quantize(k, ty, &x);
            let want = quantize(scalar(), ty, &x);
            if ty == GgmlType::Q8_0 {
                let (g, w): (&[BlockQ8_0], &[BlockQ8_0]) =
                    (bytemuck::cast_slice(&got), bytemuck::cast_slice(&want));
                assert!(g.iter().zip(w).all(|(a, b)| a.d == b.d), "{}", k.isa());
            } else {
                let (g, w): (&[BlockQ8_1], &[BlockQ8_1]) =
                    (bytemuck::cast_slice(&got), bytemuck::cast_slice(&want));
                assert!(g.iter().zip(w).all(|(a, b)| a.d == b.d), "{}", k.isa());
            }
        }
        let got = quantize(k, GgmlType::Q8K, &x);
        let want = quantize(scalar(), GgmlType::Q8K, &x);
        let (g, w): (&[BlockQ8K], &[BlockQ8K]) =
            (bytemuck::cast_slice(&got), bytemuck::cast_slice(&want));
        assert_eq!(g[0].d.to_bits(), w[0].d.to_bits(), "{}", k.isa());
    }
}

/// Raw activation blocks with every byte value, −128 included, for the
/// kernels that are exact on them: all but Q8_0 · Q8_0 below AVX-512 VNNI,
/// whose sign trick needs activations ≠ −128 (as the quantizers produce).
#[test]
fn kernels_are_exact_on_any_activation_byte() {
    use crate::blocks::{BlockQ8_1, BlockQ8K};
    use half::f16;
    let mut r = Rng(99);
    let byte = |i: usize| (i.wrapping_mul(167).wrapping_add(i >> 3)) as u8 as i8;
    for k in tables() {
        for nb in 1..=5 {
            let n = nb * 256;
            let w: Vec<f32> = (0..n).map(|_| r.next()).collect();
            let a8: Vec<BlockQ8_0> = (0..n / 32)
                .map(|b| BlockQ8_0 {
                    d: f16::from_f32(0.01),
                    qs: core::array::from_fn(|j| if j == b % 32 { -128 } else { byte(32 * b + j) }),
                })
                .collect();
            let a81: Vec<BlockQ8_1> = a8
                .iter()
                .map(|b| {
                    let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
                    BlockQ8_1 {
                        d: b.d,
                        s: f16::from_f32(sum as f32 * 0.01),
                        qs: b.qs,
                    }
                })
                .collect();
            let a8k: Vec<BlockQ8K> = (0..nb)
                .map(|b| {
                    let qs: [i8; 256] = core::array::from_fn(|j| {
                        if j % 50 == b {
                            -128
                        } else {
                            byte(256 * b + j + 7)
                        }
                    });
                    let bsums = core::array::from_fn(|g| {
                        qs[16 * g..16 * g + 16].iter().map(|&q| i16::from(q)).sum()
                    });
                    BlockQ8K { d: 0.01, qs, bsums }
                })
                .collect();
            for ty in DOT_TYPES {
                let act: &[u8] = match ty.vec_dot_type() {
                    // AVX-512 VNNI's Q8_0 uses the offset form instead.
                    GgmlType::Q8_0 if ty == GgmlType::Q8_0 && k.isa() != Isa::Avx512Vnni => {
                        continue;
                    }
                    GgmlType::Q8_0 => bytemuck::cast_slice(&a8),
                    GgmlType::Q8_1 => bytemuck::cast_slice(&a81),
                    GgmlType::Q8K => bytemuck::cast_slice(&a8k),
                    _ => continue,
                };
                let wq = quantize(scalar(), ty, &w);
                let want = (scalar().of(ty).vec_dot)(&wq, act);
                let got = (k.of(ty).vec_dot)(&wq, act);
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{} {ty} nb={nb}: {got} vs scalar {want}",
                    k.isa()
                );
            }
        }
    }
}

/// The types with register-blocked gemm kernels on every x86 level.
const GEMM_TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// `1e-5 ·` the size of the terms a dot product of the dequantized rows may
/// round: per block `Σ|w·a|` plus `2 · max|w| · Σ|a|` (scale and min/offset
/// terms that may cancel), as in `quant/tests/kernels.rs`.
fn gemm_tol(ty: GgmlType, wd: &[f32], ad: &[f32], want: f32) -> f32 {
    let bs = ty.block_size();
    let mag: f64 = wd
        .chunks(bs)
        .zip(ad.chunks(bs))
        .map(|(wb, ab)| {
            let wmax = wb.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
            let asum: f64 = ab.iter().map(|&v| f64::from(v).abs()).sum();
            let direct: f64 = wb
                .iter()
                .zip(ab)
                .map(|(&p, &q)| (f64::from(p) * f64::from(q)).abs())
                .sum();
            direct + 2.0 * wmax * asum
        })
        .sum();
    (1e-5 * mag + 1e-6 * f64::from(want.abs()) + f64::from(f32::MIN_POSITIVE)) as f32
}

/// Runs every x86 table's gemm on the first `m` of `a` and `n` of `w` (rows
/// of `k` elements) for every `m`, `n` in `1..=rows`, against `vec_dot`.
fn check_gemm_shapes(ty: GgmlType, k: usize, w: &[u8], a: &[u8], max_m: usize, max_n: usize) {
    let adt = ty.vec_dot_type();
    let (wrow, arow) = (ty.row_size(k).unwrap(), adt.row_size(k).unwrap());
    let wd: Vec<Vec<f32>> = w.chunks(wrow).map(|q| dequantize(ty, q, k)).collect();
    let ad: Vec<Vec<f32>> = a.chunks(arow).map(|q| dequantize(adt, q, k)).collect();
    for kern in tables() {
        let dot = kern.of(ty).vec_dot;
        let want: Vec<Vec<f32>> = (0..max_m)
            .map(|i| {
                (0..max_n)
                    .map(|j| dot(&w[j * wrow..(j + 1) * wrow], &a[i * arow..(i + 1) * arow]))
                    .collect()
            })
            .collect();
        let tol: Vec<Vec<f32>> = (0..max_m)
            .map(|i| {
                (0..max_n)
                    .map(|j| gemm_tol(ty, &wd[j], &ad[i], want[i][j]))
                    .collect()
            })
            .collect();
        for m in 1..=max_m {
            for n in 1..=max_n {
                let ldo = n + 2;
                let mut out = vec![f32::NAN; m * ldo];
                kern.gemm(ty, k, &w[..n * wrow], &a[..m * arow], &mut out, ldo);
                for i in 0..m {
                    for j in 0..n {
                        let (got, want) = (out[i * ldo + j], want[i][j]);
                        assert!(
                            got == want
                                || (got - want).abs() <= tol[i][j]
                                || (got.is_nan() && want.is_nan()),
                            "{} {ty} gemm k={k} m={m} n={n} [{i},{j}]: {got} vs vec_dot {want}",
                            kern.isa()
                        );
                    }
                    assert!(out[i * ldo + n..(i + 1) * ldo].iter().all(|v| v.is_nan()));
                }
            }
        }
    }
}

/// Every gemm kernel for `m`, `n` of 1..=17 (every tile remainder, partial
/// panels) and block counts that leave tails in the chunks of `k`, on the
/// edge-case rows (outliers, zeros, tiny, near the f16 limit, ties).
#[test]
fn gemm_matches_vec_dot_for_every_shape() {
    for ty in GEMM_TYPES {
        let bs = ty.block_size();
        for nb in if bs == 256 { [1, 3] } else { [1, 17] } {
            let k = nb * bs;
            let row = |seed: usize| rows(k, seed as u64)[seed % 7].clone();
            let w: Vec<u8> = (0..17)
                .flat_map(|j| quantize(scalar(), ty, &row(j)))
                .collect();
            let a: Vec<u8> = (0..17)
                .flat_map(|i| quantize(scalar(), ty.vec_dot_type(), &row(100 + i)))
                .collect();
            check_gemm_shapes(ty, k, &w, &a, 17, 17);
        }
    }
}

/// Raw activation blocks with every byte value, −128 included: the gemm
/// kernels are exact on them wherever `vec_dot` is (all but Q8_0 below
/// AVX-512 VNNI, see `kernels_are_exact_on_any_activation_byte`).
#[test]
fn gemm_is_exact_on_any_activation_byte() {
    use half::f16;
    let byte = |i: usize| (i.wrapping_mul(167).wrapping_add(i >> 3)) as u8 as i8;
    let k = 2 * 256;
    let (m, n) = (9, 11);
    let a8: Vec<BlockQ8_0> = (0..m * k / 32)
        .map(|b| BlockQ8_0 {
            d: f16::from_f32(0.01 + (b % 5) as f32 * 0.003),
            qs: core::array::from_fn(|j| if j == b % 32 { -128 } else { byte(32 * b + j) }),
        })
        .collect();
    let a81: Vec<BlockQ8_1> = a8
        .iter()
        .map(|b| {
            let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
            BlockQ8_1 {
                d: b.d,
                s: f16::from_f32(sum as f32 * b.d.to_f32()),
                qs: b.qs,
            }
        })
        .collect();
    let a8k: Vec<BlockQ8K> = (0..m * k / 256)
        .map(|b| {
            let qs: [i8; 256] = core::array::from_fn(|j| {
                if j % 50 == b % 50 {
                    -128
                } else {
                    byte(256 * b + j + 7)
                }
            });
            let bsums = core::array::from_fn(|g| {
                qs[16 * g..16 * g + 16].iter().map(|&q| i16::from(q)).sum()
            });
            BlockQ8K { d: 0.01, qs, bsums }
        })
        .collect();
    let mut r = Rng(5);
    for ty in GEMM_TYPES {
        let act: &[u8] = match ty.vec_dot_type() {
            GgmlType::Q8_0 => bytemuck::cast_slice(&a8),
            GgmlType::Q8_1 => bytemuck::cast_slice(&a81),
            _ => bytemuck::cast_slice(&a8k),
        };
        let w: Vec<u8> = (0..n)
            .flat_map(|_| quantize(scalar(), ty, &(0..k).map(|_| r.next()).collect::<Vec<_>>()))
            .collect();
        let (wrow, arow) = (
            ty.row_size(k).unwrap(),
            ty.vec_dot_type().row_size(k).unwrap(),
        );
        for kern in tables() {
            if ty == GgmlType::Q8_0 && kern.isa() != Isa::Avx512Vnni && kern.isa() != Isa::AvxVnni {
                continue;
            }
            let mut out = vec![0f32; m * n];
            kern.gemm(ty, k, &w, act, &mut out, n);
            for i in 0..m {
                for j in 0..n {
                    let want = (scalar().of(ty).vec_dot)(
                        &w[j * wrow..(j + 1) * wrow],
                        &act[i * arow..(i + 1) * arow],
                    );
                    let got = out[i * n + j];
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{} {ty} gemm [{i},{j}]: {got} vs scalar {want}",
                        kern.isa()
                    );
                }
            }
        }
    }
}

/// The float gemm kernels for odd lengths (tails of the transposed pieces
/// and of the 128-element chunks) and every `m`, `n` in 1..=17.
#[test]
fn float_gemm_matches_vec_dot_for_odd_lengths() {
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        for k in [1, 3, 4, 7, 8, 9, 17, 64, 127, 129, 300] {
            let row = |seed: usize| rows(k, seed as u64)[seed % 7].clone();
            let w: Vec<u8> = (0..17)
                .flat_map(|j| quantize(scalar(), ty, &row(j)))
                .collect();
            let a: Vec<u8> = (0..17)
                .flat_map(|i| quantize(scalar(), ty, &row(100 + i)))
                .collect();
            check_gemm_shapes(ty, k, &w, &a, 17, 17);
        }
    }
}
