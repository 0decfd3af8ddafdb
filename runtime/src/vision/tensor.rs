//! f32 building blocks of the vision towers: weights read by Hugging Face
//! name, linear layers on spinel-quant's f32 gemm, LayerNorm, exact GELU,
//! and a pre-LN ViT encoder layer (optionally gated, with optional 2-D RoPE
//! and an additive mask).

use std::path::Path;

use spinel_quant::{GgmlType, Kernels};

use super::error::{Result, VisionError};
use crate::convert::checkpoint::Checkpoint;
use crate::model::ops;

/// A named f32 tensor, PyTorch shape order.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A matrix as a file stores it (f16, q8_0 …), for the gemm kernels to
/// take as is.
#[derive(Clone, Debug)]
pub struct StoredMatrix {
    pub ty: GgmlType,
    /// `[rows, cols]`.
    pub shape: [usize; 2],
    /// `rows` rows of `ty.row_size(cols)` bytes.
    pub bytes: Vec<u8>,
}

/// Where tower weights come from, by their Hugging Face names.
pub trait TensorSource {
    /// The tensor called `name` (HF naming), or `None` if there is none.
    fn tensor(&self, name: &str) -> Result<Option<Tensor>>;

    /// The matrix called `name` in its stored type when that is not f32
    /// (a quantized mmproj): linear layers keep it so and run it through
    /// the kernels of its type, as the text model's weights do. `None`:
    /// read it with [`tensor`](Self::tensor).
    fn stored(&self, _name: &str) -> Result<Option<StoredMatrix>> {
        Ok(None)
    }
}

/// A Hugging Face checkpoint directory (safetensors).
pub struct HfWeights {
    ckpt: Checkpoint,
}

impl HfWeights {
    pub fn open(dir: impl AsRef<Path>) -> Result<HfWeights> {
        let ckpt =
            Checkpoint::open(dir.as_ref()).map_err(|e| VisionError::Weights(e.to_string()))?;
        Ok(HfWeights { ckpt })
    }
}

impl TensorSource for HfWeights {
    fn tensor(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(t) = self.ckpt.get(name) else {
            return Ok(None);
        };
        let n: usize = t.shape.iter().product();
        let mut data = vec![0f32; n];
        self.ckpt.read_f32(t, 0, &mut data);
        Ok(Some(Tensor {
            shape: t.shape.clone(),
            data,
        }))
    }
}

/// Loads `name` and checks it has `shape`.
pub(crate) fn load(src: &dyn TensorSource, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = src
        .tensor(name)?
        .ok_or_else(|| VisionError::Weights(format!("missing {name}")))?;
    // A [n] tensor may be stored as [1, n] or [n, 1] and vice versa: compare
    // the element counts and the non-unit dimensions.
    let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    if squeeze(&t.shape) != squeeze(shape) || t.data.len() != shape.iter().product::<usize>() {
        return Err(VisionError::Weights(format!(
            "{name}: shape {:?}, expected {shape:?}",
            t.shape
        )));
    }
    Ok(t.data)
}

/// A scalar gate `tanh(g)`.
pub(crate) fn load_gate(src: &dyn TensorSource, name: &str) -> Result<f32> {
    Ok(load(src, name, &[1])?[0].tanh())
}

/// A linear layer's weights: f32, or a stored type (f16, q8_0 …) whose
/// products quantize the activations to the type's `vec_dot_type` first,
/// as the text model's matmuls do.
#[derive(Debug)]
pub(crate) enum Weights {
    F32(Vec<f32>),
    Stored { ty: GgmlType, bytes: Vec<u8> },
}

/// `y = W x + b`, W `[rows, cols]` row-major.
#[derive(Debug)]
pub(crate) struct Linear {
    pub w: Weights,
    pub b: Option<Vec<f32>>,
    pub rows: usize,
    pub cols: usize,
}

