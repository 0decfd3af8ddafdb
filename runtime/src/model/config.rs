//! Hyperparameters, read from GGUF metadata under llama.cpp's key names.
//!
//! Keys are `{arch}.…` with `arch` = `general.architecture`. Where llama.cpp
//! hard-codes a Llama 4 constant, Spinel uses the same default but lets a key
//! override it, because Hugging Face configs make these constants
//! per-model (`attention_chunk_size`, `floor_scale`, `attn_scale`,
//! `no_rope_layer_interval`, `use_qk_norm`):
//!
//! | key (`llama4.` …)               | meaning                                       | default   |
//! |---------------------------------|-----------------------------------------------|-----------|
//! | `attention.chunk_size`          | chunked-attention window on RoPE layers        | 8192      |
//! | `attention.temperature_length`  | `floor_scale` of attention temperature tuning  | 8192      |
//! | `attention.temperature_scale`   | `attn_scale` (0 turns tuning off)              | 0.1       |
//! | `no_rope_layer_step`            | every n-th layer is NoPE with full attention   | 4         |
//! | `use_qk_norm`                   | weightless RMS norm of q and k on RoPE layers  | experts ≠ 128 |
//!
//! As in llama.cpp, `llama4.attention.sliding_window` = 0 turns chunking,
//! NoPE layers and temperature tuning off (RoPE and full attention on every
//! layer).

use crate::gguf::{GgufFile, Metadata, Value};

use super::error::ModelError;

type Result<T> = std::result::Result<T, ModelError>;

/// The architecture family (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `llama`: Llama 1, 2, 3, 3.1, 3.2, 3.3 and the many models that share the
    /// layout (SmolLM2, TinyLlama, Mistral 7B …).
    Llama,
    /// `llama4`: the Llama 4 text model (MoE, iRoPE, chunked attention).
    Llama4,
    /// `mllama`: the Llama 3.2 Vision text model, Llama 3 layers with
    /// gated cross-attention blocks (to the image) in place of some.
    Mllama,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Llama4 => "llama4",
            Arch::Mllama => "mllama",
        }
    }
}

/// Mixture-of-experts layout (Llama 4).
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Experts per MoE layer.
    pub n_expert: usize,
    /// Experts each token is routed to (top-k).
    pub n_expert_used: usize,
    /// Hidden width of each expert and of the shared expert.
    pub n_ff_expert: usize,
    /// Layer `il` is an MoE layer when `(il + 1) % layer_step == 0`.
    pub layer_step: usize,
}

/// Llama 4 attention temperature tuning on NoPE layers: queries at position
/// `p` are scaled by `1 + scale · ln(1 + ⌊(p + 1) / floor_scale⌋)`.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnTemperature {
    pub floor_scale: usize,
    pub scale: f32,
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: Arch,
    /// Vocabulary size (rows of `token_embd`).
    pub n_vocab: usize,
    /// Width of the residual stream (`embedding_length`).
    pub dim: usize,
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (`n_head` for multi-head attention, fewer for GQA).
    pub n_head_kv: usize,
    /// Width of one head (`attention.key_length`, = value length = RoPE dims).
    pub head_dim: usize,
    /// Hidden width of the dense feed-forward layers.
    pub n_ff: usize,
    /// The context length the model was trained for.
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_freq_base: f32,
    /// Linear RoPE scaling: positions are multiplied by this (1 = none).
    pub rope_freq_scale: f32,
    pub moe: Option<MoeConfig>,
    /// Llama 4 iRoPE: layer `il` has no RoPE when `(il + 1) % step == 0`.
    pub no_rope_layer_step: Option<usize>,
    /// Llama 4 chunked attention on RoPE layers: a query at `p` sees keys in
    /// `[chunk · ⌊p / chunk⌋, p]`.
    pub attn_chunk_size: Option<usize>,
    /// Llama 4 weightless RMS norm of q and k after RoPE (RoPE layers only).
    pub qk_norm: bool,
    pub attn_temperature: Option<AttnTemperature>,
    /// The online rotations of a `spinel quantize --rotate-online` file.
    pub rotation: OnlineRotation,
    /// Mllama: the layers that are cross-attention blocks (ascending).
    pub cross_attention_layers: Vec<usize>,
}

/// Online rotations the forward pass applies (`spinel.rotation.*` keys;
/// see `quantize::rotate`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnlineRotation {
    /// An FWHT of each query and key head after RoPE.
    pub r3: bool,
    /// An FWHT of the SwiGLU output before the down product.
    pub r4: bool,
}

