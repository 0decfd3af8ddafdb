//! The numeric building blocks of the forward pass: normalization, RoPE,
//! softmax, SwiGLU and the quantized matrix product.

use spinel_quant::Kernels;

use super::weights::Mat;

/// Below this many multiply-adds a matrix product runs on the calling thread:
/// starting a scoped thread costs tens of microseconds, a few percent of this.
pub(crate) const PAR_MIN_WORK: usize = 1 << 20;

/// A byte buffer aligned to 8 bytes, so that rows of any block type (whose
/// structs need at most 4) can be viewed in place by the kernels.
#[derive(Clone, Debug, Default)]
pub(crate) struct AlignedBuf {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> AlignedBuf {
        AlignedBuf {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }
}

/// `out = x / rms(x) (· w)`: RMS normalization with an optional weight. The
/// sum of squares is accumulated in f64, as ggml does.
pub(crate) fn rmsnorm(out: &mut [f32], x: &[f32], w: Option<&[f32]>, eps: f32) {
    let ss: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    let scale = 1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt();
    match w {
        Some(w) => {
            for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
                *o = v * scale * w;
            }
        }
        None => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v * scale;
            }
        }
    }
}

/// Normalizes each `head_dim`-long head of `x` in place, without a weight
/// (Llama 4's "L2" q/k norm).
pub(crate) fn rmsnorm_heads(x: &mut [f32], head_dim: usize, eps: f32) {
    for head in x.chunks_exact_mut(head_dim) {
        let ss: f64 = head.iter().map(|&v| v as f64 * v as f64).sum();
        let scale = 1.0 / ((ss / head_dim as f64) as f32 + eps).sqrt();
        for v in head {
            *v *= scale;
        }
    }
}

/// The RoPE rotation for one position: `cs[2i] = cos θᵢ`, `cs[2i+1] = sin θᵢ`
/// with `θᵢ = pos · inv_freq[i]`, the product rounded to f32 as in the
/// reference implementations and the trigonometry done in f64.
pub(crate) fn rope_angles(cs: &mut [f32], pos: f32, inv_freq: &[f32]) {
    for (c, &f) in cs.chunks_exact_mut(2).zip(inv_freq) {
        let theta = (pos * f) as f64;
        c[0] = theta.cos() as f32;
        c[1] = theta.sin() as f32;
    }
}

/// Rotates adjacent pairs `(x[2i], x[2i+1])` of every head of `x` by the
/// angles in `cs` (ggml's "normal" RoPE mode; GGUF llama q/k weights are
/// stored so that this layout applies).
pub(crate) fn rope(x: &mut [f32], cs: &[f32]) {
    for head in x.chunks_exact_mut(cs.len()) {
        for (p, c) in head.chunks_exact_mut(2).zip(cs.chunks_exact(2)) {
            let (x0, x1) = (p[0], p[1]);
            p[0] = x0 * c[0] - x1 * c[1];
            p[1] = x0 * c[1] + x1 * c[0];
        }
    }
}

/// Softmax in place (max subtracted; the sum accumulated in f64).
pub(crate) fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x {
        *v *= inv;
    }
}

/// `a · b` in f32, in eight independent lanes (which compilers turn into
/// SIMD on every target).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `gate = silu(gate) · up`, elementwise (the SwiGLU nonlinearity).
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `x += y`, elementwise.
pub(crate) fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Runs `f(i, chunk)` for every `chunk_len`-long chunk `i` of `data`, one
/// scoped thread per chunk beyond the first (which runs on the caller).
pub(crate) fn par_chunks<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let mut chunks = data.chunks_mut(chunk_len.max(1)).enumerate();
    let first = chunks.next();
    std::thread::scope(|s| {
        let f = &f;
        for (i, c) in chunks {
            s.spawn(move || f(i, c));
        }
        if let Some((i, c)) = first {
            f(i, c);
        }
    });
}

/// Scratch for matrix products, allocated once per state.
#[derive(Debug)]
pub(crate) struct Matmul {
    /// `(n_batch, act_row_bytes)`: the activation rows, converted to the
    /// weight type's `vec_dot_type` (the widest such row of the model).
    pub xq: AlignedBuf,
    /// `(rows, n_batch)`: the product, weight-row major, while threads fill
    /// disjoint row ranges (the widest non-vocabulary weight of the model).
    pub t: Vec<f32>,
    pub n_threads: usize,
}

