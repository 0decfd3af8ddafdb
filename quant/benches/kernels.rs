//! Throughput of every dot-product kernel and activation quantizer, per ISA.
//!
//! `cargo bench -p spinel-quant` — each benchmark reports GB/s of weight data
//! (for quantizers: of f32 input). The weight matrix is 64 rows × 4096 (a few
//! hundred KiB at most, cache-resident), so this measures the kernel, not DRAM.
//! Filter with e.g. `cargo bench -p spinel-quant -- 'vec_dot/Q4_0'`.
//!
//! The `gemm` groups multiply m = 64 activation rows by a weight matrix of a
//! SmolLM2-135M shape (1536 × 576 for the 32-wide formats, 576 × 1536 for
//! the K-quants, whose rows are whole super-blocks only there; F16 with the
//! shape of attention scores: 256 keys × 64-wide heads) through
//! `Kernels::gemm`, beside the same product as one `vec_dot` per pair (the
//! fallback) on the same ISA. Throughput is GB/s of weight data per call; the
//! line printed before each group converts it to integer GOP/s (2·m·n·k per
//! call).
//!
//! The `gemv` groups multiply one activation row by the weights of a
//! SmolLM2-135M shape (k = 576: 1536 rows for the cache-resident case, and
//! as many rows as make 96 MiB for the DRAM-bound one; the machine's limits
//! are ~25 GB/s from DRAM and ~50 GB/s from cache on one core) through
//! `Kernels::gemm` with m = 1 (the one-row `gemv` kernel where a table has
//! one) beside the same rows as one `vec_dot` each. Throughput is GB/s of
//! weight data.
//!
//! The `fwht` groups time the fast Walsh–Hadamard transform (`Hadamard`) of
//! the sizes rotations use: SmolLM2's 64 (head), 576 (= 36·16, residual) and
//! 1536 (= 12·128, SwiGLU output), Llama 3's 4096 and 14336 (= 28·512).
//! Throughput is GB/s of f32 data transformed (read once, written once).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use spinel_quant::{GgmlType, Hadamard, Isa, Kernels};
use std::hint::black_box;

const N: usize = 4096;
const ROWS: usize = 64;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

fn vec_dot(c: &mut Criterion) {
    let tables: Vec<&Kernels> = Kernels::all_supported().collect();
    for ty in GgmlType::ALL {
        if ty == GgmlType::Q8_1 || ty == GgmlType::Q8K {
            continue; // activation formats; their products are not weight kernels
        }
        let scalar = tables[0];
        let adt = ty.vec_dot_type();
        let row_bytes = ty.row_size(N).unwrap();
        let mut w = vec![0u8; row_bytes * ROWS];
        for (r, out) in w.chunks_exact_mut(row_bytes).enumerate() {
            (scalar.of(ty).from_float)(&data(N, r as u64 + 7), out);
        }
        let mut a = vec![0u8; adt.row_size(N).unwrap()];
        (scalar.of(adt).from_float)(&data(N, 99), &mut a);
        let mut g = c.benchmark_group(format!("vec_dot/{ty}"));
        g.throughput(Throughput::Bytes(w.len() as u64));
        for k in &tables {
            let dot = k.of(ty).vec_dot;
            g.bench_function(BenchmarkId::from_parameter(k.isa()), |b| {
                b.iter(|| {
                    let mut acc = 0.0f32;
                    for row in w.chunks_exact(row_bytes) {
                        acc += dot(black_box(row), black_box(&a));
                    }
                    acc
                })
            });
        }
        g.finish();
    }
}

fn quantize_activations(c: &mut Criterion) {
    let x = data(N * 4, 3);
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8K, GgmlType::F16] {
        let mut g = c.benchmark_group(format!("from_float/{ty}"));
        g.throughput(Throughput::Bytes((x.len() * 4) as u64));
        let mut out = vec![0u8; ty.row_size(x.len()).unwrap()];
        for k in Kernels::all_supported() {
            let q = k.of(ty).from_float;
            g.bench_function(BenchmarkId::from_parameter(k.isa()), |b| {
                b.iter(|| q(black_box(&x), black_box(&mut out)))
            });
        }
        g.finish();
    }
}

