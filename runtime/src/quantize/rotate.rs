//! `spinel quantize --rotate` / `--rotate-online`: SpinQuant-style
//! rotations (arXiv 2405.16406) applied to the f32 weights before they are
//! quantized, so that outliers are spread over many weights.
//!
//! With the residual stream `h` of a Llama block rotated by an orthogonal
//! `R1` (`h' = R1ᵀ h`) and each layer's value heads by `R2`, the network
//! computes the same function when:
//!
//! - every RMSNorm gain is fused into the linear layers that read it
//!   (`attn_norm` → q, k, v; `ffn_norm` → gate, up; `output_norm` →
//!   output) and set to 1 (RMSNorm without gain commutes with `R1`: it only
//!   divides by the norm);
//! - tied embeddings are untied (an explicit `output.weight`);
//! - `token_embd` rows become `e R1`, the inputs of q/k/v/gate/up/output
//!   `W R1`, the outputs of o/down `R1ᵀ W`;
//! - `R2` (per layer, `head_dim` wide) multiplies each value head of `W_v`
//!   on the left (`R2ᵀ W_v,h`) and each head's columns of `W_o` on the right.
//!   q and k are not touched, so llama.cpp's permuted q/k rows, RoPE and GQA
//!   are unaffected.
//!
//! These are the offline rotations: the file still runs unchanged in
//! llama.cpp. `R1 = D Hᵀ / √n` with `H` the Hadamard matrix of
//! [`spinel_quant::hadamard`] and `D` seeded random signs, where the FWHT
//! supports `n_embd`; else a seeded random orthogonal matrix (QR of a
//! Gaussian). `R2` likewise for `head_dim`.
//!
//! The online rotations (`--rotate-online`) need the runtime:
//! - **R4**: `W_down ← W_down H4ᵀ` offline; the forward pass applies the
//!   FWHT `H4` to the SwiGLU output before the down product.
//! - **R3**: the FWHT of each query and key head after RoPE; it cancels in
//!   `q·k` and spreads the outliers of a quantized K cache. (The runtime
//!   applies it to any model whose K cache is quantized, see
//!   `StateOptions::kv_rotation`; the key makes it apply to any cache.)
//!
//! Both are recorded in the metadata (see [`keys`]); Spinel refuses a file
//! that asks for one it cannot apply. llama.cpp ignores the keys and would
//! compute garbage with such a file: only offline-rotated files are for it.

use std::path::Path;

use spinel_quant::{GgmlType, Hadamard, Kernels};

use super::QuantizeError;
use crate::gguf::{GgufFile, GgufWriter, Value};

/// GGUF metadata keys of the rotations (`spinel.` namespace).
pub mod keys {
    /// `R1`: "hadamard" (randomized Hadamard) or "orthogonal" (random QR).
    pub const R1: &str = "spinel.rotation.r1";
    /// `R2`: "hadamard" or "orthogonal".
    pub const R2: &str = "spinel.rotation.r2";
    /// The seed of the random signs / matrices (u64).
    pub const SEED: &str = "spinel.rotation.seed";
    /// Bool: the runtime applies the FWHT to q and k heads after RoPE (R3).
    pub const R3: &str = "spinel.rotation.r3";
    /// Bool: the runtime applies the FWHT to the SwiGLU output (R4).
    pub const R4: &str = "spinel.rotation.r4";
    /// The residual channels `R1` leaves alone (u32 array; see
    /// [`super::RotateOptions::keep_outliers`]).
    pub const R1_KEPT: &str = "spinel.rotation.r1_kept_channels";
    /// Every key this version knows; the runtime refuses others under
    /// [`PREFIX`].
    pub const ALL: [&str; 6] = [R1, R2, SEED, R3, R4, R1_KEPT];
    pub const PREFIX: &str = "spinel.rotation.";
}

/// What to rotate.
#[derive(Clone, Copy, Debug)]
pub struct RotateOptions {
    /// Also R3 and R4 (the runtime applies their online part).
    pub online: bool,
    pub seed: u64,
    /// Leave at most this many residual channels out of `R1`: those that
    /// carry a large share of the normalized residual's energy on every
    /// token (massive activations), found by running the f32 model on
    /// pseudo-random tokens. Their norm gains stay in the norms. 0 rotates
    /// every channel (plain SpinQuant).
    pub keep_outliers: usize,
}

