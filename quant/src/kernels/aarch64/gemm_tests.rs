//! The NEON gemm kernels (`gemm.rs`) at every level this CPU (or qemu) has,
//! against the scalar table's `vec_dot`: many `m`, `n` and `k` shapes
//! (every tile remainder, partial panels, two chunks of `k`, two passes of
//! activation rows), raw blocks with any byte, nothing written outside the
//! `n` columns of `out`'s rows, and every (i, j) bit-identical whatever
//! other rows share the call. Bound: `1e-5 ·` the size of the terms the
//! float sums may round (as in the x86 tests).

use crate::blocks::*;
use crate::{GgmlType, Isa, Kernels};
use alloc::vec;
use alloc::vec::Vec;
use half::f16;

const LEVELS: [Isa; 3] = [Isa::Neon, Isa::NeonDotprod, Isa::NeonI8mm];

/// The types with a NEON gemm at every level.
const GEMM_TYPES: [GgmlType; 9] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4NL,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

pub(super) fn tables() -> Vec<&'static Kernels> {
    LEVELS.into_iter().filter_map(Kernels::for_isa).collect()
}

pub(super) fn scalar() -> &'static Kernels {
    Kernels::for_isa(Isa::Scalar).unwrap()
}

/// xorshift: deterministic, no dependencies.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    pub(super) fn f32(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Row `seed` of `k` elements, of one of several shapes: uniform, an
/// outlier, tiny, near the f16 range, rounding ties, zeros.
fn row(k: usize, seed: usize) -> Vec<f32> {
    let mut r = Rng(seed as u64 * 0x9e37_79b9 + 1);
    let uni: Vec<f32> = (0..k).map(|_| r.f32()).collect();
    match seed % 6 {
        0 | 1 => uni,
        2 => {
            let mut x: Vec<f32> = uni.iter().map(|v| v * 0.01).collect();
            x[k / 3] = -500.0;
            x
        }
        3 => uni.iter().map(|v| v * 1e-8).collect(),
        4 => (0..k).map(|i| (i % 37) as f32 * 0.5 - 9.0).collect(),
        _ => uni.iter().map(|v| v * 60000.0).collect(),
    }
}

pub(super) fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_size(x.len()).unwrap()];
    (scalar().of(ty).from_float)(x, &mut q);
    q
}

pub(super) fn dequantize(ty: GgmlType, q: &[u8], k: usize) -> Vec<f32> {
    let mut y = vec![0f32; k];
    (scalar().of(ty).to_float)(q, &mut y);
    y
}

/// `1e-5 ·` per block `Σ|w·a| + 2 · max|w| · Σ|a|` (the scale and min
/// terms may cancel), plus a relative and an absolute floor.
pub(super) fn tol(ty: GgmlType, wd: &[f32], ad: &[f32], want: f32) -> f32 {
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

/// Every level's gemm on the first `m` rows of `a` and `n` of `w` for each
/// `m` in `ms` and `n` in `ns`, against the scalar `vec_dot` (within
/// [`tol`]) and against the largest shape's result (bit for bit).
fn check(ty: GgmlType, k: usize, w: &[u8], a: &[u8], ms: &[usize], ns: &[usize]) {
    let adt = ty.vec_dot_type();
    let (wrow, arow) = (ty.row_size(k).unwrap(), adt.row_size(k).unwrap());
    let (mm, nn) = (*ms.iter().max().unwrap(), *ns.iter().max().unwrap());
    let wd: Vec<Vec<f32>> = w.chunks(wrow).map(|q| dequantize(ty, q, k)).collect();
    let ad: Vec<Vec<f32>> = a.chunks(arow).map(|q| dequantize(adt, q, k)).collect();
    let dot = scalar().of(ty).vec_dot;
    let want: Vec<Vec<f32>> = (0..mm)
        .map(|i| {
            (0..nn)
                .map(|j| dot(&w[j * wrow..(j + 1) * wrow], &a[i * arow..(i + 1) * arow]))
                .collect()
        })
        .collect();
    for kern in tables() {
        assert!(kern.specialised(ty).gemm, "{} {ty}: no gemm", kern.isa());
        let mut full = vec![0f32; mm * nn];
        kern.gemm(ty, k, &w[..nn * wrow], &a[..mm * arow], &mut full, nn);
        for &m in ms {
            for &n in ns {
                let ldo = n + 2;
                let mut out = vec![f32::NAN; m * ldo];
                kern.gemm(ty, k, &w[..n * wrow], &a[..m * arow], &mut out, ldo);
                for i in 0..m {
                    for j in 0..n {
                        let (got, want) = (out[i * ldo + j], want[i][j]);
                        assert!(
                            got == want
                                || (got.is_nan() && want.is_nan())
                                || (got - want).abs() <= tol(ty, &wd[j], &ad[i], want),
                            "{} {ty} gemm k={k} m={m} n={n} [{i},{j}]: {got} vs scalar {want}",
                            kern.isa()
                        );
                        // Fewer rows go to `vec_dot`, whose sums are
                        // ordered otherwise.
                        if m >= min_m(ty) {
                            assert!(
                                got.to_bits() == full[i * nn + j].to_bits()
                                    || (got.is_nan() && full[i * nn + j].is_nan()),
                                "{} {ty} k={k} m={m} n={n} [{i},{j}] depends on the split",
                                kern.isa()
                            );
                        }
                    }
                    assert!(
                        out[i * ldo + n..(i + 1) * ldo].iter().all(|v| v.is_nan()),
                        "{} {ty} m={m} n={n}: wrote outside the row",
                        kern.isa()
                    );
                }
            }
        }
    }
}

/// The fewest activation rows the panels are used for.
fn min_m(ty: GgmlType) -> usize {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 8,
        _ => 2,
    }
}