impl Linear {
    pub fn load(
        src: &dyn TensorSource,
        prefix: &str,
        rows: usize,
        cols: usize,
        bias: Bias,
    ) -> Result<Linear> {
        let wname = format!("{prefix}.weight");
        let w = match src.stored(&wname)? {
            Some(m) => {
                let fits = m.shape == [rows, cols]
                    && m.ty
                        .row_size(cols)
                        .is_some_and(|r| r * rows == m.bytes.len())
                    && m.ty.vec_dot_type().row_size(cols).is_some();
                if !fits {
                    return Err(VisionError::Weights(format!(
                        "{wname}: {} {:?}, expected [{rows}, {cols}]",
                        m.ty.name(),
                        m.shape
                    )));
                }
                Weights::Stored {
                    ty: m.ty,
                    bytes: m.bytes,
                }
            }
            None => Weights::F32(load(src, &wname, &[rows, cols])?),
        };
        let bname = format!("{prefix}.bias");
        let b = match bias {
            Bias::No => None,
            Bias::Yes => Some(load(src, &bname, &[rows])?),
        };
        Ok(Linear { w, b, rows, cols })
    }

    /// `out[m, rows] = x[m, cols] · Wᵀ + b`.
    pub fn forward(&self, x: &[f32], out: &mut [f32]) {
        let m = x.len() / self.cols;
        let out_rows = &mut out[..m * self.rows];
        match &self.w {
            Weights::F32(w) => gemm(w, self.cols, x, out_rows, self.rows),
            Weights::Stored { ty, bytes } => {
                let vdt = ty.vec_dot_type();
                let arow = vdt
                    .row_size(self.cols)
                    .expect("checked when the layer was loaded");
                let from_float = Kernels::get().of(vdt).from_float;
                let mut a = vec![0u8; m * arow];
                for (x, q) in x.chunks_exact(self.cols).zip(a.chunks_exact_mut(arow)) {
                    from_float(x, q);
                }
                gemm_stored(*ty, bytes, self.cols, &a, out_rows, self.rows);
            }
        }
        if let Some(b) = &self.b {
            for row in out[..m * self.rows].chunks_exact_mut(self.rows) {
                ops::add(row, b);
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Bias {
    No,
    Yes,
}

/// Activation rows per gemm task: the split depends only on the shapes,
/// never on the thread count, so every thread count gives the same bits.
const ROWS_PER_TASK: usize = 64;
/// Products smaller than this many multiply-adds stay on one thread.
const MIN_PARALLEL_WORK: usize = 1 << 20;

fn n_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(64)
    })
}

/// `out[i * ldo + j] = dot(w_j, a_i)` for the rows of `w` and `a`, each `k`
/// wide, on spinel-quant's f32 kernels; blocks of activation rows are
/// spread over the machine's threads.
pub(crate) fn gemm(w: &[f32], k: usize, a: &[f32], out: &mut [f32], ldo: usize) {
    let (w, a) = (bytemuck::cast_slice(w), bytemuck::cast_slice(a));
    gemm_stored(GgmlType::F32, w, k, a, out, ldo);
}

/// [`gemm`] for weights of type `ty` (rows of `ty.row_size(k)` bytes) and
/// activations already in its `vec_dot_type`.
fn gemm_stored(ty: GgmlType, w: &[u8], k: usize, a: &[u8], out: &mut [f32], ldo: usize) {
    let (Some(wrow), Some(arow)) = (ty.row_size(k), ty.vec_dot_type().row_size(k)) else {
        return;
    };
    if a.is_empty() || w.is_empty() || k == 0 {
        return;
    }
    let (m, n) = (a.len() / arow, w.len() / wrow);
    let kern = Kernels::get();
    // One task per block of rows: (activation rows, their output rows).
    let mut tasks = Vec::with_capacity(m.div_ceil(ROWS_PER_TASK));
    let mut rest = out;
    for (i, rows) in a.chunks(ROWS_PER_TASK * arow).enumerate() {
        let r = rows.len() / arow;
        let last = (i + 1) * ROWS_PER_TASK >= m;
        let take = if last {
            rest.len()
        } else {
            (r * ldo).min(rest.len())
        };
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(take);
        rest = tail;
        tasks.push((rows, head));
    }
    let run = |(rows, o): (&[u8], &mut [f32])| kern.gemm(ty, k, w, rows, o, ldo);
    let threads = n_threads().min(tasks.len());
    if threads <= 1 || m * n * k < MIN_PARALLEL_WORK {
        tasks.into_iter().for_each(run);
        return;
    }
    let mut per_thread: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, t) in tasks.into_iter().enumerate() {
        per_thread[i % threads].push(t);
    }
    std::thread::scope(|s| {
        for mine in per_thread {
            s.spawn(move || mine.into_iter().for_each(run));
        }
    });
}