impl Config {
    /// Reads the hyperparameters of `file` and checks them for consistency.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Config> {
        let md = file.metadata();
        let arch_name = md.get_str("general.architecture")?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "llama4" => Arch::Llama4,
            "mllama" => Arch::Mllama,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    arch: other.to_string(),
                });
            }
        };
        let k = |name: &str| format!("{arch_name}.{name}");

        let dim = uint(md, &k("embedding_length"))?;
        let n_layer = uint(md, &k("block_count"))?;
        let n_head = uint(md, &k("attention.head_count"))?;
        let n_head_kv = opt_uint(md, &k("attention.head_count_kv"))?.unwrap_or(n_head);
        let n_ff = uint(md, &k("feed_forward_length"))?;
        let n_ctx_train = uint(md, &k("context_length"))?;
        let rms_eps = float(md, &k("attention.layer_norm_rms_epsilon"))?;
        let rope_freq_base = opt_float(md, &k("rope.freq_base"))?.unwrap_or(10000.0);

        if n_head % n_head_kv != 0 {
            return Err(bad(
                &k("attention.head_count_kv"),
                format!("{n_head} query heads are not a multiple of {n_head_kv} KV heads"),
            ));
        }
        let head_dim = match opt_uint(md, &k("attention.key_length"))? {
            Some(d) => d,
            None if dim % n_head == 0 => dim / n_head,
            None => {
                return Err(bad(
                    &k("attention.head_count"),
                    format!("embedding length {dim} is not a multiple of {n_head} heads"),
                ));
            }
        };
        if let Some(v) = opt_uint(md, &k("attention.value_length"))? {
            if v != head_dim {
                return Err(ModelError::Unsupported {
                    what: format!("value length {v} different from key length {head_dim}"),
                });
            }
        }
        if head_dim % 2 != 0 {
            return Err(bad(
                &k("attention.key_length"),
                format!("head size {head_dim} is odd; RoPE rotates pairs"),
            ));
        }
        if let Some(n_rot) = opt_uint(md, &k("rope.dimension_count"))? {
            if n_rot != head_dim {
                return Err(ModelError::Unsupported {
                    what: format!("partial RoPE ({n_rot} of {head_dim} head dimensions)"),
                });
            }
        }
        // Sizes derived from these are multiplied together; keep them far
        // from overflow (the largest real models are well inside).
        const MAX_WIDTH: usize = 1 << 20;
        if n_layer > 4096 {
            return Err(bad(&k("block_count"), "implausibly large".into()));
        }
        for (name, v) in [
            ("embedding_length", dim),
            ("attention.key_length", head_dim),
            ("attention.head_count", n_head.saturating_mul(head_dim)),
            ("feed_forward_length", n_ff),
        ] {
            if v > MAX_WIDTH {
                return Err(bad(&k(name), "implausibly large".into()));
            }
        }

        let rope_freq_scale = match opt_str(md, &k("rope.scaling.type"))? {
            None | Some("none") => {
                let linear = opt_float(md, &k("rope.scale_linear"))?.unwrap_or(1.0);
                positive(&k("rope.scale_linear"), linear)?;
                1.0 / linear
            }
            Some("linear") => {
                let factor = opt_float(md, &k("rope.scaling.factor"))?.unwrap_or(1.0);
                positive(&k("rope.scaling.factor"), factor)?;
                1.0 / factor
            }
            Some(other) => {
                return Err(ModelError::Unsupported {
                    what: format!("RoPE scaling type {other:?}"),
                });
            }
        };
        positive(&k("rope.freq_base"), rope_freq_base)?;
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(bad(
                &k("attention.layer_norm_rms_epsilon"),
                format!("{rms_eps} is not a non-negative number"),
            ));
        }

        let n_expert = opt_uint_or_zero(md, &k("expert_count"))?.unwrap_or(0);
        let n_vocab = vocab_size(file, md, &k("vocab_size"))?;

        let mut config = Config {
            arch,
            n_vocab,
            dim,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_ctx_train,
            rms_eps,
            rope_freq_base,
            rope_freq_scale,
            moe: None,
            no_rope_layer_step: None,
            attn_chunk_size: None,
            qk_norm: false,
            attn_temperature: None,
            rotation: OnlineRotation::default(),
            cross_attention_layers: Vec::new(),
        };
        config.rotation = online_rotation(md, n_expert, n_ff, head_dim)?;

        match arch {
            Arch::Llama | Arch::Mllama => {
                if n_expert > 0 {
                    return Err(ModelError::Unsupported {
                        what: format!("llama with {n_expert} experts (Mixtral-style MoE)"),
                    });
                }
            }
            Arch::Llama4 => {
                if n_expert == 0 {
                    return Err(bad(&k("expert_count"), "llama4 needs experts".into()));
                }
                let n_expert_used = uint(md, &k("expert_used_count"))?;
                if n_expert_used > n_expert {
                    return Err(bad(
                        &k("expert_used_count"),
                        format!("{n_expert_used} used of only {n_expert} experts"),
                    ));
                }
                let n_ff_expert = uint(md, &k("expert_feed_forward_length"))?;
                if n_ff_expert > 1 << 20 || n_expert > 1 << 12 {
                    return Err(bad(&k("expert_count"), "implausibly large experts".into()));
                }
                let layer_step = opt_uint(md, &k("interleave_moe_layer_step"))?.unwrap_or(1);
                config.moe = Some(MoeConfig {
                    n_expert,
                    n_expert_used,
                    n_ff_expert,
                    layer_step,
                });
                config.qk_norm = opt_bool(md, &k("use_qk_norm"))?.unwrap_or(n_expert != 128);
                let no_swa = opt_uint_or_zero(md, &k("attention.sliding_window"))? == Some(0);
                if !no_swa {
                    config.attn_chunk_size =
                        Some(opt_uint(md, &k("attention.chunk_size"))?.unwrap_or(8192));
                    config.no_rope_layer_step =
                        Some(opt_uint(md, &k("no_rope_layer_step"))?.unwrap_or(4));
                    let floor_scale =
                        opt_uint(md, &k("attention.temperature_length"))?.unwrap_or(8192);
                    let scale = opt_float(md, &k("attention.temperature_scale"))?.unwrap_or(0.1);
                    if !scale.is_finite() {
                        return Err(bad(
                            &k("attention.temperature_scale"),
                            format!("{scale} is not finite"),
                        ));
                    }
                    if scale != 0.0 {
                        config.attn_temperature = Some(AttnTemperature { floor_scale, scale });
                    }
                }
            }
        }
        if arch == Arch::Mllama {
            config.cross_attention_layers =
                cross_attention_layers(md, &k("attention.cross_attention_layers"), n_layer)?;
        }
        Ok(config)
    }

    /// Whether layer `il` is an mllama cross-attention block.
    pub fn layer_is_cross(&self, il: usize) -> bool {
        self.cross_attention_layers.binary_search(&il).is_ok()
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Whether layer `il` applies RoPE (false on Llama 4 NoPE layers).
    pub fn layer_uses_rope(&self, il: usize) -> bool {
        self.no_rope_layer_step
            .is_none_or(|step| (il + 1) % step != 0)
    }

    /// The attention window of layer `il`: `Some(chunk)` for chunked
    /// attention, `None` for full causal attention.
    pub fn layer_chunk(&self, il: usize) -> Option<usize> {
        self.attn_chunk_size.filter(|_| self.layer_uses_rope(il))
    }

    /// Whether layer `il` is a mixture-of-experts layer.
    pub fn layer_is_moe(&self, il: usize) -> bool {
        self.moe
            .as_ref()
            .is_some_and(|m| (il + 1) % m.layer_step == 0)
    }

    /// The query scale of attention temperature tuning at position `pos`, on
    /// layer `il` (1 where tuning does not apply).
    pub fn attn_temperature_at(&self, il: usize, pos: usize) -> f32 {
        match &self.attn_temperature {
            Some(t) if !self.layer_uses_rope(il) => {
                let steps = ((pos + 1) / t.floor_scale) as f64;
                (1.0 + t.scale as f64 * steps.ln_1p()) as f32
            }
            _ => 1.0,
        }
    }
}