impl Default for RotateOptions {
    fn default() -> Self {
        RotateOptions {
            online: false,
            seed: 0x5eed,
            keep_outliers: 16,
        }
    }
}

/// What [`rotate_file`] did.
#[derive(Clone, Debug)]
pub struct RotateSummary {
    pub r1: &'static str,
    pub r2: &'static str,
    pub untied: bool,
    /// The channels left out of `R1`, with their mean share of `‖x̂‖²`.
    pub kept: Vec<(usize, f64)>,
}

fn err(msg: impl Into<String>) -> QuantizeError {
    QuantizeError::Rotate(msg.into())
}

/// splitmix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn gaussian(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// An orthogonal map `x ↦ M x` of one width.
pub enum Rotation {
    /// `M = H D / √n`: random signs, then the FWHT.
    Hadamard { h: Hadamard, signs: Vec<f32> },
    /// `M = Q`, dense, row-major, orthogonal (f64 Gram–Schmidt, stored f32).
    Dense { n: usize, q: Vec<f32> },
}

impl Rotation {
    /// A randomized Hadamard rotation of width `n` where the FWHT supports
    /// it, else a random orthogonal one; seeded.
    pub fn new(n: usize, seed: u64) -> Rotation {
        let mut rng = Rng(seed);
        match Hadamard::new(n) {
            Some(h) => Rotation::Hadamard {
                h,
                signs: (0..n)
                    .map(|_| if rng.next() >> 63 == 1 { -1.0 } else { 1.0 })
                    .collect(),
            },
            None => Rotation::Dense {
                n,
                q: random_orthogonal(n, &mut rng),
            },
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Rotation::Hadamard { .. } => "hadamard",
            Rotation::Dense { .. } => "orthogonal",
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Rotation::Hadamard { h, .. } => h.len(),
            Rotation::Dense { n, .. } => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `x ← M x`; `tmp` is scratch of at least the width (dense case).
    pub fn apply(&self, x: &mut [f32], tmp: &mut Vec<f32>) {
        match self {
            Rotation::Hadamard { h, signs } => {
                x.iter_mut().zip(signs).for_each(|(v, s)| *v *= s);
                h.apply(x);
            }
            Rotation::Dense { n, q } => {
                tmp.clear();
                tmp.extend_from_slice(x);
                for (o, row) in x.iter_mut().zip(q.chunks_exact(*n)) {
                    *o = dot(row, tmp);
                }
            }
        }
    }
}

/// An f32 dot product the compiler vectorizes (8 partial sums).
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (p, q) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += p[l] * q[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `R1`: a rotation of the channels `idx`, the other channels left alone.
struct PartialRotation {
    idx: Vec<usize>,
    inner: Rotation,
    full: bool,
}

impl PartialRotation {
    fn new(dim: usize, kept: &[usize], seed: u64) -> PartialRotation {
        let idx: Vec<usize> = (0..dim).filter(|i| !kept.contains(i)).collect();
        PartialRotation {
            inner: Rotation::new(idx.len(), seed),
            full: idx.len() == dim,
            idx,
        }
    }

    fn apply(&self, x: &mut [f32], tmp: &mut Vec<f32>) {
        if self.full {
            return self.inner.apply(x, tmp);
        }
        let mut g: Vec<f32> = self.idx.iter().map(|&i| x[i]).collect();
        self.inner.apply(&mut g, tmp);
        for (&i, v) in self.idx.iter().zip(g) {
            x[i] = v;
        }
    }
}

/// `out[t · rows + j] = a[t] · w[j]` for the `n` rows of `a` (each `w.cols`).
fn matmul(a: &[f32], w: &Mat, threads: usize) -> Vec<f32> {
    let (k, rows) = (w.cols, w.rows);
    let n = a.len() / k;
    let mut out = vec![0.0f32; n * rows];
    let per = rows.div_ceil(threads.max(1)).max(1);
    let parts: Vec<Vec<f32>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..rows)
            .step_by(per)
            .map(|j0| {
                s.spawn(move || {
                    let j1 = (j0 + per).min(rows);
                    let mut o = Vec::with_capacity(n * (j1 - j0));
                    for t in 0..n {
                        for j in j0..j1 {
                            o.push(dot(&a[t * k..(t + 1) * k], &w.data[j * k..(j + 1) * k]));
                        }
                    }
                    o
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("matmul thread"))
            .collect()
    });
    for (pi, part) in parts.iter().enumerate() {
        let (j0, w_) = (pi * per, part.len() / n.max(1));
        for t in 0..n {
            out[t * rows + j0..t * rows + j0 + w_].copy_from_slice(&part[t * w_..(t + 1) * w_]);
        }
    }
    out
}

/// Shape of the model, for the calibration pass.
struct Shape {
    dim: usize,
    n_layer: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    eps: f32,
    rope_base: f32,
}

/// Runs the f32 model on `n_tok` pseudo-random tokens and returns, per
/// residual channel, its mean share of `‖x̂‖²` (`x̂` the RMS-normalized
/// residual at the input of every attention and feed-forward block).
fn calibrate(input: &GgufFile<'_>, sh: &Shape, threads: usize) -> Result<Vec<f64>, QuantizeError> {
    const N_TOK: usize = 48;
    let Shape {
        dim,
        n_layer,
        n_head,
        n_head_kv,
        head_dim: hd,
        eps,
        rope_base,
    } = *sh;
    let embd = load(input, "token_embd.weight")?;
    let mut rng = Rng(0xca11b);
    let mut x = Vec::with_capacity(N_TOK * dim);
    for _ in 0..N_TOK {
        let t = (rng.next() % embd.rows as u64) as usize;
        x.extend_from_slice(&embd.data[t * dim..(t + 1) * dim]);
    }
    let mut share = vec![0.0f64; dim];
    let mut count = 0usize;
    let mut norm = |x: &[f32], g: &[f32], share: &mut [f64]| -> Vec<f32> {
        let mut u = vec![0.0f32; x.len()];
        for (xr, ur) in x.chunks_exact(dim).zip(u.chunks_exact_mut(dim)) {
            let ms = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            for i in 0..dim {
                let xh = xr[i] as f64 * inv;
                share[i] += xh * xh / dim as f64;
                ur[i] = (xh * g[i] as f64) as f32;
            }
            count += 1;
        }
        u
    };
    let (q_dim, kv_dim) = (n_head * hd, n_head_kv * hd);
    for l in 0..n_layer {
        let name = |t: &str| format!("blk.{l}.{t}.weight");
        let g = load(input, &name("attn_norm"))?;
        let u = norm(&x, &g.data, &mut share);
        let mut q = matmul(&u, &load(input, &name("attn_q"))?, threads);
        let mut k = matmul(&u, &load(input, &name("attn_k"))?, threads);
        let v = matmul(&u, &load(input, &name("attn_v"))?, threads);
        if q.len() != N_TOK * q_dim || k.len() != N_TOK * kv_dim || v.len() != N_TOK * kv_dim {
            return Err(err(format!("layer {l}: unexpected q/k/v shapes")));
        }
        for (t, (qt, kt)) in q
            .chunks_exact_mut(q_dim)
            .zip(k.chunks_exact_mut(kv_dim))
            .enumerate()
        {
            for head in qt.chunks_exact_mut(hd).chain(kt.chunks_exact_mut(hd)) {
                for (i, p) in head.chunks_exact_mut(2).enumerate() {
                    let theta = t as f64 * (rope_base as f64).powf(-2.0 * i as f64 / hd as f64);
                    let (c, s_) = (theta.cos() as f32, theta.sin() as f32);
                    let (a, b) = (p[0], p[1]);
                    p[0] = a * c - b * s_;
                    p[1] = a * s_ + b * c;
                }
            }
        }
        let mut o = vec![0.0f32; N_TOK * q_dim];
        let scale = 1.0 / (hd as f32).sqrt();
        for t in 0..N_TOK {
            for h in 0..n_head {
                let kh = h / (n_head / n_head_kv);
                let qh = &q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                let sc: Vec<f32> = (0..=t)
                    .map(|j| {
                        let kj = &k[j * kv_dim + kh * hd..j * kv_dim + (kh + 1) * hd];
                        qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
                    })
                    .collect();
                let m = sc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let e: Vec<f32> = sc.iter().map(|v| (v - m).exp()).collect();
                let z: f32 = e.iter().sum();
                let oh = &mut o[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                for (j, &p) in e.iter().enumerate() {
                    let vj = &v[j * kv_dim + kh * hd..j * kv_dim + (kh + 1) * hd];
                    for (a, b) in oh.iter_mut().zip(vj) {
                        *a += p / z * b;
                    }
                }
            }
        }
        let y = matmul(&o, &load(input, &name("attn_output"))?, threads);
        x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        let g = load(input, &name("ffn_norm"))?;
        let u = norm(&x, &g.data, &mut share);
        let a = matmul(&u, &load(input, &name("ffn_gate"))?, threads);
        let b = matmul(&u, &load(input, &name("ffn_up"))?, threads);
        let h: Vec<f32> = a
            .iter()
            .zip(&b)
            .map(|(&a, &b)| a / (1.0 + (-a).exp()) * b)
            .collect();
        let y = matmul(&h, &load(input, &name("ffn_down"))?, threads);
        x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
    }
    let c = count.max(1) as f64;
    Ok(share.into_iter().map(|v| v / c).collect())
}

/// A random orthogonal `n × n` matrix: Gram–Schmidt (twice) of a Gaussian
/// one, in f64.
fn random_orthogonal(n: usize, rng: &mut Rng) -> Vec<f32> {
    let mut a: Vec<f64> = (0..n * n).map(|_| rng.gaussian()).collect();
    for i in 0..n {
        for _ in 0..2 {
            for j in 0..i {
                let d: f64 = (0..n).map(|k| a[i * n + k] * a[j * n + k]).sum();
                for k in 0..n {
                    a[i * n + k] -= d * a[j * n + k];
                }
            }
        }
        let norm = (0..n).map(|k| a[i * n + k].powi(2)).sum::<f64>().sqrt();
        for k in 0..n {
            a[i * n + k] /= norm;
        }
    }
    a.into_iter().map(|v| v as f32).collect()
}

/// Runs `f` on each `row_len`-long row of `data`, over `threads` threads.
fn par_rows(
    data: &mut [f32],
    row_len: usize,
    threads: usize,
    f: &(dyn Fn(&mut [f32], &mut Vec<f32>) + Sync),
) {
    let n_rows = data.len() / row_len;
    let per = n_rows.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        for part in data.chunks_mut(per * row_len) {
            s.spawn(move || {
                let mut tmp = Vec::new();
                for row in part.chunks_exact_mut(row_len) {
                    f(row, &mut tmp);
                }
            });
        }
    });
}

fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; data.len()];
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    t[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    t
}

/// A 2-D f32 matrix: `rows` rows of `cols` (GGUF `dims = [cols, rows]`).
struct Mat {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Mat {
    /// Applies `f` to every column (through a transpose).
    fn columns(&mut self, threads: usize, f: &(dyn Fn(&mut [f32], &mut Vec<f32>) + Sync)) {
        let mut t = transpose(&self.data, self.rows, self.cols);
        par_rows(&mut t, self.rows, threads, f);
        self.data = transpose(&t, self.cols, self.rows);
    }
    fn rows(&mut self, threads: usize, f: &(dyn Fn(&mut [f32], &mut Vec<f32>) + Sync)) {
        par_rows(&mut self.data, self.cols, threads, f);
    }
}

fn load(file: &GgufFile<'_>, name: &str) -> Result<Mat, QuantizeError> {
    let t = file
        .tensor(name)
        .ok_or_else(|| err(format!("the model has no tensor {name}")))?;
    let dims = t.dims();
    let cols = dims.first().copied().unwrap_or(1) as usize;
    let rows = (t.n_elements() as usize) / cols.max(1);
    if dims.iter().skip(2).any(|&d| d != 1) {
        return Err(err(format!("{name}: expected a matrix, has dims {dims:?}")));
    }
    let ty = t.ggml_type();
    let row_bytes = ty
        .row_size(cols)
        .ok_or_else(|| err(format!("{name}: {cols} columns are not whole {ty} blocks")))?;
    let to_float = Kernels::get().of(ty).to_float;
    let mut data = vec![0.0f32; rows * cols];
    for (src, dst) in t
        .data()
        .chunks_exact(row_bytes)
        .zip(data.chunks_exact_mut(cols))
    {
        to_float(src, dst);
    }
    Ok(Mat { data, rows, cols })
}

/// Rotates the llama model `input` and writes it to `out` as f32 (every
/// tensor), with the rotation keys added to its metadata. Quantize the
/// result to get a rotated quantized model.
pub fn rotate_file(
    input: &GgufFile<'_>,
    out: &Path,
    opts: &RotateOptions,
    threads: usize,
) -> Result<RotateSummary, QuantizeError> {
    let threads = threads.max(1);
    let md = input.metadata();
    let arch = md.get_str("general.architecture")?;
    if arch != "llama" {
        return Err(err(format!(
            "rotations support the dense llama architecture, not {arch:?}"
        )));
    }
    if md.keys().any(|k| k.starts_with(keys::PREFIX)) {
        return Err(err("the model is already rotated"));
    }
    let u = |k: &str| -> Result<usize, QuantizeError> {
        Ok(md.get_uint(&format!("llama.{k}"))? as usize)
    };
    let dim = u("embedding_length")?;
    let n_layer = u("block_count")?;
    let n_head = u("attention.head_count")?;
    let n_head_kv = match md.get_uint("llama.attention.head_count_kv") {
        Ok(v) => v as usize,
        Err(_) => n_head,
    };
    let head_dim = match md.get_uint("llama.attention.key_length") {
        Ok(v) => v as usize,
        Err(_) => dim / n_head.max(1),
    };
    if md.contains_key("llama.expert_count") && md.get_uint("llama.expert_count").unwrap_or(0) > 0 {
        return Err(err("rotations do not support mixture-of-experts models"));
    }
    if head_dim == 0 || n_head == 0 || n_head_kv == 0 {
        return Err(err("bad head counts"));
    }

    // Every tensor must be one the rotation knows what to do with.
    let known = |name: &str| -> bool {
        matches!(
            name,
            "token_embd.weight" | "output_norm.weight" | "output.weight" | "rope_freqs.weight"
        ) || name.strip_prefix("blk.").is_some_and(|rest| {
            rest.split_once('.').is_some_and(|(l, t)| {
                l.parse::<usize>().is_ok_and(|l| l < n_layer)
                    && matches!(
                        t,
                        "attn_norm.weight"
                            | "attn_q.weight"
                            | "attn_k.weight"
                            | "attn_v.weight"
                            | "attn_output.weight"
                            | "ffn_norm.weight"
                            | "ffn_gate.weight"
                            | "ffn_up.weight"
                            | "ffn_down.weight"
                            | "rope_freqs.weight"
                    )
            })
        })
    };
    if let Some(t) = input.tensors().iter().find(|t| !known(t.name())) {
        return Err(err(format!(
            "rotations do not know what to do with tensor {} (biases and \
             non-llama layers are not supported)",
            t.name()
        )));
    }

    let kept: Vec<(usize, f64)> = if opts.keep_outliers > 0 {
        let sh = Shape {
            dim,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            eps: md
                .get_f32("llama.attention.layer_norm_rms_epsilon")
                .unwrap_or(1e-5),
            rope_base: md.get_f32("llama.rope.freq_base").unwrap_or(10000.0),
        };
        let share = calibrate(input, &sh, threads)?;
        let mut order: Vec<usize> = (0..dim).collect();
        order.sort_by(|&a, &b| share[b].total_cmp(&share[a]));
        // Massive: 8× the uniform share, at most `keep_outliers`, and at
        // least half the channels still rotated.
        order
            .into_iter()
            .take(opts.keep_outliers.min(dim / 2))
            .filter(|&i| share[i] * dim as f64 > 8.0)
            .map(|i| (i, share[i]))
            .collect()
    } else {
        Vec::new()
    };
    let kept_idx: Vec<usize> = kept.iter().map(|&(i, _)| i).collect();
    let is_kept = |i: usize| kept_idx.contains(&i);
    let r1 = PartialRotation::new(dim, &kept_idx, opts.seed);
    let r1 = &r1;
    // The gains fused into the next layers (1 on kept channels) and those
    // left in the norms (the gain on kept channels, else 1).
    let split = |g: Vec<f32>| -> (Vec<f32>, Vec<f32>) {
        let fused = g
            .iter()
            .enumerate()
            .map(|(i, &v)| if is_kept(i) { 1.0 } else { v })
            .collect();
        let left = g
            .iter()
            .enumerate()
            .map(|(i, &v)| if is_kept(i) { v } else { 1.0 })
            .collect();
        (fused, left)
    };
    let norm_mat = |data: Vec<f32>| Mat {
        data,
        rows: 1,
        cols: dim,
    };
    let r2s: Vec<Rotation> = (0..n_layer)
        .map(|l| Rotation::new(head_dim, opts.seed ^ (0xa5a5_0000 + l as u64)))
        .collect();
    let r2_kind = r2s.first().map_or("hadamard", |r| r.kind());

    let vec_of = |name: &str| -> Result<Vec<f32>, QuantizeError> {
        let m = load(input, name)?;
        if m.data.len() != dim {
            return Err(err(format!("{name}: expected {dim} values")));
        }
        Ok(m.data)
    };
    let check_cols = |m: &Mat, name: &str, cols: usize| -> Result<(), QuantizeError> {
        if m.cols != cols {
            return Err(err(format!("{name}: {} columns, expected {cols}", m.cols)));
        }
        Ok(())
    };
    // `W ← (W diag(g)) R1` on the input side: each row r → M (r ⊙ g).
    let input_side = |m: &mut Mat, g: &[f32]| {
        m.rows(threads, &|row, tmp| {
            row.iter_mut().zip(g).for_each(|(v, g)| *v *= g);
            r1.apply(row, tmp);
        })
    };

    let mut outs: Vec<(String, Vec<u64>, Vec<f32>)> = Vec::new();
    let mut push = |name: &str, m: Mat| {
        outs.push((name.to_string(), vec![m.cols as u64, m.rows as u64], m.data));
    };

    // Embeddings and output.
    let mut embd = load(input, "token_embd.weight")?;
    check_cols(&embd, "token_embd.weight", dim)?;
    let untied = input.tensor("output.weight").is_none();
    let mut output = if untied {
        Mat {
            data: embd.data.clone(),
            rows: embd.rows,
            cols: embd.cols,
        }
    } else {
        load(input, "output.weight")?
    };
    check_cols(&output, "output.weight", dim)?;
    embd.rows(threads, &|row, tmp| r1.apply(row, tmp));
    let (g_out, out_norm) = split(vec_of("output_norm.weight")?);
    input_side(&mut output, &g_out);

    let h4 = if opts.online {
        let n_ff = u("feed_forward_length")?;
        let h4 = Hadamard::new(n_ff).ok_or_else(|| {
            err(format!(
                "--rotate-online needs a fast Walsh–Hadamard transform of the \
                 feed-forward width {n_ff}, which is not of the form m·2^k \
                 with m in 1, {:?}",
                spinel_quant::hadamard::ORDERS
            ))
        })?;
        if Hadamard::new(head_dim).is_none() {
            return Err(err(format!(
                "--rotate-online needs an FWHT of the head size {head_dim}"
            )));
        }
        Some(h4)
    } else {
        None
    };

    let mut layers = Vec::new();
    for (l, r2) in r2s.iter().enumerate() {
        let name = |t: &str| format!("blk.{l}.{t}.weight");
        let (g_attn, attn_norm) = split(vec_of(&name("attn_norm"))?);
        let (g_ffn, ffn_norm) = split(vec_of(&name("ffn_norm"))?);
        let mut wq = load(input, &name("attn_q"))?;
        let mut wk = load(input, &name("attn_k"))?;
        let mut wv = load(input, &name("attn_v"))?;
        let mut wo = load(input, &name("attn_output"))?;
        for (m, t) in [(&wq, "attn_q"), (&wk, "attn_k"), (&wv, "attn_v")] {
            check_cols(m, &name(t), dim)?;
        }
        if wv.rows != n_head_kv * head_dim {
            return Err(err(format!(
                "{}: {} rows, expected {n_head_kv} heads of {head_dim}",
                name("attn_v"),
                wv.rows
            )));
        }
        check_cols(&wo, &name("attn_output"), n_head * head_dim)?;
        for m in [&mut wq, &mut wk, &mut wv] {
            input_side(m, &g_attn);
        }
        // R2ᵀ W_v,h: every column's head segments.
        wv.columns(threads, &|col, tmp| {
            for seg in col.chunks_exact_mut(head_dim) {
                r2.apply(seg, tmp);
            }
        });
        // R1ᵀ W_o (columns), then W_o[:, h] R2 (rows' head segments).
        wo.columns(threads, &|col, tmp| r1.apply(col, tmp));
        wo.rows(threads, &|row, tmp| {
            for seg in row.chunks_exact_mut(head_dim) {
                r2.apply(seg, tmp);
            }
        });

        let mut gate = load(input, &name("ffn_gate"))?;
        let mut up = load(input, &name("ffn_up"))?;
        let mut down = load(input, &name("ffn_down"))?;
        check_cols(&gate, &name("ffn_gate"), dim)?;
        check_cols(&up, &name("ffn_up"), dim)?;
        if down.rows != dim || down.cols != gate.rows || up.rows != gate.rows {
            return Err(err(format!("layer {l}: inconsistent feed-forward shapes")));
        }
        input_side(&mut gate, &g_ffn);
        input_side(&mut up, &g_ffn);
        down.columns(threads, &|col, tmp| r1.apply(col, tmp));
        if let Some(h4) = &h4 {
            // W_down H4ᵀ: row r → H4 r.
            down.rows(threads, &|row, _| h4.apply(row));
        }
        layers.push([
            (name("attn_norm"), norm_mat(attn_norm)),
            (name("attn_q"), wq),
            (name("attn_k"), wk),
            (name("attn_v"), wv),
            (name("attn_output"), wo),
            (name("ffn_norm"), norm_mat(ffn_norm)),
            (name("ffn_gate"), gate),
            (name("ffn_up"), up),
            (name("ffn_down"), down),
        ]);
    }

    push("token_embd.weight", embd);
    push("output_norm.weight", norm_mat(out_norm));
    push("output.weight", output);
    for layer in layers {
        for (n, m) in layer {
            push(&n, m);
        }
    }

    // Tensors in the input's order (output.weight after output_norm when it
    // is new), others (rope_freqs) copied.
    let mut w = GgufWriter::new();
    for (k, v) in md.iter() {
        if k != "general.file_type" {
            w.add_kv(k, v.clone())?;
        }
    }
    w.add_kv("general.file_type", Value::U32(0))?;
    w.add_kv(keys::R1, Value::String(r1.inner.kind().into()))?;
    if !kept_idx.is_empty() {
        let v: Vec<u32> = kept_idx.iter().map(|&i| i as u32).collect();
        w.add_kv(
            keys::R1_KEPT,
            Value::Array(crate::gguf::Array::from_scalars(&v)),
        )?;
    }
    w.add_kv(keys::R2, Value::String(r2_kind.into()))?;
    w.add_kv(keys::SEED, Value::U64(opts.seed))?;
    if opts.online {
        w.add_kv(keys::R3, Value::Bool(true))?;
        w.add_kv(keys::R4, Value::Bool(true))?;
    }
    let mut names: Vec<&str> = input.tensors().iter().map(|t| t.name()).collect();
    if untied {
        let at = names
            .iter()
            .position(|&n| n == "output_norm.weight")
            .map_or(names.len(), |i| i + 1);
        names.insert(at, "output.weight");
    }
    for name in names {
        if let Some(i) = outs.iter().position(|(n, _, _)| n == name) {
            let (n, dims, data) = outs.swap_remove(i);
            let dims: Vec<u64> = if dims[1] == 1 { vec![dims[0]] } else { dims };
            w.add_tensor(
                n,
                &dims,
                GgmlType::F32,
                bytemuck::cast_slice::<f32, u8>(&data).to_vec(),
            )?;
        } else {
            let t = input.tensor(name).expect("listed");
            let m = load(input, name)?;
            w.add_tensor(
                name.to_string(),
                t.dims(),
                GgmlType::F32,
                bytemuck::cast_slice::<f32, u8>(&m.data).to_vec(),
            )?;
        }
    }
    w.write_file(out)?;
    Ok(RotateSummary {
        kept,
        r1: r1.inner.kind(),
        r2: r2_kind,
        untied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_are_orthogonal() {
        for n in [64usize, 576, 100] {
            let r = Rotation::new(n, 42);
            assert_eq!(r.kind(), if n == 100 { "orthogonal" } else { "hadamard" });
            let mut tmp = Vec::new();
            // M eᵢ · M eⱼ = δᵢⱼ.
            let cols: Vec<Vec<f32>> = (0..n)
                .map(|i| {
                    let mut e = vec![0.0f32; n];
                    e[i] = 1.0;
                    r.apply(&mut e, &mut tmp);
                    e
                })
                .collect();
            for i in 0..n {
                for j in 0..n {
                    let d: f32 = cols[i].iter().zip(&cols[j]).map(|(a, b)| a * b).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((d - want).abs() < 1e-5, "n={n} ({i},{j}): {d}");
                }
            }
        }
    }
}