/// LayerNorm over the last dimension.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub eps: f32,
}

impl LayerNorm {
    pub fn load(src: &dyn TensorSource, prefix: &str, dim: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm {
            w: load(src, &format!("{prefix}.weight"), &[dim])?,
            b: load(src, &format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }

    /// Normalises each row of `x` into `out` (same shape).
    pub fn forward(&self, x: &[f32], out: &mut [f32]) {
        let d = self.w.len();
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mean = xr.iter().map(|&v| f64::from(v)).sum::<f64>() / d as f64;
            let var = xr
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / d as f64;
            let inv = 1.0 / (var + f64::from(self.eps)).sqrt();
            for i in 0..d {
                let n = ((f64::from(xr[i]) - mean) * inv) as f32;
                or[i] = n * self.w[i] + self.b[i];
            }
        }
    }

    pub fn forward_inplace(&self, x: &mut [f32]) {
        let d = self.w.len();
        let mut tmp = vec![0f32; d];
        for row in x.chunks_exact_mut(d) {
            self.forward(row, &mut tmp);
            row.copy_from_slice(&tmp);
        }
    }
}

/// erf(x) to ~1e-15 relative (W. J. Cody's rational approximations are
/// overkill here; this uses the series for |x| < 2.5 and the continued
/// fraction of erfc beyond, both in f64).
pub(crate) fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.5 {
        // erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
        // At |x| < 2.5 the terms fall below 1e-17 of the sum within 60
        // terms; the fixed count keeps the loop bounded (x = 0 included).
        let x2 = a * a;
        let (mut term, mut sum) = (a, a);
        for n in 1..=80 {
            let n = f64::from(n);
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if a < 6.0 {
        // erfc(x) = e^{-x²}/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + …)))), evaluated backwards.
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (f64::from(k) / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
    } else {
        1.0
    };
    if x < 0.0 { -r } else { r }
}

/// Exact GELU: x · Φ(x).
pub(crate) fn gelu(x: f32) -> f32 {
    let x64 = f64::from(x);
    (0.5 * x64 * (1.0 + erf(x64 * std::f64::consts::FRAC_1_SQRT_2))) as f32
}

/// Per-token 2-D RoPE table: `cs[t * hd + 2j] = cos`, `+1 = sin`.
pub(crate) type RopeTable = [f32];

/// One pre-LN ViT encoder layer.
#[derive(Debug)]
pub(crate) struct EncoderLayer {
    pub ln1: LayerNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub ln2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    /// tanh of the gates of a gated layer (Mllama's global encoder).
    pub gate_attn: Option<f32>,
    pub gate_ffn: Option<f32>,
}

/// Per-layer shapes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub eps: f32,
    pub attn_bias: Bias,
    pub gated: bool,
}

impl EncoderLayer {
    pub fn load(src: &dyn TensorSource, p: &str, d: LayerDims) -> Result<EncoderLayer> {
        let h = d.hidden;
        let lin = |name: &str, rows, cols, bias| {
            Linear::load(src, &format!("{p}.{name}"), rows, cols, bias)
        };
        Ok(EncoderLayer {
            ln1: LayerNorm::load(src, &format!("{p}.input_layernorm"), h, d.eps)?,
            q: lin("self_attn.q_proj", h, h, d.attn_bias)?,
            k: lin("self_attn.k_proj", h, h, d.attn_bias)?,
            v: lin("self_attn.v_proj", h, h, d.attn_bias)?,
            o: lin("self_attn.o_proj", h, h, d.attn_bias)?,
            ln2: LayerNorm::load(src, &format!("{p}.post_attention_layernorm"), h, d.eps)?,
            fc1: lin("mlp.fc1", d.intermediate, h, Bias::Yes)?,
            fc2: lin("mlp.fc2", h, d.intermediate, Bias::Yes)?,
            gate_attn: if d.gated {
                Some(load_gate(src, &format!("{p}.gate_attn"))?)
            } else {
                None
            },
            gate_ffn: if d.gated {
                Some(load_gate(src, &format!("{p}.gate_ffn"))?)
            } else {
                None
            },
        })
    }
}

/// Activations of an encoder over `s` tokens, sized once per encode.
pub(crate) struct Scratch {
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    ctx: Vec<f32>,
    out: Vec<f32>,
    mlp: Vec<f32>,
    qh: Vec<f32>,
    kh: Vec<f32>,
    vt: Vec<f32>,
    scores: Vec<f32>,
}

/// Query rows per block of attention scores (bounds the score buffer).
const QUERY_BLOCK: usize = 256;

impl Scratch {
    pub fn new(s: usize, hidden: usize, intermediate: usize, head_dim: usize) -> Scratch {
        Scratch {
            xn: vec![0.0; s * hidden],
            q: vec![0.0; s * hidden],
            k: vec![0.0; s * hidden],
            v: vec![0.0; s * hidden],
            ctx: vec![0.0; s * hidden],
            out: vec![0.0; s * hidden],
            mlp: vec![0.0; s * intermediate],
            qh: vec![0.0; s * head_dim],
            kh: vec![0.0; s * head_dim],
            vt: vec![0.0; s * head_dim],
            scores: vec![0.0; QUERY_BLOCK.min(s) * s],
        }
    }
}

/// Extra inputs of an encoder layer.
#[derive(Clone, Copy)]
pub(crate) struct LayerInputs<'a> {
    pub heads: usize,
    /// 2-D RoPE per token (`[s, head_dim]` cos/sin pairs), applied to q, k.
    pub rope: Option<&'a RopeTable>,
    /// Mllama: tokens whose pairs get the bias `f32::MIN` (both masked).
    pub masked: Option<&'a [bool]>,
}

impl EncoderLayer {
    /// `x[s, hidden]` through the layer, in place.
    pub fn forward(&self, x: &mut [f32], inp: LayerInputs<'_>, sc: &mut Scratch) {
        let hidden = self.q.cols;
        let s = x.len() / hidden;
        let n = s * hidden;
        self.ln1.forward(x, &mut sc.xn[..n]);
        self.q.forward(&sc.xn[..n], &mut sc.q[..n]);
        self.k.forward(&sc.xn[..n], &mut sc.k[..n]);
        self.v.forward(&sc.xn[..n], &mut sc.v[..n]);
        if let Some(cs) = inp.rope {
            let hd = hidden / inp.heads;
            for t in 0..s {
                let c = &cs[t * hd..(t + 1) * hd];
                ops::rope(&mut sc.q[t * hidden..(t + 1) * hidden], c);
                ops::rope(&mut sc.k[t * hidden..(t + 1) * hidden], c);
            }
        }
        attention(sc, s, hidden, inp);
        self.o.forward(&sc.ctx[..n], &mut sc.out[..n]);
        residual(x, &sc.out[..n], self.gate_attn);
        self.ln2.forward(x, &mut sc.xn[..n]);
        let m = s * self.fc1.rows;
        self.fc1.forward(&sc.xn[..n], &mut sc.mlp[..m]);
        sc.mlp[..m].iter_mut().for_each(|v| *v = gelu(*v));
        self.fc2.forward(&sc.mlp[..m], &mut sc.out[..n]);
        residual(x, &sc.out[..n], self.gate_ffn);
    }
}

fn residual(x: &mut [f32], y: &[f32], gate: Option<f32>) {
    match gate {
        Some(g) => x.iter_mut().zip(y).for_each(|(a, &b)| *a += g * b),
        None => ops::add(x, y),
    }
}

/// Multi-head attention of `sc.q/k/v` into `sc.ctx`, scale hd^-0.5.
fn attention(sc: &mut Scratch, s: usize, hidden: usize, inp: LayerInputs<'_>) {
    let hd = hidden / inp.heads;
    let scale = (hd as f32).powf(-0.5);
    for h in 0..inp.heads {
        for t in 0..s {
            let src = t * hidden + h * hd;
            sc.qh[t * hd..(t + 1) * hd].copy_from_slice(&sc.q[src..src + hd]);
            sc.kh[t * hd..(t + 1) * hd].copy_from_slice(&sc.k[src..src + hd]);
            for d in 0..hd {
                sc.vt[d * s + t] = sc.v[src + d];
            }
        }
        for q0 in (0..s).step_by(QUERY_BLOCK) {
            let nq = QUERY_BLOCK.min(s - q0);
            let scores = &mut sc.scores[..nq * s];
            gemm(
                &sc.kh[..s * hd],
                hd,
                &sc.qh[q0 * hd..(q0 + nq) * hd],
                scores,
                s,
            );
            for (i, row) in scores.chunks_exact_mut(s).enumerate() {
                row.iter_mut().for_each(|v| *v *= scale);
                if let Some(m) = inp.masked {
                    if m[q0 + i] {
                        row.iter_mut()
                            .zip(m)
                            .filter(|(_, mj)| **mj)
                            .for_each(|(v, _)| *v += f32::MIN);
                    }
                }
                softmax(row);
            }
            let out = &mut sc.ctx[q0 * hidden + h * hd..];
            gemm(&sc.vt[..hd * s], s, scores, out, hidden);
        }
    }
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Cuts `[n, c, size, size]` images into `patch`×`patch` patches,
/// row-major, each flattened as (channel, ky, kx): `[n · g², c · patch²]`.
pub(crate) fn patches(pixels: &[f32], n: usize, c: usize, size: usize, patch: usize) -> Vec<f32> {
    let g = size / patch;
    let pl = c * patch * patch;
    let mut out = vec![0f32; n * g * g * pl];
    for t in 0..n {
        for py in 0..g {
            for px in 0..g {
                let dst = &mut out[((t * g + py) * g + px) * pl..][..pl];
                for ch in 0..c {
                    for ky in 0..patch {
                        let src = ((t * c + ch) * size + py * patch + ky) * size + px * patch;
                        let d = (ch * patch + ky) * patch;
                        dst[d..d + patch].copy_from_slice(&pixels[src..src + patch]);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threaded_gemm_matches_a_plain_product() {
        // Big enough for the threaded path; output rows strided (ldo > n)
        // and a partial last block.
        let (m, n, k, ldo) = (300, 64, 130, 70);
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
        let a: Vec<f32> = (0..m * k).map(val).collect();
        let w: Vec<f32> = (0..n * k).map(|i| val(i + 13)).collect();
        let mut out = vec![f32::NAN; (m - 1) * ldo + n];
        gemm(&w, k, &a, &mut out, ldo);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|t| f64::from(a[i * k + t]) * f64::from(w[j * k + t]))
                    .sum();
                let got = out[i * ldo + j];
                assert!(
                    (f64::from(got) - want).abs() < 1e-3,
                    "({i},{j}): {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn erf_and_gelu_match_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (-1.5, -0.966_105_146_475_310_7),
        ] {
            assert!(
                (erf(x) - want).abs() < 1e-12,
                "erf({x}) = {} vs {want}",
                erf(x)
            );
        }
        assert_eq!(gelu(0.0), 0.0);
        assert!((f64::from(gelu(1.0)) - 0.841_344_746_068_542_9).abs() < 1e-6);
        assert!((gelu(-3.0) + 0.004_049_95).abs() < 1e-6);
    }
}
