//! Every kernel of every ISA this CPU supports, against the scalar reference.
//!
//! The tables are complete (an ISA inherits what it does not specialise), so
//! this runs each ISA's `vec_dot`, `from_float` and `to_float` for every type on
//! random rows (proptest) and on edge-case rows, with explicit tolerances:
//! - `to_float`: equal within 1 ulp-ish (a fused multiply-add may round once less);
//! - `from_float`: identical bytes, except the activation quantizers
//!   (Q8_0, Q8_1, Q8_K) where `d` is identical and each q within ±1 (rounding
//!   ties), with the block sums consistent with the block's own q;
//! - `vec_dot`: integer sums are exact, so only the float accumulation order
//!   differs: |simd − scalar| ≤ 1e-5 · Σ|wᵢ·aᵢ| plus, for block formats, the
//!   size of the per-block scale and min/offset terms that may cancel.

use proptest::prelude::*;
use spinel_quant::blocks::{BlockQ8_0, BlockQ8_1, BlockQ8K};
use spinel_quant::formats::iq_grid;
use spinel_quant::{GgmlType, Isa, Kernels, QK_K};

fn scalar() -> &'static Kernels {
    Kernels::for_isa(Isa::Scalar).unwrap()
}

fn others() -> Vec<&'static Kernels> {
    Kernels::all_supported()
        .filter(|k| k.isa() != Isa::Scalar)
        .collect()
}

/// `x` quantized by `k`'s `from_float`; the types ggml only quantizes with
/// an importance matrix get uneven importance weights instead (their
/// `from_float` refuses).
fn quantize(k: &Kernels, ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_size(x.len()).unwrap()];
    if iq_grid::requires_imatrix(ty) {
        let w: Vec<f32> = (0..x.len()).map(|i| 0.5 + (i % 7) as f32).collect();
        iq_grid::quantize_weighted(ty, x, &mut q, Some(&w)).unwrap();
        return q;
    }
    (k.of(ty).from_float)(x, &mut q);
    q
}

fn dequantize(k: &Kernels, ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    (k.of(ty).to_float)(q, &mut y);
    y
}

fn check_to_float(k: &Kernels, ty: GgmlType, q: &[u8], n: usize) -> Result<(), String> {
    let want = dequantize(scalar(), ty, q, n);
    let got = dequantize(k, ty, q, n);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let ok =
            g.to_bits() == w.to_bits() || (g - w).abs() <= 2.0 * f32::EPSILON * w.abs().max(1e-30);
        if !ok {
            return Err(format!(
                "{} {ty} to_float[{i}]: {g:e} vs scalar {w:e}",
                k.isa()
            ));
        }
    }
    Ok(())
}

fn check_from_float(k: &Kernels, ty: GgmlType, x: &[f32]) -> Result<(), String> {
    if iq_grid::requires_imatrix(ty) {
        // No `from_float` to compare: these are quantized through
        // `quantize_weighted` only, which is the same code on every ISA.
        return Ok(());
    }
    let want = quantize(scalar(), ty, x);
    let got = quantize(k, ty, x);
    if got == want {
        return Ok(());
    }
    let isa = k.isa();
    let close_q = |g: &[i8], w: &[i8]| {
        g.iter()
            .zip(w)
            .all(|(a, b)| (*a as i32 - *b as i32).abs() <= 1)
    };
    match ty {
        GgmlType::Q8_0 => {
            let (g, w): (&[BlockQ8_0], &[BlockQ8_0]) =
                (bytemuck::cast_slice(&got), bytemuck::cast_slice(&want));
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                if g.d.to_bits() != w.d.to_bits() || !close_q(&g.qs, &w.qs) {
                    return Err(format!("{isa} Q8_0 block {i}: {g:?} vs scalar {w:?}"));
                }
            }
        }
        GgmlType::Q8_1 => {
            let (g, w): (&[BlockQ8_1], &[BlockQ8_1]) =
                (bytemuck::cast_slice(&got), bytemuck::cast_slice(&want));
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                // `s` is d·Σq with the unrounded f32 d = amax/127 of the block.
                let amax = x[i * 32..(i + 1) * 32]
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()));
                let sum: i32 = g.qs.iter().map(|&q| q as i32).sum();
                let s = spinel_quant::f16::from_f32(sum as f32 * (amax / 127.0));
                if g.d.to_bits() != w.d.to_bits()
                    || !close_q(&g.qs, &w.qs)
                    || g.s.to_bits() != s.to_bits()
                {
                    return Err(format!("{isa} Q8_1 block {i}: {g:?} vs scalar {w:?}"));
                }
            }
        }
        GgmlType::Q8K => {
            let (g, w): (&[BlockQ8K], &[BlockQ8K]) =
                (bytemuck::cast_slice(&got), bytemuck::cast_slice(&want));
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                let sums_ok = g
                    .bsums
                    .iter()
                    .zip(g.qs.chunks(16))
                    .all(|(&s, qs)| s as i32 == qs.iter().map(|&q| q as i32).sum::<i32>());
                if g.d.to_bits() != w.d.to_bits() || !close_q(&g.qs, &w.qs) || !sums_ok {
                    return Err(format!(
                        "{isa} Q8_K block {i}: d {} vs {}, sums ok {sums_ok}",
                        g.d, w.d
                    ));
                }
            }
        }
        _ => return Err(format!("{isa} {ty} from_float differs from scalar")),
    }
    Ok(())
}