/// `(type, k, n)`: the weight shapes of the gemm benchmarks.
const GEMM_SHAPES: [(GgmlType, usize, usize); 9] = [
    (GgmlType::Q4_0, 576, 1536),
    (GgmlType::Q4_1, 576, 1536),
    (GgmlType::Q5_0, 576, 1536),
    (GgmlType::Q5_1, 576, 1536),
    (GgmlType::Q8_0, 576, 1536),
    (GgmlType::Q4K, 1536, 576),
    (GgmlType::Q5K, 1536, 576),
    (GgmlType::Q6K, 1536, 576),
    // Attention scores over an F16 KV cache: 64-wide heads, 256 keys.
    (GgmlType::F16, 64, 256),
];
const GEMM_M: usize = 64;

fn gemm(c: &mut Criterion) {
    let tables: Vec<&Kernels> = Kernels::all_supported().collect();
    let scalar = tables[0];
    for (ty, k, n) in GEMM_SHAPES {
        let m = GEMM_M;
        let adt = ty.vec_dot_type();
        let (wrow, arow) = (ty.row_size(k).unwrap(), adt.row_size(k).unwrap());
        let mut w = vec![0u8; wrow * n];
        for (r, out) in w.chunks_exact_mut(wrow).enumerate() {
            (scalar.of(ty).from_float)(&data(k, r as u64 + 7), out);
        }
        let mut a = vec![0u8; arow * m];
        for (r, out) in a.chunks_exact_mut(arow).enumerate() {
            (scalar.of(adt).from_float)(&data(k, r as u64 + 1000), out);
        }
        let mut out = vec![0f32; m * n];
        let ops = 2.0 * (m * n * k) as f64;
        eprintln!(
            "gemm/{ty}: m={m} n={n} k={k}; 1 GB/s of weights = {:.1} GOP/s",
            ops / w.len() as f64
        );
        let name = format!("gemm/{ty}");
        products(c, &name, &tables[1..], ty, k, &w, &a, &mut out);
    }
}

/// Group `name`, in GB/s of weights: `Kernels::gemm` of each table on the
/// weight rows `w` (type `ty`, `k` columns) and activation rows `a`, beside
/// the plain loop over that table's `vec_dot`.
#[allow(clippy::too_many_arguments)]
fn products(
    c: &mut Criterion,
    name: &str,
    tables: &[&Kernels],
    ty: GgmlType,
    k: usize,
    w: &[u8],
    a: &[u8],
    out: &mut [f32],
) {
    let wrow = ty.row_size(k).unwrap();
    let arow = ty.vec_dot_type().row_size(k).unwrap();
    let n = w.len() / wrow;
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(w.len() as u64));
    for kern in tables {
        g.bench_function(BenchmarkId::from_parameter(kern.isa()), |b| {
            b.iter(|| kern.gemm(ty, k, black_box(w), black_box(a), out, n))
        });
        let dot = kern.of(ty).vec_dot;
        let id = format!("{}/vec_dot-loop", kern.isa());
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                for (ar, o) in a.chunks_exact(arow).zip(out.chunks_exact_mut(n)) {
                    for (oj, wr) in o.iter_mut().zip(w.chunks_exact(wrow)) {
                        *oj = dot(black_box(wr), black_box(ar));
                    }
                }
            })
        });
    }
    g.finish();
}

/// `(type, k, n)`: the one-row shapes; `n = 0` means 96 MiB of rows.
const GEMV_SHAPES: [(GgmlType, usize, usize); 12] = [
    (GgmlType::Q4_0, 576, 1536),
    (GgmlType::Q4_1, 576, 1536),
    (GgmlType::Q5_0, 576, 1536),
    (GgmlType::Q5_1, 576, 1536),
    (GgmlType::Q8_0, 576, 1536),
    (GgmlType::Q4K, 1536, 576),
    (GgmlType::Q6K, 1536, 576),
    (GgmlType::Q4_0, 576, 0),
    (GgmlType::Q4_1, 576, 0),
    (GgmlType::Q5_0, 576, 0),
    (GgmlType::Q8_0, 576, 0),
    (GgmlType::Q4K, 1536, 0),
];

