//! Synthetic checkpoints: large GGUF files with real shapes and seeded
//! random Q8_0 weights, cheap to make, for testing and measuring models
//! larger than memory (streaming, expert paging) without downloading one.
//!
//! Weights are random but valid Q8_0 blocks (scales around `1/√dim`, so
//! activations stay in range); tensors are cut at random block offsets out
//! of one random pool, which keeps generation at disk speed. The files are
//! made once and kept in the cache ([`cached`]); they are not checked in.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use spinel_quant::GgmlType;

use crate::gguf::{GgufError, GgufFile, GgufWriter};

/// The shape of a synthetic model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// File name stem in the cache.
    pub name: &'static str,
    pub n_vocab: usize,
    pub dim: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Dense feed-forward width (`llama`).
    pub n_ff: usize,
    /// `(experts, experts used per token, expert width)`: a `llama4` MoE
    /// model with an MoE feed-forward (and a shared expert) in every layer.
    pub moe: Option<(usize, usize, usize)>,
    pub seed: u64,
}

impl Spec {
    /// A ~2.1 GiB Llama (2.1 B parameters at Q8_0): dim 2048, 32 layers,
    /// GQA 32/8, FFN 8192, SmolLM2's vocabulary size.
    pub fn dense_2gib() -> Spec {
        Spec {
            name: "llama-2b-q8_0",
            n_vocab: 49152,
            dim: 2048,
            n_layer: 32,
            n_head: 32,
            n_head_kv: 8,
            n_ff: 8192,
            moe: None,
            seed: 1,
        }
    }

    /// Llama 3.2 1B's shape (dim 2048, 16 layers, GQA 32/8, FFN 8192) with
    /// SmolLM2's vocabulary size, so its tokenizer fits (~1.4 GiB at
    /// Q8_0): edge-sized speed measurements.
    pub fn llama32_1b() -> Spec {
        Spec {
            name: "llama3.2-1b-shape-q8_0",
            n_vocab: 49152,
            dim: 2048,
            n_layer: 16,
            n_head: 32,
            n_head_kv: 8,
            n_ff: 8192,
            moe: None,
            seed: 3,
        }
    }

    /// A ~2.1 GiB Llama 4-style MoE (2.1 B parameters, ~0.4 B active): 6
    /// layers of 32 experts of width 1536, top-1, plus a shared expert.
    pub fn moe_2gib() -> Spec {
        Spec {
            name: "llama4-moe-32x-q8_0",
            n_vocab: 49152,
            dim: 2048,
            n_layer: 6,
            n_head: 32,
            n_head_kv: 8,
            n_ff: 1536,
            moe: Some((32, 1, 1536)),
            seed: 2,
        }
    }