const SHAPES: [usize; 9] = [1, 2, 3, 4, 5, 7, 8, 9, 13];

/// Quantized rows of the edge shapes; one and 17 blocks (17: two chunks of
/// `k`, the second one block longer).
#[test]
fn gemm_matches_scalar_for_every_shape() {
    for ty in GEMM_TYPES {
        for nb in if ty.block_size() == 256 {
            [1, 3]
        } else {
            [1, 17]
        } {
            let k = nb * ty.block_size();
            let w: Vec<u8> = (0..13).flat_map(|j| quantize(ty, &row(k, j))).collect();
            let a: Vec<u8> = (0..13)
                .flat_map(|i| quantize(ty.vec_dot_type(), &row(k, 100 + i)))
                .collect();
            check(ty, k, &w, &a, &SHAPES, &SHAPES);
        }
    }
}

/// The float kernels for odd lengths (tails of the 128-element chunks)
/// and shapes around the eight-row switch to the panels.
#[test]
fn float_gemm_matches_scalar() {
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        for k in [1, 3, 8, 127, 129, 300] {
            let w: Vec<u8> = (0..13).flat_map(|j| quantize(ty, &row(k, j))).collect();
            let a: Vec<u8> = (0..13)
                .flat_map(|i| quantize(ty, &row(k, 100 + i)))
                .collect();
            check(ty, k, &w, &a, &[1, 7, 8, 9, 13], &SHAPES);
        }
    }
}

/// More activation rows than one pass holds (128), and a wide panel edge.
#[test]
fn gemm_spans_passes() {
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1] {
        let k = 2 * ty.block_size();
        let w: Vec<u8> = (0..11).flat_map(|j| quantize(ty, &row(k, j))).collect();
        let a: Vec<u8> = (0..133)
            .flat_map(|i| quantize(ty.vec_dot_type(), &row(k, 7 + i)))
            .collect();
        check(ty, k, &w, &a, &[129, 133], &[3, 11]);
    }
}

/// Raw blocks, every byte value (−128 included) in weights and
/// activations, with finite scales: the integer block sums are exact.
#[test]
fn gemm_is_exact_on_any_byte() {
    let mut r = Rng(77);
    let (m, n) = (9, 11);
    let mut raw = |len: usize, scales: &[usize]| -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|_| r.u64() as u8).collect();
        for blk in 0..len / scales[0] {
            for &o in &scales[1..] {
                let d = f16::from_f32((r.f32() + 1.5) * 0.01);
                v[blk * scales[0] + o..blk * scales[0] + o + 2].copy_from_slice(&d.to_le_bytes());
            }
        }
        v
    };
    let a8 = raw(m * 8 * size_of::<BlockQ8_0>(), &[size_of::<BlockQ8_0>(), 0]);
    let a81 = raw(
        m * 8 * size_of::<BlockQ8_1>(),
        &[size_of::<BlockQ8_1>(), 0, 2],
    );
    // Q8_K: raw quants, `d` finite, block sums of the quants (as the
    // quantizer writes them; the min terms are summed from them).
    let a8k: Vec<BlockQ8K> = bytemuck::cast_slice::<u8, [i8; 256]>(&raw(m * 256, &[256]))
        .iter()
        .map(|&qs| BlockQ8K {
            d: 0.01,
            qs,
            bsums: core::array::from_fn(|g| {
                qs[16 * g..16 * g + 16].iter().map(|&q| i16::from(q)).sum()
            }),
        })
        .collect();
    for ty in GEMM_TYPES {
        let per = ty.block_size();
        let k = if per == 256 { 256 } else { 8 * 32 };
        let bs = ty.row_size(per).unwrap();
        let scales: &[usize] = match ty {
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
            GgmlType::Q6K => &[208],
            _ => &[0],
        };
        let w = raw(n * k / per * bs, &[[bs].as_slice(), scales].concat());
        let a: &[u8] = match ty.vec_dot_type() {
            GgmlType::Q8_1 => &a81,
            GgmlType::Q8K => bytemuck::cast_slice(&a8k),
            _ => &a8,
        };
        check(ty, k, &w, a, &[m], &[n]);
    }
}

/// The ISA tokens exist exactly where detection found their features.
#[test]
fn tokens_follow_detection() {
    use super::gemm::{Neon, NeonDotprod, NeonI8mm};
    assert_eq!(Neon::new().is_some(), Isa::Neon.is_supported());
    assert_eq!(
        NeonDotprod::new().is_some(),
        Isa::NeonDotprod.is_supported()
    );
    assert_eq!(NeonI8mm::new().is_some(), Isa::NeonI8mm.is_supported());
}