/// Reads the `spinel.rotation.*` keys; refuses a file asking for an online
/// rotation this runtime cannot apply (or one it does not know).
fn online_rotation(
    md: &Metadata<'_>,
    n_expert: usize,
    n_ff: usize,
    head_dim: usize,
) -> Result<OnlineRotation> {
    use crate::quantize::rotate::keys;
    use spinel_quant::Hadamard;
    if let Some(k) = md
        .keys()
        .find(|k| k.starts_with(keys::PREFIX) && !keys::ALL.contains(k))
    {
        return Err(ModelError::Unsupported {
            what: format!("rotation key {k:?} (written by a newer Spinel?)"),
        });
    }
    let r = OnlineRotation {
        r3: opt_bool(md, keys::R3)?.unwrap_or(false),
        r4: opt_bool(md, keys::R4)?.unwrap_or(false),
    };
    if r.r4 && n_expert > 0 {
        return Err(ModelError::Unsupported {
            what: "online rotation R4 on a mixture-of-experts model".into(),
        });
    }
    if r.r4 && !Hadamard::supports(n_ff) {
        return Err(ModelError::Unsupported {
            what: format!("online rotation R4: no Hadamard transform of width {n_ff}"),
        });
    }
    if r.r3 && !Hadamard::supports(head_dim) {
        return Err(ModelError::Unsupported {
            what: format!("online rotation R3: no Hadamard transform of width {head_dim}"),
        });
    }
    Ok(r)
}