    /// Bytes of tensor data (without the header and padding).
    pub fn weight_bytes(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|(_, d, t)| {
                t.row_size(d[0] as usize).unwrap_or(0) as u64 * d[1..].iter().product::<u64>()
            })
            .sum()
    }

    /// `(name, dims, type)` of every tensor, in file order.
    fn tensors(&self) -> Vec<(String, Vec<u64>, GgmlType)> {
        let (d, v) = (self.dim as u64, self.n_vocab as u64);
        let hd = d / self.n_head as u64;
        let (q, kv) = (hd * self.n_head as u64, hd * self.n_head_kv as u64);
        let q8 = GgmlType::Q8_0;
        let f32 = GgmlType::F32;
        let mut t = vec![("token_embd.weight".to_string(), vec![d, v], q8)];
        for il in 0..self.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}.weight");
            t.push((n("attn_norm"), vec![d], f32));
            t.push((n("attn_q"), vec![d, q], q8));
            t.push((n("attn_k"), vec![d, kv], q8));
            t.push((n("attn_v"), vec![d, kv], q8));
            t.push((n("attn_output"), vec![q, d], q8));
            t.push((n("ffn_norm"), vec![d], f32));
            match self.moe {
                None => {
                    let ff = self.n_ff as u64;
                    t.push((n("ffn_gate"), vec![d, ff], q8));
                    t.push((n("ffn_up"), vec![d, ff], q8));
                    t.push((n("ffn_down"), vec![ff, d], q8));
                }
                Some((ne, _, ff)) => {
                    let (ne, ff) = (ne as u64, ff as u64);
                    t.push((n("ffn_gate_inp"), vec![d, ne], f32));
                    t.push((n("ffn_gate_exps"), vec![d, ff, ne], q8));
                    t.push((n("ffn_up_exps"), vec![d, ff, ne], q8));
                    t.push((n("ffn_down_exps"), vec![ff, d, ne], q8));
                    t.push((n("ffn_gate_shexp"), vec![d, ff], q8));
                    t.push((n("ffn_up_shexp"), vec![d, ff], q8));
                    t.push((n("ffn_down_shexp"), vec![ff, d], q8));
                }
            }
        }
        t.push(("output_norm.weight".into(), vec![d], f32));
        t.push(("output.weight".into(), vec![d, v], q8));
        t
    }

    /// Writes the model to `path`, copying the `tokenizer.*` metadata of
    /// `tokenizer` if given (its vocabulary must have `n_vocab` tokens).
    pub fn write(&self, path: &Path, tokenizer: Option<&GgufFile<'_>>) -> Result<(), GgufError> {
        let tensors = self.tensors();
        let mut rng = Rng(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        // Q8_0 blocks: an f16 scale and 32 int8. The scale makes a weight's
        // standard deviation ~1/√dim.
        const BLOCK: usize = 34;
        let largest = tensors
            .iter()
            .map(|(_, d, ty)| bytes_of(d, *ty))
            .max()
            .unwrap_or(0);
        let pool_blocks = largest / BLOCK + 1024;
        let mut pool = vec![0u8; pool_blocks * BLOCK];
        for c in pool.chunks_exact_mut(8) {
            c.copy_from_slice(&rng.next().to_le_bytes());
        }
        let base = 1.0 / (73.0 * (self.dim as f32).sqrt());
        for b in pool.chunks_exact_mut(BLOCK) {
            let jitter = 0.5 + (rng.next() % 1024) as f32 / 1024.0;
            let d = half::f16::from_f32(base * jitter);
            b[..2].copy_from_slice(&d.to_le_bytes());
        }
        let a = self.moe.is_some();
        let arch = if a { "llama4" } else { "llama" };
        let mut w = GgufWriter::new();
        let k = |s: &str| format!("{arch}.{s}");
        w.add_kv("general.architecture", arch)?;
        w.add_kv("general.name", format!("synthetic {}", self.name))?;
        w.add_kv("general.file_type", 7u32)?;
        w.add_kv(k("context_length"), 4096u32)?;
        w.add_kv(k("embedding_length"), self.dim as u32)?;
        w.add_kv(k("block_count"), self.n_layer as u32)?;
        w.add_kv(k("feed_forward_length"), self.n_ff as u32)?;
        w.add_kv(k("attention.head_count"), self.n_head as u32)?;
        w.add_kv(k("attention.head_count_kv"), self.n_head_kv as u32)?;
        w.add_kv(k("attention.layer_norm_rms_epsilon"), 1e-5f32)?;
        w.add_kv(k("rope.freq_base"), 10000.0f32)?;
        if let Some((ne, used, ff)) = self.moe {
            w.add_kv(k("expert_count"), ne as u32)?;
            w.add_kv(k("expert_used_count"), used as u32)?;
            w.add_kv(k("expert_feed_forward_length"), ff as u32)?;
            w.add_kv(k("interleave_moe_layer_step"), 1u32)?;
        }
        if let Some(t) = tokenizer {
            for (key, value) in t.metadata().iter() {
                if key.starts_with("tokenizer.") {
                    w.add_kv(key, value.clone())?;
                }
            }
        }
        for (name, dims, ty) in &tensors {
            let n = bytes_of(dims, *ty);
            let data: Cow<'_, [u8]> = if *ty == GgmlType::F32 {
                // Norm weights near 1; router logits of about unit size.
                let (center, spread) = if name.contains("gate_inp") {
                    (0.0, 0.04)
                } else {
                    (1.0, 0.05)
                };
                (0..n / 4)
                    .flat_map(|_| {
                        let r = (rng.next() % 2001) as f32 / 1000.0 - 1.0;
                        (center + r * spread).to_le_bytes()
                    })
                    .collect::<Vec<u8>>()
                    .into()
            } else {
                let start = (rng.next() as usize % (pool_blocks - n / BLOCK)) * BLOCK;
                Cow::Borrowed(&pool[start..start + n])
            };
            w.add_tensor(name.clone(), dims, *ty, data)?;
        }
        w.write_file(path)
    }
}

fn bytes_of(dims: &[u64], ty: GgmlType) -> usize {
    ty.row_size(dims[0] as usize).unwrap_or(0) * dims[1..].iter().product::<u64>() as usize
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The file of `spec` in the cache (`<cache>/synthetic/<name>.gguf`),
/// written first if it is not there (to a temporary name, then renamed, so
/// an interrupted run leaves no half file).
pub fn cached(spec: &Spec, tokenizer: Option<&GgufFile<'_>>) -> Result<PathBuf, GgufError> {
    let dir = crate::cache::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("synthetic");
    let path = dir.join(format!("{}.gguf", spec.name));
    if path.exists() {
        return Ok(path);
    }
    let io = |source| GgufError::Io {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let tmp = dir.join(format!("{}.{}.tmp", spec.name, std::process::id()));
    spec.write(&tmp, tokenizer)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(path)
}
