//! Hooks for the runtime's micro-benchmarks (`runtime/benches/ops.rs`): the
//! forward pass's building blocks on synthetic data, run through the same
//! code the model runs (the pool, the matmul tiling, attention over a KV
//! cache). Not a stable API.

use spinel_quant::{GgmlType, Kernels};

use super::attention::{self, Attention};
use super::matmul::{Matmul, Product};
use super::ops::{self, AlignedBuf};
use super::pool::Pool;
use super::state::{KvCache, KvType};
use super::weights::{Lin, Weight};

/// Pseudo-random values in `[-0.5, 0.5)` (xorshift).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// `out = W x` for `n` activation rows through the model's matmul: the
/// activations quantized to the weight's `vec_dot_type`, then the weight
/// rows tiled across `threads` threads (GEMV for `n = 1`, GEMM above).
pub struct MatmulBench {
    pool: Pool,
    mm: Matmul,
    w: Weight,
    bytes: AlignedBuf,
    x: Vec<f32>,
    out: Vec<f32>,
    n: usize,
}

impl MatmulBench {
    /// `None` if `cols` is not a whole number of `ty`'s blocks.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, n: usize, threads: usize) -> Option<Self> {
        let w = Weight::at_start(ty, rows, cols)?;
        let mut bytes = AlignedBuf::zeroed(rows * w.row_bytes);
        let from_float = Kernels::get().of(ty).from_float;
        for (r, row) in bytes.bytes_mut().chunks_exact_mut(w.row_bytes).enumerate() {
            from_float(&data(cols, r as u64), row);
        }
        Some(MatmulBench {
            pool: Pool::new(threads).ok()?,
            mm: Matmul::new(threads, n, w.act_row_bytes),
            w,
            bytes,
            x: data(n * cols, 12345),
            out: vec![0.0; n * rows],
            n,
        })
    }

    /// Bytes of weights read per run.
    pub fn weight_bytes(&self) -> usize {
        self.bytes.bytes().len()
    }

    /// Multiply-adds per run, times two.
    pub fn ops(&self) -> f64 {
        2.0 * (self.n * self.w.rows * self.w.cols) as f64
    }

    /// Quantizes the activations and computes the product.
    pub fn run(&mut self) {
        let (n, cols) = (self.n, self.w.cols);
        self.mm
            .prepare(&mut self.pool, &self.x, n, cols, None, &[self.w.ty])
            .expect("no panic");
        let lin = Lin {
            w: self.w.view(self.bytes.bytes()),
            bias: None,
        };
        self.mm
            .run(&mut self.pool, n, [Product::Set(lin, &mut self.out)])
            .expect("no panic");
    }
}

/// Causal attention of `n` queries at positions `pos0..pos0 + n` over a KV
/// cache holding `pos0 + n` positions, through the model's attention.
pub struct AttentionBench {
    pool: Pool,
    kv: KvCache,
    scratch: AlignedBuf,
    q: Vec<f32>,
    out: Vec<f32>,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    pos0: usize,
    n: usize,
}

impl AttentionBench {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kv_type: KvType,
        kv_type_v: KvType,
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
        pos0: usize,
        n: usize,
        threads: usize,
    ) -> Option<Self> {
        let n_ctx = pos0 + n;
        let (k_ty, v_ty) = (kv_type.ggml_type(), kv_type_v.ggml_type());
        let mut kv = KvCache::new(k_ty, v_ty, 1, n_head_kv, head_dim, n_ctx).ok()?;
        let k_from_float = Kernels::get().of(k_ty).from_float;
        let v_from_float = Kernels::get().of(v_ty).from_float;
        let (k_rb, v_rb, es) = (kv.index.k_row_bytes, kv.index.v_row_bytes, v_ty.type_size());
        let mut conv = vec![0u8; v_rb];
        for h in 0..n_head_kv {
            for p in 0..n_ctx {
                let off = kv.k_offset(0, h, p);
                k_from_float(
                    &data(head_dim, (h * n_ctx + p) as u64),
                    &mut kv.k.bytes_mut()[off..off + k_rb],
                );
                v_from_float(&data(head_dim, (h * n_ctx + p) as u64 | 1 << 32), &mut conv);
                if kv.v_transposed() {
                    for (d, e) in conv.chunks_exact(es).enumerate() {
                        let o = kv.vt_offset(0, h, d, p);
                        kv.v.bytes_mut()[o..o + es].copy_from_slice(e);
                    }
                } else {
                    let off = kv.v_offset(0, h, p);
                    kv.v.bytes_mut()[off..off + v_rb].copy_from_slice(&conv);
                }
            }
        }
        Some(AttentionBench {
            pool: Pool::new(threads).ok()?,
            kv,
            scratch: AlignedBuf::zeroed(threads * attention::scratch_bytes(head_dim)),
            q: data(n * n_head * head_dim, 777),
            out: vec![0.0; n * n_head * head_dim],
            n_head,
            n_head_kv,
            head_dim,
            pos0,
            n,
        })
    }

    /// Floating-point operations per run: `q·k` and `p·v` for every visible
    /// (query, key) pair.
    pub fn flops(&self) -> f64 {
        let pairs: usize = (0..self.n).map(|t| self.pos0 + t + 1).sum();
        4.0 * (pairs * self.n_head * self.head_dim) as f64
    }

    pub fn run(&mut self) {
        Attention {
            n_head: self.n_head,
            n_head_kv: self.n_head_kv,
            head_dim: self.head_dim,
            layer: 0,
            pos0: self.pos0,
            n: self.n,
            chunk: None,
            q: &self.q,
        }
        .run(&mut self.pool, &self.kv, &mut self.scratch, &mut self.out)
        .expect("no panic");
    }
}