impl Matmul {
    /// `out[t][r] = W[r] · x[t] (+ b[r])` for the `n` rows of `x`.
    ///
    /// As in ggml, each activation row is converted once to the weight's
    /// `vec_dot_type` (quantized to Q8 blocks for quantized weights), then
    /// dotted with every weight row by the type's kernel. Weight rows are
    /// split across threads; each weight row meets all `n` activation rows
    /// while it is in cache.
    pub fn run(&mut self, w: Mat<'_>, bias: Option<&[f32]>, x: &[f32], n: usize, out: &mut [f32]) {
        let k = Kernels::get();
        let (rows, cols, xrb) = (w.w.rows, w.w.cols, w.w.act_row_bytes);
        let from_float = k.of(w.w.ty.vec_dot_type()).from_float;
        let vec_dot = k.of(w.w.ty).vec_dot;

        let xq = &mut self.xq.bytes_mut()[..n * xrb];
        for (xr, qr) in x[..n * cols]
            .chunks_exact(cols)
            .zip(xq.chunks_exact_mut(xrb))
        {
            from_float(xr, qr);
        }
        let xq = &*xq;

        let threads = if rows * n * cols < PAR_MIN_WORK {
            1
        } else {
            self.n_threads.clamp(1, rows)
        };
        let rows_per = rows.div_ceil(threads);
        let out = &mut out[..n * rows];
        if n == 1 {
            par_chunks(out, rows_per, |ci, chunk| {
                for (i, o) in chunk.iter_mut().enumerate() {
                    *o = vec_dot(w.row(ci * rows_per + i), xq);
                }
            });
        } else {
            let t = &mut self.t[..rows * n];
            par_chunks(t, rows_per * n, |ci, chunk| {
                for (i, orow) in chunk.chunks_exact_mut(n).enumerate() {
                    let wr = w.row(ci * rows_per + i);
                    for (o, xr) in orow.iter_mut().zip(xq.chunks_exact(xrb)) {
                        *o = vec_dot(wr, xr);
                    }
                }
            });
            for (r, trow) in t.chunks_exact(n).enumerate() {
                for (tok, &v) in trow.iter().enumerate() {
                    out[tok * rows + r] = v;
                }
            }
        }
        if let Some(b) = bias {
            for orow in out.chunks_exact_mut(rows) {
                add(orow, b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_matches_definition() {
        let x = [1.0f32, -2.0, 3.0, 0.5];
        let w = [1.0f32, 2.0, 0.5, -1.0];
        let mut out = [0.0f32; 4];
        rmsnorm(&mut out, &x, Some(&w), 1e-5);
        let ms = x.iter().map(|v| v * v).sum::<f32>() / 4.0;
        for i in 0..4 {
            let want = x[i] / (ms + 1e-5).sqrt() * w[i];
            assert!((out[i] - want).abs() < 1e-6, "{i}: {} vs {want}", out[i]);
        }
    }

    #[test]
    fn dot_matches_f64() {
        for n in [0usize, 1, 7, 8, 9, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-5, "n {n}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_is_stable() {
        let mut x = [1000.0f32, 1001.0, 999.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0] && x[0] > x[2]);
        let e = [(-1.0f64).exp(), 1.0, (-2.0f64).exp()];
        let s: f64 = e.iter().sum();
        for i in 0..3 {
            assert!((x[i] as f64 - e[i] / s).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_rotates_pairs_and_keeps_norm() {
        let inv_freq = [1.0f32, 0.1];
        let mut cs = [0.0f32; 4];
        rope_angles(&mut cs, 3.0, &inv_freq);
        let mut x = [
            1.0f32, 0.0, 0.0, 2.0, /* second head */ 3.0, 4.0, 1.0, 1.0,
        ];
        rope(&mut x, &cs);
        assert!((x[0] - 3.0f32.cos()).abs() < 1e-6 && (x[1] - 3.0f32.sin()).abs() < 1e-6);
        assert!(
            (x[2] + 2.0 * 0.3f32.sin()).abs() < 1e-6 && (x[3] - 2.0 * 0.3f32.cos()).abs() < 1e-6
        );
        assert!(((x[4] * x[4] + x[5] * x[5]) - 25.0).abs() < 1e-4);
    }

    #[test]
    fn matmul_matches_naive_for_every_thread_count() {
        use crate::model::weights::tests_support::f32_matrix;
        // Large enough that every thread count takes the threaded path.
        let (rows, cols) = (1031, 1024);
        assert!(rows * cols >= PAR_MIN_WORK);
        let wdata: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let (w, bytes) = f32_matrix(&wdata, rows, cols);
        let bias: Vec<f32> = (0..rows).map(|r| r as f32).collect();
        for n in [1usize, 3] {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
                .collect();
            for threads in [1, 2, 5] {
                let mut mm = Matmul {
                    xq: AlignedBuf::zeroed(n * cols * 4),
                    t: vec![0.0; rows * n],
                    n_threads: threads,
                };
                let mut out = vec![0.0; n * rows];
                mm.run(w.view(bytes.bytes()), Some(&bias), &x, n, &mut out);
                for t in 0..n {
                    for r in 0..rows {
                        let want: f32 = (0..cols)
                            .map(|c| wdata[r * cols + c] * x[t * cols + c])
                            .sum::<f32>()
                            + bias[r];
                        assert!((out[t * rows + r] - want).abs() < 1e-4, "n {n} t {t} r {r}");
                    }
                }
            }
        }
    }
}