fn check_vec_dot(k: &Kernels, ty: GgmlType, w: &[f32], a: &[f32]) -> Result<(), String> {
    let adt = ty.vec_dot_type();
    let wq = quantize(scalar(), ty, w);
    let aq = quantize(scalar(), adt, a);
    let want = (scalar().of(ty).vec_dot)(&wq, &aq) as f64;
    let got = (k.of(ty).vec_dot)(&wq, &aq) as f64;
    let wd = dequantize(scalar(), ty, &wq, w.len());
    let ad = dequantize(scalar(), adt, &aq, a.len());
    // Formats with a min or an offset compute d·Σq·a − m·Σa per block: two
    // terms of up to (block max |w|)·Σ|a| that may cancel, so the float error
    // of either side scales with that, not with Σ|w·a|.
    let bs = ty.block_size();
    let mag: f64 = wd
        .chunks(bs)
        .zip(ad.chunks(bs))
        .map(|(wb, ab)| {
            let wmax = wb.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
            let asum: f64 = ab.iter().map(|&v| (v as f64).abs()).sum();
            let direct: f64 = wb
                .iter()
                .zip(ab)
                .map(|(&p, &q)| (p as f64 * q as f64).abs())
                .sum();
            direct + if bs > 1 { 2.0 * wmax * asum } else { 0.0 }
        })
        .sum();
    let tol = 1e-5 * mag + 1e-6 * want.abs() + f32::MIN_POSITIVE as f64;
    // Rows near the f16 limit overflow Q8_1's `s` to infinity; then both sides
    // must be non-finite in the same way.
    let same_nonfinite =
        !want.is_finite() && (got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
    if same_nonfinite || (got - want).abs() <= tol {
        Ok(())
    } else {
        Err(format!(
            "{} {ty} vec_dot: {got} vs scalar {want} (tol {tol:e})",
            k.isa()
        ))
    }
}

fn check_all(w: &[f32], a: &[f32]) -> Result<(), String> {
    for k in others() {
        for ty in GgmlType::ALL {
            check_from_float(k, ty, w)?;
            let q = quantize(scalar(), ty, w);
            check_to_float(k, ty, &q, w.len())?;
            check_vec_dot(k, ty, w, a)?;
        }
    }
    Ok(())
}

/// Rows of `n_blocks` super-blocks with a magnitude drawn over many decades.
fn row(n_blocks: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f32>> {
    (n_blocks, -8i32..5).prop_flat_map(|(nb, exp)| {
        let scale = 10f32.powi(exp);
        prop::collection::vec(-1.0f32..1.0, nb * QK_K)
            .prop_map(move |v| v.into_iter().map(|x| x * scale).collect::<Vec<_>>())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_isa_matches_scalar_on_random_rows((w, a) in row(1..5).prop_flat_map(|w| {
        let n = w.len() / QK_K;
        (Just(w), row(n..n + 1))
    })) {
        check_all(&w, &a).map_err(TestCaseError::fail)?;
    }
}

fn edge_rows(n: usize) -> Vec<(&'static str, Vec<f32>)> {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let gauss: Vec<f32> = (0..n).map(|_| next()).collect();
    let mut outlier = gauss.iter().map(|x| x * 0.02).collect::<Vec<_>>();
    outlier[37] = 1000.0;
    vec![
        ("zeros", vec![0.0; n]),
        ("constant", vec![0.75; n]),
        ("negative constant", vec![-3.0; n]),
        ("near f16 max", gauss.iter().map(|x| x * 65504.0).collect()),
        ("tiny", gauss.iter().map(|x| x * 1e-8).collect()),
        ("outlier", outlier),
        ("ramp", (0..n).map(|i| i as f32 - n as f32 / 2.0).collect()),
        (
            "halves",
            (0..n).map(|i| (i % 33) as f32 * 0.5 - 8.0).collect(),
        ),
        ("gauss", gauss),
    ]
}

#[test]
fn every_isa_matches_scalar_on_edge_rows() {
    let n = 3 * QK_K;
    let rows = edge_rows(n);
    for (wname, w) in &rows {
        for (aname, a) in &rows {
            if let Err(e) = check_all(w, a) {
                panic!("weights {wname:?} × activations {aname:?}: {e}");
            }
        }
    }
}

#[test]
fn detection_is_consistent() {
    let best = Isa::detect();
    assert!(best.is_supported());
    let k = Kernels::for_isa(best).unwrap();
    assert_eq!(k.isa(), best);
    assert!(Kernels::all_supported().any(|k| k.isa() == Isa::Scalar));
    for isa in Isa::ALL {
        assert_eq!(Kernels::for_isa(isa).is_some(), isa.is_supported(), "{isa}");
        assert_eq!(Isa::from_name(isa.name()), Some(isa));
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert!(Isa::Avx2.is_supported());
    }
    #[cfg(target_arch = "aarch64")]
    assert!(Isa::Neon.is_supported());
    // Without an override, the process-wide table is the best one.
    if std::env::var_os("SPINEL_ISA").is_none() {
        assert_eq!(Kernels::get().isa(), best);
    } else {
        assert_eq!(Some(Kernels::get().isa()), Isa::from_env().unwrap());
    }
}

/// The error bound of a dot product of two quantized rows computed in f32
/// in any order: `1e-5 · mag`, where `mag` is, per block, `Σ|wᵢ·aᵢ|` plus
/// (for block formats) `2 · max|w| · Σ|a|`, the size of the scale and
/// min/offset terms that may cancel (as in `check_vec_dot`).
fn dot_tolerance(ty: GgmlType, wd: &[f32], ad: &[f32], want: f32) -> f32 {
    let bs = ty.block_size();
    let mag: f64 = wd
        .chunks(bs)
        .zip(ad.chunks(bs))
        .map(|(wb, ab)| {
            let wmax = wb.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
            let asum: f64 = ab.iter().map(|&v| (v as f64).abs()).sum();
            let direct: f64 = wb
                .iter()
                .zip(ab)
                .map(|(&p, &q)| (p as f64 * q as f64).abs())
                .sum();
            direct + if bs > 1 { 2.0 * wmax * asum } else { 0.0 }
        })
        .sum();
    (1e-5 * mag + 1e-6 * want.abs() as f64 + f32::MIN_POSITIVE as f64) as f32
}

/// Checks `Kernels::gemm` of every supported table against one `vec_dot` per
/// pair of the same table, within [`dot_tolerance`], with an output stride
/// wider than `n` whose extra columns must stay untouched.
fn check_gemm(ty: GgmlType, k: usize, m: usize, n: usize, row: &dyn Fn(usize) -> Vec<f32>) {
    let adt = ty.vec_dot_type();
    let wf: Vec<Vec<f32>> = (0..n).map(row).collect();
    let af: Vec<Vec<f32>> = (0..m).map(|i| row(1000 + i)).collect();
    let w: Vec<u8> = wf.iter().flat_map(|r| quantize(scalar(), ty, r)).collect();
    let a: Vec<u8> = af.iter().flat_map(|r| quantize(scalar(), adt, r)).collect();
    let (wrow, arow) = (ty.row_size(k).unwrap(), adt.row_size(k).unwrap());
    let wd: Vec<Vec<f32>> = w
        .chunks(wrow)
        .map(|q| dequantize(scalar(), ty, q, k))
        .collect();
    let ad: Vec<Vec<f32>> = a
        .chunks(arow)
        .map(|q| dequantize(scalar(), adt, q, k))
        .collect();
    let ldo = n + 3;
    for kern in Kernels::all_supported() {
        let mut out = vec![f32::NAN; m * ldo];
        kern.gemm(ty, k, &w, &a, &mut out, ldo);
        for i in 0..m {
            for j in 0..n {
                let want = (kern.of(ty).vec_dot)(
                    &w[j * wrow..(j + 1) * wrow],
                    &a[i * arow..(i + 1) * arow],
                );
                let got = out[i * ldo + j];
                let tol = dot_tolerance(ty, &wd[j], &ad[i], want);
                assert!(
                    got == want || (got - want).abs() <= tol || (got.is_nan() && want.is_nan()),
                    "{} {ty} gemm k={k} m={m} n={n} [{i},{j}]: {got} vs vec_dot {want} (tol {tol:e})",
                    kern.isa()
                );
            }
            assert!(
                out[i * ldo + n..(i + 1) * ldo].iter().all(|v| v.is_nan()),
                "{} {ty} gemm wrote past n",
                kern.isa()
            );
        }
    }
}

/// `Kernels::gemm` (register-blocked where a table has it) equals one
/// `vec_dot` per (activation row, weight row) pair, for every ISA and type,
/// over awkward tile shapes, several chunks of `k`, more activation rows
/// than one pass of the blocked kernels (128), and an output stride wider
/// than the row count.
/// Row `seed` of `k` values: `gauss` cycled from a start that depends on
/// the seed, scaled by `1 + 0.1·seed`.
fn gauss_row(gauss: &[f32], k: usize, seed: usize) -> Vec<f32> {
    gauss
        .iter()
        .cycle()
        .skip(seed * 37)
        .take(k)
        .map(|v| v * (1.0 + seed as f32 * 0.1))
        .collect()
}

#[test]
fn gemm_matches_vec_dot_on_every_isa() {
    let rows = edge_rows(3 * QK_K);
    let gauss = &rows.iter().find(|(n, _)| *n == "gauss").unwrap().1;
    for k in [QK_K, 3 * QK_K] {
        let row = |seed: usize| -> Vec<f32> { gauss_row(gauss, k, seed) };
        for ty in GgmlType::ALL {
            for (m, n) in [
                (1, 1),
                (1, 7),
                (3, 5),
                (4, 8),
                (5, 13),
                (8, 4),
                (16, 3),
                (17, 17),
            ] {
                check_gemm(ty, k, m, n, &row);
            }
        }
    }
    let k = QK_K;
    let row = |seed: usize| -> Vec<f32> { gauss[seed % 50..seed % 50 + k].to_vec() };
    for ty in GgmlType::ALL {
        check_gemm(ty, k, 130, 19, &row);
    }
}

/// Edge rows (zeros, outliers, near the f16 limit, tiny, constants) as
/// weights and activations of one gemm.
#[test]
fn gemm_matches_vec_dot_on_edge_rows() {
    let k = 2 * QK_K;
    let rows = edge_rows(k);
    let row = |i: usize| rows[i % rows.len()].1.clone();
    for ty in GgmlType::ALL {
        check_gemm(ty, k, rows.len() + 2, rows.len() + 5, &row);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Random shapes and values: `m`, `n` in 1..24, 1..4 super-blocks.
    #[test]
    fn gemm_matches_vec_dot_on_random_shapes(
        m in 1usize..24,
        n in 1usize..24,
        nb in 1usize..4,
        exp in -6i32..4,
        seed in any::<u64>(),
        ty in prop::sample::select(GgmlType::ALL.to_vec()),
    ) {
        let k = nb * QK_K;
        let scale = 10f32.powi(exp);
        let row = |i: usize| -> Vec<f32> {
            let mut s = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            (0..k)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
                })
                .collect()
        };
        check_gemm(ty, k, m, n, &row);
    }
}

/// One-row products (`Kernels::gemm` with m = 1, which takes a table's
/// one-row `gemv` kernel where it has one) against the scalar `vec_dot`
/// within [`dot_tolerance`], for every ISA and type: row lengths with a
/// partial last quad of blocks (1, 2, 3, 18 blocks), longer than one pass of
/// the kernels' activation layout (4096 elements), row counts around the
/// four rows a kernel runs side by side, and edge rows. Any split of the
/// rows between calls (between threads, in the runtime) gives the same bits
/// as one call over all of them.
#[test]
fn one_row_products_match_scalar_and_do_not_depend_on_the_split() {
    let edge = edge_rows(3 * QK_K);
    let gauss = &edge.iter().find(|(n, _)| *n == "gauss").unwrap().1;
    // (k, whether the rows are the edge rows)
    let cases = [
        (32, false),
        (64, false),
        (96, false),
        (576, false),
        (QK_K, false),
        (1536, false),
        (4096 + 576, false),
        // Edge rows as weights, and each as the activation (seed 1000 + i).
        (3 * QK_K, true),
    ];
    for (k, edges) in cases {
        let row = |seed: usize| -> Vec<f32> {
            if edges {
                return edge[seed % edge.len()].1.clone();
            }
            gauss_row(gauss, k, seed)
        };
        for ty in GgmlType::ALL {
            if k % ty.block_size() != 0 {
                continue;
            }
            let adt = ty.vec_dot_type();
            let n = 11;
            let (wrow, arow) = (ty.row_size(k).unwrap(), adt.row_size(k).unwrap());
            let wf: Vec<Vec<f32>> = (0..n).map(row).collect();
            let w: Vec<u8> = wf.iter().flat_map(|r| quantize(scalar(), ty, r)).collect();
            let activations = if edges { edge.len() } else { 1 };
            for ai in 0..activations {
                let a = quantize(scalar(), adt, &row(1000 + ai));
                let ad = dequantize(scalar(), adt, &a, k);
                for kern in Kernels::all_supported() {
                    let mut out = vec![f32::NAN; n];
                    kern.gemm(ty, k, &w, &a, &mut out, n);
                    for (j, &got) in out.iter().enumerate() {
                        let wq = &w[j * wrow..(j + 1) * wrow];
                        let want = (scalar().of(ty).vec_dot)(wq, &a);
                        let wd = dequantize(scalar(), ty, wq, k);
                        let tol = dot_tolerance(ty, &wd, &ad, want);
                        assert!(
                            got == want
                                || (got - want).abs() <= tol
                                || (got.is_nan() && want.is_nan())
                                || (!want.is_finite() && !got.is_finite()),
                            "{} {ty} one row k={k} act {ai} row {j}: {got} vs scalar {want} (tol {tol:e})",
                            kern.isa()
                        );
                    }
                    for (lo, hi) in [(0, 1), (1, 5), (3, 11), (5, 6), (2, 10), (4, 8)] {
                        let mut part = vec![f32::NAN; hi - lo];
                        let ws = &w[lo * wrow..hi * wrow];
                        kern.gemm(ty, k, ws, &a[..arow], &mut part, hi - lo);
                        let same = part
                            .iter()
                            .zip(&out[lo..hi])
                            .all(|(p, o)| p.to_bits() == o.to_bits());
                        assert!(
                            same,
                            "{} {ty} k={k}: rows {lo}..{hi} alone {part:?} vs in the whole {:?}",
                            kern.isa(),
                            &out[lo..hi]
                        );
                    }
                }
            }
        }
    }
}

/// `gemv_rows` (speculative decoding's verification): every activation row
/// gets the bits of the one-row product of that row alone, however many
/// rows share the call, on every ISA and type.
#[test]
fn several_rows_give_each_row_its_one_row_bits() {
    let edge = edge_rows(3 * QK_K);
    let gauss = &edge.iter().find(|(n, _)| *n == "gauss").unwrap().1;
    for k in [64, 576, QK_K, 4096 + 576] {
        for ty in GgmlType::ALL {
            if k % ty.block_size() != 0 {
                continue;
            }
            let adt = ty.vec_dot_type();
            let (n, ldo) = (11, 14);
            let arow = adt.row_size(k).unwrap();
            let w: Vec<u8> = (0..n)
                .flat_map(|j| quantize(scalar(), ty, &gauss_row(gauss, k, j)))
                .collect();
            let a: Vec<u8> = (0..9)
                .flat_map(|i| quantize(scalar(), adt, &gauss_row(gauss, k, 1000 + i)))
                .collect();
            for kern in Kernels::all_supported() {
                let alone: Vec<Vec<f32>> = a
                    .chunks_exact(arow)
                    .map(|ar| {
                        let mut o = vec![f32::NAN; n];
                        kern.gemm(ty, k, &w, ar, &mut o, n);
                        o
                    })
                    .collect();
                for m in [1, 2, 3, 4, 5, 8, 9] {
                    let mut out = vec![f32::NAN; m * ldo];
                    kern.gemv_rows(ty, k, &w, &a[..m * arow], &mut out, ldo);
                    for (i, want) in alone[..m].iter().enumerate() {
                        let got = &out[i * ldo..i * ldo + n];
                        assert!(
                            got.iter()
                                .zip(want)
                                .all(|(g, w)| g.to_bits() == w.to_bits()),
                            "{} {ty} k={k}: row {i} of {m}: {got:?} vs alone {want:?}",
                            kern.isa()
                        );
                        assert!(
                            out[i * ldo + n..(i + 1) * ldo].iter().all(|v| v.is_nan()),
                            "{} {ty}: wrote past the row's {n} outputs",
                            kern.isa()
                        );
                    }
                }
            }
        }
    }
}

/// The grid i-quants' SIMD dot products keep the scalar code's exact
/// integer sums and its float combination: equal bits on every ISA.
#[test]
fn grid_iquant_dots_are_bit_identical_on_every_isa() {
    let rows = edge_rows(4 * QK_K);
    let (_, act) = rows.last().expect("the gauss row");
    for ty in [
        GgmlType::IQ3XXS,
        GgmlType::IQ3S,
        GgmlType::IQ2XXS,
        GgmlType::IQ2XS,
        GgmlType::IQ2S,
        GgmlType::IQ1S,
        GgmlType::IQ1M,
    ] {
        let aq = quantize(scalar(), GgmlType::Q8K, act);
        for (name, w) in &rows {
            let wq = quantize(scalar(), ty, w);
            let want = (scalar().of(ty).vec_dot)(&wq, &aq);
            for k in others() {
                let got = (k.of(ty).vec_dot)(&wq, &aq);
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{} {ty} {name}: {got} vs {want}",
                    k.isa()
                );
            }
        }
    }
}

/// The K-quant dot products follow the canonical per-block rule of
/// `kernels`: exact integer block sums, block values and the row's sum in
/// f64, one rounding to f32. Summation order then moves a result only when
/// the f64 sum sits within ~2⁻⁵³ of an f32 rounding boundary, so every
/// ISA's one-row products give the scalar twin's bits on these rows. (A
/// last-bit difference would not stay small in a model: the next product
/// quantizes its input to 8 bits.) The x86 register-blocked K-quant gemm
/// kernels still scale per group in f32 (see `kernels`): not checked here.
#[test]
fn k_quant_products_are_bit_identical_on_every_isa() {
    let rows = edge_rows(8 * QK_K);
    let gauss = &rows.iter().find(|(n, _)| *n == "gauss").unwrap().1;
    for ty in [
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        let adt = ty.vec_dot_type();
        for k in [QK_K, 3 * QK_K, 8 * QK_K] {
            let (m, n) = (9, 11);
            let w: Vec<u8> = (0..n)
                .flat_map(|j| quantize(scalar(), ty, &gauss_row(gauss, k, j)))
                .collect();
            let a: Vec<u8> = (0..m)
                .flat_map(|i| quantize(scalar(), adt, &gauss_row(gauss, k, 100 + i)))
                .collect();
            let (wrow, arow) = (ty.row_size(k).unwrap(), adt.row_size(k).unwrap());
            let want: Vec<f32> = (0..m * n)
                .map(|o| {
                    let (i, j) = (o / n, o % n);
                    (scalar().of(ty).vec_dot)(
                        &w[j * wrow..(j + 1) * wrow],
                        &a[i * arow..(i + 1) * arow],
                    )
                })
                .collect();
            for kern in Kernels::all_supported() {
                let mut one = vec![0f32; m * n];
                for i in 0..m {
                    kern.gemm(
                        ty,
                        k,
                        &w,
                        &a[i * arow..(i + 1) * arow],
                        &mut one[i * n..],
                        n,
                    );
                }
                let mut dots = vec![0f32; m * n];
                for (o, d) in dots.iter_mut().enumerate() {
                    let (i, j) = (o / n, o % n);
                    *d = (kern.of(ty).vec_dot)(
                        &w[j * wrow..(j + 1) * wrow],
                        &a[i * arow..(i + 1) * arow],
                    );
                }
                for (what, out) in [("vec_dot", &dots), ("one-row gemm", &one)] {
                    for (o, (g, w)) in out.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "{} {ty} k={k} {what} [{}, {}]: {g} vs scalar {w}",
                            kern.isa(),
                            o / n,
                            o % n
                        );
                    }
                }
            }
        }
    }
}