/// The worker pool alone: steps of `tasks` empty tasks on `threads`
/// threads, the per-step cost of handing work to the pool and waiting for it.
pub struct PoolBench {
    pool: Pool,
    tasks: usize,
}

impl PoolBench {
    pub fn new(threads: usize, tasks: usize) -> Option<Self> {
        Some(PoolBench {
            pool: Pool::new(threads).ok()?,
            tasks,
        })
    }

    pub fn step(&mut self) {
        self.pool
            .run(self.tasks, &|_, t| {
                std::hint::black_box(t);
            })
            .expect("no panic");
    }
}

/// Synthetic rows for the elementwise benchmarks.
pub fn rows(n: usize, seed: u64) -> Vec<f32> {
    data(n, seed)
}

/// RMS normalization of `x` into `out` with weight `w`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32]) {
    ops::rmsnorm(out, x, Some(w), 1e-5);
}

/// RoPE angles for position `pos`, then every head of `x` rotated by them
/// (`cs` has one head's length).
pub fn rope(x: &mut [f32], cs: &mut [f32], pos: usize, inv_freq: &[f32]) {
    ops::rope_angles(cs, pos as f32, inv_freq);
    ops::rope(x, cs);
}

/// `out = silu(g) · u`.
pub fn swiglu(out: &mut [f32], g: &[f32], u: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = ops::silu(g) * u;
    }
}

/// Softmax numerators of one row of scores, as attention computes them.
pub fn softmax_row(x: &mut [f32]) -> f32 {
    let m = ops::max(x);
    ops::exp_scaled_sum(x, 0.125, m * 0.125)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention over every K/V cache type combination against an f64
    /// reference on the exact inputs: the batched path (40 queries) and the
    /// single-query path, over more than one chunk of keys. The error is
    /// what the cache types' rounding allows and no more.
    #[test]
    fn attention_over_each_cache_type_is_as_exact_as_the_type() {
        let (n_head, n_head_kv, hd) = (6, 2, 64);
        let group = n_head / n_head_kv;
        // Relative error bound (‖out − ref‖ / ‖ref‖) per type; the worse of
        // K and V decides.
        let bound = |t: KvType| match t {
            KvType::F32 => 1e-5,
            KvType::F16 => 1e-3,
            KvType::Q8_0 => 1.5e-2,
            KvType::Q4_0 => 0.15,
        };
        for (pos0, n) in [(300, 40), (290, 1)] {
            let n_ctx = pos0 + n;
            let key = |h: usize, p: usize| data(hd, (h * n_ctx + p) as u64);
            let value = |h: usize, p: usize| data(hd, (h * n_ctx + p) as u64 | 1 << 32);
            for k in KvType::ALL {
                for v in KvType::ALL {
                    let mut b =
                        AttentionBench::new(k, v, n_head, n_head_kv, hd, pos0, n, 2).unwrap();
                    // Sharper attention than uniform inputs give.
                    b.q.iter_mut().for_each(|x| *x *= 12.0);
                    b.run();
                    let (mut err, mut norm) = (0f64, 0f64);
                    for t in 0..n {
                        for h in 0..n_head {
                            let q = &b.q[(t * n_head + h) * hd..][..hd];
                            let visible = pos0 + t + 1;
                            let scores: Vec<f64> = (0..visible)
                                .map(|p| {
                                    let kp = key(h / group, p);
                                    let dot: f64 =
                                        q.iter().zip(&kp).map(|(&a, &b)| a as f64 * b as f64).sum();
                                    dot / (hd as f64).sqrt()
                                })
                                .collect();
                            let m = scores.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                            let sum: f64 = w.iter().sum();
                            let mut want = vec![0f64; hd];
                            for (p, &wp) in w.iter().enumerate() {
                                for (o, &x) in want.iter_mut().zip(&value(h / group, p)) {
                                    *o += wp / sum * x as f64;
                                }
                            }
                            let got = &b.out[(t * n_head + h) * hd..][..hd];
                            for (&g, &w) in got.iter().zip(&want) {
                                err += (g as f64 - w).powi(2);
                                norm += w * w;
                            }
                        }
                    }
                    let rel = (err / norm).sqrt();
                    let max = f64::max(bound(k), bound(v));
                    assert!(
                        rel <= max,
                        "K {k:?} V {v:?}, {n} queries at {pos0}: relative error {rel:.2e} > {max:.0e}"
                    );
                    // The lossy types are really in use.
                    if (k, v) != (KvType::F32, KvType::F32) {
                        assert!(rel > 1e-6, "K {k:?} V {v:?}: exact ({rel:.2e})");
                    }
                    eprintln!("K {k:?} V {v:?}, {n} queries: relative error {rel:.2e}");
                }
            }
        }
    }
}
