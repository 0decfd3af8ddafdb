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
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
        pos0: usize,
        n: usize,
        threads: usize,
    ) -> Option<Self> {
        let n_ctx = pos0 + n;
        let mut kv = KvCache::new(kv_type.ggml_type(), 1, n_head_kv, head_dim, n_ctx).ok()?;
        let from_float = Kernels::get().of(kv.ty).from_float;
        let (rb, es) = (kv.row_bytes, kv.ty.type_size());
        let mut conv = vec![0u8; rb];
        for h in 0..n_head_kv {
            for p in 0..n_ctx {
                let off = kv.offset(0, h, p);
                from_float(
                    &data(head_dim, (h * n_ctx + p) as u64),
                    &mut kv.k.bytes_mut()[off..off + rb],
                );
                from_float(&data(head_dim, (h * n_ctx + p) as u64 | 1 << 32), &mut conv);
                if kv.v_transposed() {
                    for (d, e) in conv.chunks_exact(es).enumerate() {
                        let o = kv.vt_offset(0, h, d, p);
                        kv.v.bytes_mut()[o..o + es].copy_from_slice(e);
                    }
                } else {
                    kv.v.bytes_mut()[off..off + rb].copy_from_slice(&conv);
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
