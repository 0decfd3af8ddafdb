//! The forward pass's hot operations on SmolLM2-135M shapes, through the
//! runtime's own code paths (the worker pool, the matmul tiling and its
//! fused epilogues, attention over the KV cache):
//!
//! * `gemv/<type>/t<threads>`: one activation row times a weight matrix
//!   (generation), in GB/s of weights read. The 1536 × 576 (576 × 1536 for
//!   K-quants) matrix stays in cache; `gemv-vocab` is the 49152 × 576 Q8_0
//!   vocabulary projection (28 MiB, mostly from DRAM).
//! * `gemm/<type>/t<threads>`: 512 activation rows (a pp512 batch), in
//!   Gelem/s = GOP/s (2·m·n·k per run).
//! * `attention/<kv>/<pp512|tg@256>/t<threads>`: 9 query heads over 3 KV
//!   heads of 64, in Gelem/s = GFLOP/s (4·head_dim per visible query/key
//!   pair and head).
//! * `elementwise/*`: RMSNorm, RoPE, SwiGLU, softmax rows, in GB/s of f32
//!   input.
//! * `pool/step/t<threads>`: one step of 16 empty tasks on the worker pool
//!   (the fixed cost of each parallel step; a generated token takes ~150).
//!
//! This machine's limits for orientation (from the performance issue):
//! ~50 GB/s from cache and ~25 GB/s from DRAM; ~600 GOP/s int8 with
//! AVX-512 VNNI on both cores.
//!
//!     cargo bench -p spinel-runtime --bench ops -- 'gemm/Q4_0'

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use spinel_quant::GgmlType;
use spinel_runtime::model::KvType;
use spinel_runtime::model::bench::{self, AttentionBench, MatmulBench, PoolBench};

const TYPES: [GgmlType; 6] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

/// SmolLM2's FFN shape, with rows of whole 256-blocks for K-quants.
fn shape(ty: GgmlType) -> (usize, usize) {
    if ty.block_size() == 256 {
        (576, 1536)
    } else {
        (1536, 576)
    }
}

fn gemv(c: &mut Criterion) {
    for ty in TYPES {
        let (rows, cols) = shape(ty);
        let mut g = c.benchmark_group(format!("gemv/{ty}"));
        for t in [1, 2] {
            let mut b = MatmulBench::new(ty, rows, cols, 1, t).unwrap();
            g.throughput(Throughput::Bytes(b.weight_bytes() as u64));
            g.bench_function(BenchmarkId::from_parameter(format!("t{t}")), |bch| {
                bch.iter(|| b.run())
            });
        }
        g.finish();
    }
    let mut g = c.benchmark_group("gemv-vocab/Q8_0");
    for t in [1, 2] {
        let mut b = MatmulBench::new(GgmlType::Q8_0, 49_152, 576, 1, t).unwrap();
        g.throughput(Throughput::Bytes(b.weight_bytes() as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("t{t}")), |bch| {
            bch.iter(|| b.run())
        });
    }
    g.finish();
}

fn gemm(c: &mut Criterion) {
    for ty in TYPES {
        let (rows, cols) = shape(ty);
        let mut g = c.benchmark_group(format!("gemm/{ty}"));
        for t in [1, 2] {
            let mut b = MatmulBench::new(ty, rows, cols, 512, t).unwrap();
            g.throughput(Throughput::Elements(b.ops() as u64));
            g.bench_function(BenchmarkId::from_parameter(format!("t{t}")), |bch| {
                bch.iter(|| b.run())
            });
        }
        g.finish();
    }
}

fn attention(c: &mut Criterion) {
    for kv in [KvType::F16, KvType::F32, KvType::Q8_0, KvType::Q4_0] {
        let mut g = c.benchmark_group(format!("attention/{kv:?}"));
        for (name, pos0, n) in [("pp512", 0, 512), ("tg@256", 256, 1)] {
            for t in [1, 2] {
                let mut b = AttentionBench::new(kv, kv, 9, 3, 64, pos0, n, t).unwrap();
                g.throughput(Throughput::Elements(b.flops() as u64));
                g.bench_function(BenchmarkId::from_parameter(format!("{name}/t{t}")), |bch| {
                    bch.iter(|| b.run())
                });
            }
        }
        g.finish();
    }
}

fn elementwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("elementwise");
    let (x, w) = (bench::rows(576, 1), bench::rows(576, 2));
    let mut out = vec![0.0; 576];
    g.throughput(Throughput::Bytes(576 * 4));
    g.bench_function("rmsnorm/576", |b| {
        b.iter(|| bench::rmsnorm(&mut out, black_box(&x), &w))
    });
    let inv_freq: Vec<f32> = (0..32).map(|i| 1e5f32.powf(-(i as f32) / 32.0)).collect();
    let mut q = bench::rows(576, 3);
    let mut cs = vec![0.0; 64];
    g.bench_function("rope/576", |b| {
        b.iter(|| bench::rope(black_box(&mut q), &mut cs, 100, &inv_freq))
    });
    let (gate, up) = (bench::rows(1536, 4), bench::rows(1536, 5));
    let mut h = vec![0.0; 1536];
    g.throughput(Throughput::Bytes(1536 * 4));
    g.bench_function("swiglu/1536", |b| {
        b.iter(|| bench::swiglu(&mut h, black_box(&gate), &up))
    });
    let scores = bench::rows(256, 6);
    let mut row = scores.clone();
    g.throughput(Throughput::Bytes(256 * 4));
    g.bench_function("softmax/256", |b| {
        b.iter(|| {
            row.copy_from_slice(&scores);
            bench::softmax_row(black_box(&mut row))
        })
    });
    g.finish();
}

fn pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool/step");
    for t in [1, 2] {
        let mut p = PoolBench::new(t, 16).unwrap();
        g.bench_function(BenchmarkId::from_parameter(format!("t{t}")), |b| {
            b.iter(|| p.step())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1))
        .sample_size(20);
    targets = gemv, gemm, attention, elementwise, pool
}
criterion_main!(benches);