/// The cross-attention layers of an mllama file: distinct, in range, sorted.
fn cross_attention_layers(md: &Metadata<'_>, key: &str, n_layer: usize) -> Result<Vec<usize>> {
    let layers: Vec<u32> = md
        .value(key)?
        .as_array()
        .and_then(|a| a.to_vec::<u32>())
        .ok_or_else(|| bad(key, "not an array of u32".into()))?;
    let mut out: Vec<usize> = layers.iter().map(|&l| l as usize).collect();
    out.sort_unstable();
    out.dedup();
    if out.len() != layers.len() || out.last().is_some_and(|&l| l >= n_layer) {
        return Err(bad(
            key,
            format!("{layers:?}: layers out of range or listed twice ({n_layer} layers)"),
        ));
    }
    Ok(out)
}

fn bad(key: &str, reason: String) -> ModelError {
    ModelError::BadHyperparameter {
        key: key.to_string(),
        reason,
    }
}

fn positive(key: &str, v: f32) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(bad(key, format!("{v} is not a positive number")))
    }
}

/// A required nonzero integer that fits `usize`.
fn uint(md: &Metadata<'_>, key: &str) -> Result<usize> {
    let v = md.get_uint(key)?;
    let v = usize::try_from(v).map_err(|_| bad(key, format!("{v} is too large")))?;
    if v == 0 {
        return Err(bad(key, "must not be zero".into()));
    }
    Ok(v)
}

/// An optional integer that fits `usize` (zero allowed).
fn opt_uint_or_zero(md: &Metadata<'_>, key: &str) -> Result<Option<usize>> {
    if !md.contains_key(key) {
        return Ok(None);
    }
    let v = md.get_uint(key)?;
    usize::try_from(v)
        .map(Some)
        .map_err(|_| bad(key, format!("{v} is too large")))
}

/// An optional nonzero integer that fits `usize`.
fn opt_uint(md: &Metadata<'_>, key: &str) -> Result<Option<usize>> {
    match opt_uint_or_zero(md, key)? {
        Some(0) => Err(bad(key, "must not be zero".into())),
        v => Ok(v),
    }
}

/// A float stored as `FLOAT32` or `FLOAT64`.
fn float(md: &Metadata<'_>, key: &str) -> Result<f32> {
    match md.value(key)? {
        Value::F32(v) => Ok(*v),
        Value::F64(v) => Ok(*v as f32),
        _ => Ok(md.get_f32(key)?), // the getter's error names the types
    }
}

fn opt_float(md: &Metadata<'_>, key: &str) -> Result<Option<f32>> {
    if md.contains_key(key) {
        float(md, key).map(Some)
    } else {
        Ok(None)
    }
}

fn opt_str<'m>(md: &'m Metadata<'_>, key: &str) -> Result<Option<&'m str>> {
    if md.contains_key(key) {
        Ok(Some(md.get_str(key)?))
    } else {
        Ok(None)
    }
}

fn opt_bool(md: &Metadata<'_>, key: &str) -> Result<Option<bool>> {
    if md.contains_key(key) {
        Ok(Some(md.get_bool(key)?))
    } else {
        Ok(None)
    }
}

/// `{arch}.vocab_size` if present, else the row count of `token_embd`.
fn vocab_size(file: &GgufFile<'_>, md: &Metadata<'_>, key: &str) -> Result<usize> {
    if let Some(v) = opt_uint(md, key)? {
        return Ok(v);
    }
    let t = file
        .tensor("token_embd.weight")
        .ok_or_else(|| ModelError::MissingTensor {
            name: "token_embd.weight".into(),
        })?;
    match t.dims() {
        [_, n] => usize::try_from(*n).map_err(|_| bad(key, format!("{n} is too large"))),
        d => Err(ModelError::TensorShape {
            name: "token_embd.weight".into(),
            expected: vec![0, 0],
            found: d.to_vec(),
        }),
    }
}
