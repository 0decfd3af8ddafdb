//! The NEON one-row kernels (`gemv.rs`) at every level this CPU (or qemu)
//! has, against the scalar table's `vec_dot`: several `n` (every remainder
//! of the four-row passes) and `k` (1, 3 and 17 blocks), quantized rows and
//! raw blocks with every byte value (−128 included), nothing written past
//! the `n` outputs, and every row's bits the same whichever rows share the
//! call. Bound and helpers as in `gemm_tests.rs`.

use super::gemm_tests::{Rng, dequantize, quantize, scalar, tables, tol};
use crate::GgmlType;
use alloc::vec;
use alloc::vec::Vec;
use half::f16;

/// The types with a NEON one-row kernel at every level.
const GEMV_TYPES: [GgmlType; 6] = [
    GgmlType::Q4_0,
    GgmlType::Q8_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::IQ4NL,
];

const NS: [usize; 6] = [1, 3, 4, 5, 9, 17];

/// Every level's one-row kernel on the first `n` rows of `w` (each `n` in
/// [`NS`]) and on sub-ranges of them, against the scalar `vec_dot`.
fn check(ty: GgmlType, k: usize, w: &[u8], a: &[u8]) {
    let adt = ty.vec_dot_type();
    let wrow = ty.row_size(k).unwrap();
    let nn = w.len() / wrow;
    let wd: Vec<Vec<f32>> = w.chunks(wrow).map(|q| dequantize(ty, q, k)).collect();
    let ad = dequantize(adt, a, k);
    let dot = scalar().of(ty).vec_dot;
    let want: Vec<f32> = w.chunks(wrow).map(|r| dot(r, a)).collect();
    for kern in tables() {
        assert!(kern.specialised(ty).gemv, "{} {ty}: no gemv", kern.isa());
        let g = kern.of(ty).gemv.unwrap();
        let mut full = vec![f32::NAN; nn + 3];
        g(k, w, a, &mut full);
        assert!(full[nn..].iter().all(|v| v.is_nan()), "wrote past n");
        for j in 0..nn {
            let (got, want) = (full[j], want[j]);
            assert!(
                got == want
                    || (got.is_nan() && want.is_nan())
                    || (got - want).abs() <= tol(ty, &wd[j], &ad, want),
                "{} {ty} gemv k={k} row {j}: {got} vs scalar {want}",
                kern.isa()
            );
        }
        for n in NS.into_iter().filter(|&n| n <= nn) {
            for j0 in [0, 1, 2, 3, nn - n] {
                if j0 + n > nn {
                    continue;
                }
                let mut out = vec![f32::NAN; n + 3];
                g(k, &w[j0 * wrow..(j0 + n) * wrow], a, &mut out);
                assert!(
                    out[n..].iter().all(|v| v.is_nan()),
                    "{} {ty} n={n}: wrote past n",
                    kern.isa()
                );
                for j in 0..n {
                    let (got, f) = (out[j], full[j0 + j]);
                    assert!(
                        got.to_bits() == f.to_bits() || (got.is_nan() && f.is_nan()),
                        "{} {ty} k={k} row {} depends on the split ({j0}..+{n})",
                        kern.isa(),
                        j0 + j
                    );
                }
                // Through the table's entry point for one activation row.
                let mut viag = vec![f32::NAN; n];
                kern.gemm(ty, k, &w[j0 * wrow..(j0 + n) * wrow], a, &mut viag, n);
                assert!(
                    viag.iter()
                        .zip(&out)
                        .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
                );
            }
        }
    }
}

/// Quantized rows of 1, 3 and 17 blocks.
#[test]
fn gemv_matches_scalar() {
    for ty in GEMV_TYPES {
        for nb in [1, 3, 17] {
            let k = nb * 32;
            let mut r = Rng(nb as u64 + 5);
            let w: Vec<u8> = (0..17)
                .flat_map(|j| {
                    let s = if j % 5 == 2 { 1e-6 } else { 1.0 + j as f32 };
                    quantize(ty, &(0..k).map(|_| r.f32() * s).collect::<Vec<_>>())
                })
                .collect();
            let x: Vec<f32> = (0..k).map(|_| r.f32() * 3.0).collect();
            check(ty, k, &w, &quantize(ty.vec_dot_type(), &x));
        }
    }
}

/// Raw blocks, every byte value (−128 included) in weights and
/// activations, with finite scales: the integer block sums are exact.
#[test]
fn gemv_is_exact_on_any_byte() {
    let mut r = Rng(91);
    let mut raw = |len: usize, bs: usize, scales: &[usize]| -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|_| r.u64() as u8).collect();
        for blk in 0..len / bs {
            for &o in scales {
                let d = f16::from_f32((r.f32() + 1.5) * 0.01);
                v[blk * bs + o..blk * bs + o + 2].copy_from_slice(&d.to_le_bytes());
            }
        }
        v
    };
    for ty in GEMV_TYPES {
        for nb in [1, 3, 17] {
            let k = nb * 32;
            let bs = ty.row_size(32).unwrap();
            let ws: &[usize] = match ty {
                GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
                _ => &[0],
            };
            let w = raw(17 * nb * bs, bs, ws);
            let adt = ty.vec_dot_type();
            let abs = adt.row_size(32).unwrap();
            let a = if adt == GgmlType::Q8_1 {
                raw(nb * abs, abs, &[0, 2])
            } else {
                raw(nb * abs, abs, &[0])
            };
            check(ty, k, &w, &a);
        }
    }
}