fn gemv(c: &mut Criterion) {
    let tables: Vec<&Kernels> = Kernels::all_supported().collect();
    let scalar = tables[0];
    for (ty, k, n) in GEMV_SHAPES {
        let adt = ty.vec_dot_type();
        let (wrow, arow) = (ty.row_size(k).unwrap(), adt.row_size(k).unwrap());
        let n = if n == 0 { (96 << 20) / wrow } else { n };
        let mut w = vec![0u8; wrow * n];
        let proto: Vec<Vec<u8>> = (0..64)
            .map(|r| {
                let mut q = vec![0u8; wrow];
                (scalar.of(ty).from_float)(&data(k, r as u64 + 7), &mut q);
                q
            })
            .collect();
        for (r, out) in w.chunks_exact_mut(wrow).enumerate() {
            out.copy_from_slice(&proto[r % 64]);
        }
        let mut a = vec![0u8; arow];
        (scalar.of(adt).from_float)(&data(k, 1000), &mut a);
        let mut out = vec![0f32; n];
        let name = format!("gemv/{ty}/{n}x{k}");
        products(c, &name, &tables[1..], ty, k, &w, &a, &mut out);
    }
}

/// Speculative verification's products: 8 activation rows (a draft) times
/// a 64-row weight tile, each row with the one-row kernel's bits:
/// `gemv_rows` against one `gemm` call per row.
fn verify(c: &mut Criterion) {
    let tables: Vec<&Kernels> = Kernels::all_supported().collect();
    let scalar = tables[0];
    let (m, n) = (8, 64);
    for (ty, k) in [
        (GgmlType::Q4_0, 576),
        (GgmlType::Q4_1, 576),
        (GgmlType::Q8_0, 576),
        (GgmlType::Q4_0, 2048),
    ] {
        let adt = ty.vec_dot_type();
        let (wrow, arow) = (ty.row_size(k).unwrap(), adt.row_size(k).unwrap());
        let mut w = vec![0u8; wrow * n];
        for (r, out) in w.chunks_exact_mut(wrow).enumerate() {
            (scalar.of(ty).from_float)(&data(k, r as u64 + 7), out);
        }
        let mut a = vec![0u8; arow * m];
        for (r, out) in a.chunks_exact_mut(arow).enumerate() {
            (scalar.of(adt).from_float)(&data(k, r as u64 + 1000), out);
        }
        let mut out = vec![0f32; m * n];
        let mut g = c.benchmark_group(format!("verify/{ty}/{m}x{n}x{k}"));
        g.throughput(Throughput::Bytes((w.len() * m) as u64));
        for kern in &tables[1..] {
            g.bench_function(BenchmarkId::from_parameter(kern.isa()), |b| {
                b.iter(|| kern.gemv_rows(ty, k, black_box(&w), black_box(&a), &mut out, n))
            });
            let id = format!("{}/per-row", kern.isa());
            g.bench_function(BenchmarkId::from_parameter(id), |b| {
                b.iter(|| {
                    for (ar, o) in a.chunks_exact(arow).zip(out.chunks_exact_mut(n)) {
                        kern.gemm(ty, k, black_box(&w), black_box(ar), o, n);
                    }
                })
            });
        }
        g.finish();
    }
}

fn fwht(c: &mut Criterion) {
    for n in [64usize, 576, 1536, 4096, 14336] {
        let mut x = data(n, 5);
        let mut g = c.benchmark_group(format!("fwht/{n}"));
        g.throughput(Throughput::Bytes((n * 4) as u64));
        for isa in Isa::supported() {
            let Some(h) = Hadamard::with_isa(n, isa) else {
                continue;
            };
            g.bench_function(BenchmarkId::from_parameter(isa), |b| {
                b.iter(|| h.apply(black_box(&mut x)))
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1))
        .sample_size(20);
    targets = vec_dot, quantize_activations, gemm, gemv, verify, fwht
}
criterion_main!(benches);
