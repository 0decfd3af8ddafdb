//! `LlamaForCausalLM` → `llama` and `Llama4ForCausalLM` (text) → `llama4`,
//! following llama.cpp's `convert_hf_to_gguf.py` (`LlamaModel`,
//! `Llama4Model`, `TextModel.set_gguf_parameters`).
//!
//! Everything the config promises is checked against the checkpoint before
//! a byte is written: every tensor present with the shape the config
//! implies, and no checkpoint tensor left over.

use std::collections::{BTreeMap, BTreeSet};

use crate::gguf::Value;

use super::checkpoint::{Checkpoint, SourceTensor};
use super::config::HfConfig;
use super::error::{ConvertError, config_err};
use super::plan::{OutTensor, OutType, Recipe, tensor_type};

type Result<T> = std::result::Result<T, ConvertError>;

/// The GGUF architecture a checkpoint becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Llama4,
    /// Llama 3.2 Vision's text model: Llama 3 with cross-attention layers.
    Mllama,
}

impl Arch {
    /// `general.architecture`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Llama4 => "llama4",
            Arch::Mllama => "mllama",
        }
    }
}

/// The HF `architectures` names this converter reads, and what they become.
pub const ARCHITECTURES: [(&str, Arch); 5] = [
    ("LlamaForCausalLM", Arch::Llama),
    ("LLaMAForCausalLM", Arch::Llama),
    ("Llama4ForCausalLM", Arch::Llama4),
    // The multimodal checkpoint: its text model only (as llama.cpp's text
    // conversion does); vision tensors are left out.
    ("Llama4ForConditionalGeneration", Arch::Llama4),
    // Llama 3.2 Vision: the text model here, the tower in the mmproj.
    ("MllamaForConditionalGeneration", Arch::Mllama),
];

/// Metadata and tensors of the output file, before the tokenizer.
pub struct ModelPlan {
    pub kv: Vec<(String, Value<'static>)>,
    pub tensors: Vec<OutTensor>,
    /// Things the user should know (left-out tensors …).
    pub notes: Vec<String>,
}

/// Picks the architecture from `architectures` (the first one known).
pub fn detect_arch(cfg: &HfConfig) -> Result<(Arch, &str)> {
    for a in &cfg.architectures {
        if let Some((name, arch)) = ARCHITECTURES.iter().find(|(n, _)| n == a) {
            return Ok((*arch, name));
        }
    }
    Err(ConvertError::UnsupportedArchitecture {
        found: cfg.architectures.clone(),
    })
}

/// Tensors of the checkpoint by their llama.cpp-normalized name, with the
/// ones used so far.
struct Tensors<'c> {
    by_name: BTreeMap<String, &'c SourceTensor>,
    used: BTreeSet<String>,
}

impl<'c> Tensors<'c> {
    fn new(ckpt: &'c Checkpoint, notes: &mut Vec<String>) -> Tensors<'c> {
        let mut by_name = BTreeMap::new();
        let mut dropped = 0usize;
        for name in ckpt.names() {
            // llama.cpp drops these buffers (`prepare_tensors`).
            if name.ends_with(".rotary_emb.inv_freq")
                || name.ends_with(".attention.masked_bias")
                || name.ends_with(".attention.bias")
            {
                continue;
            }
            // Multimodal Llama 4: the vision tower and projector are not
            // part of the text model.
            if name.starts_with("vision_model.") || name.starts_with("multi_modal_projector.") {
                dropped += 1;
                continue;
            }
            let t = ckpt.get(name).expect("name from the checkpoint");
            by_name.insert(name.replace("language_model.", ""), t);
        }
        if dropped > 0 {
            notes.push(format!(
                "{dropped} vision tensors are not part of the text model (they go to the mmproj file)"
            ));
        }
        Tensors {
            by_name,
            used: BTreeSet::new(),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The tensor `name`, which must have `shape`.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<SourceTensor> {
        let t = self
            .by_name
            .get(name)
            .ok_or_else(|| ConvertError::MissingTensor {
                tensor: name.to_string(),
            })?;
        if t.shape != shape {
            return Err(ConvertError::ShapeMismatch {
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        self.used.insert(name.to_string());
        Ok((*t).clone())
    }

    /// Marks a tensor as deliberately not converted.
    fn skip(&mut self, name: &str) {
        self.used.insert(name.to_string());
    }

    /// The first tensor nobody took, if any.
    fn leftover(&self) -> Option<&str> {
        self.by_name
            .keys()
            .find(|k| !self.used.contains(*k))
            .map(String::as_str)
    }
}

/// Builds the output tensor list in llama.cpp's layout.
struct Builder<'c> {
    src: Tensors<'c>,
    out: OutType,
    tensors: Vec<OutTensor>,
}

impl Builder<'_> {
    fn push(&mut self, name: String, dims: Vec<u64>, recipe: Recipe, force_f32: bool) {
        let ty = tensor_type(&name, &dims, self.out, force_f32);
        self.tensors.push(OutTensor {
            name,
            dims,
            ty,
            recipe,
        });
    }

    /// A checkpoint tensor copied as is under a GGUF name.
    fn copy(&mut self, hf: &str, shape: &[usize], gguf: String) -> Result<()> {
        let src = self.src.take(hf, shape)?;
        self.push(gguf, ggml_dims(shape), Recipe::Copy(src), false);
        Ok(())
    }

    fn copy_f32(&mut self, hf: &str, shape: &[usize], gguf: String) -> Result<()> {
        let src = self.src.take(hf, shape)?;
        self.push(gguf, ggml_dims(shape), Recipe::Copy(src), true);
        Ok(())
    }

    /// A q/k projection (weight `[n_head·d, n]` or bias `[n_head·d]`),
    /// un-permuted.
    fn unpermute(&mut self, hf: &str, shape: &[usize], n_head: usize, gguf: String) -> Result<()> {
        let src = self.src.take(hf, shape)?;
        self.push(
            gguf,
            ggml_dims(shape),
            Recipe::UnpermuteHeads { src, n_head },
            false,
        );
        Ok(())
    }
}

/// PyTorch shape → GGUF dims (reversed).
fn ggml_dims(shape: &[usize]) -> Vec<u64> {
    shape.iter().rev().map(|&d| d as u64).collect()
}

fn usize_of(field: &str, v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| config_err(field, format!("{v} is too large")))
}

fn u32_of(field: &str, v: u64) -> Result<u32> {
    u32::try_from(v).map_err(|_| config_err(field, format!("{v} does not fit in 32 bits")))
}

/// The plan for a Llama or Llama 4 checkpoint.
pub fn plan(
    cfg: &HfConfig,
    ckpt: &Checkpoint,
    arch: Arch,
    out: OutType,
    model_name: &str,
) -> Result<ModelPlan> {
    let llama4 = arch == Arch::Llama4;
    let mut notes = Vec::new();
    let a = arch.name();
    let k = |key: &str| format!("{a}.{key}");

    if let Some(act) = cfg.hidden_act.as_deref() {
        if act != "silu" {
            return Err(ConvertError::Unsupported {
                what: format!("hidden_act {act:?} (Llama uses \"silu\")"),
            });
        }
    }

    let n_layer = cfg.required("num_hidden_layers", cfg.num_hidden_layers)?;
    let n_embd = cfg.required("hidden_size", cfg.hidden_size)?;
    let n_head = cfg.required("num_attention_heads", cfg.num_attention_heads)?;
    let n_head_kv = match cfg.num_key_value_heads {
        None => n_head,
        Some(v) => cfg.required("num_key_value_heads", Some(v))?,
    };
    if n_head % n_head_kv != 0 {
        return Err(config_err(
            "num_key_value_heads",
            format!("{n_head} attention heads are not a multiple of {n_head_kv} KV heads"),
        ));
    }
    let head_dim = match cfg.head_dim {
        Some(d) => cfg.required("head_dim", Some(d))?,
        None if n_embd % n_head == 0 => n_embd / n_head,
        None => {
            return Err(config_err(
                "head_dim",
                format!("missing, and hidden_size {n_embd} is not a multiple of {n_head} heads"),
            ));
        }
    };
    if head_dim % 2 != 0 {
        return Err(config_err(
            "head_dim",
            format!("{head_dim} is odd; RoPE rotates pairs"),
        ));
    }
    let n_vocab = cfg.required("vocab_size", cfg.vocab_size)?;
    let n_ff = if llama4 {
        cfg.required("intermediate_size_mlp", cfg.intermediate_size_mlp)?
    } else {
        cfg.required("intermediate_size", cfg.intermediate_size)?
    };
    let n_ctx = cfg
        .max_position_embeddings
        .unwrap_or(if llama4 { 4096 * 32 } else { 2048 });
    let eps = cfg.rms_norm_eps.unwrap_or(if llama4 { 1e-5 } else { 1e-6 });
    let rope = cfg.rope()?;
    let theta =
        rope.rope_theta
            .or(cfg.rope_theta)
            .unwrap_or(if llama4 { 500_000.0 } else { 10_000.0 });

    let mut kv: Vec<(String, Value<'static>)> = Vec::new();
    let mut put = |key: String, v: Value<'static>| kv.push((key, v));
    put("general.architecture".into(), a.into());
    put("general.type".into(), "model".into());
    put("general.name".into(), model_name.to_string().into());
    put(
        k("block_count"),
        u32_of("num_hidden_layers", n_layer)?.into(),
    );
    put(
        k("context_length"),
        u32_of("max_position_embeddings", n_ctx)?.into(),
    );
    put(k("embedding_length"), u32_of("hidden_size", n_embd)?.into());
    put(
        k("feed_forward_length"),
        u32_of("intermediate_size", n_ff)?.into(),
    );
    put(
        k("attention.head_count"),
        u32_of("num_attention_heads", n_head)?.into(),
    );
    put(
        k("attention.head_count_kv"),
        u32_of("num_key_value_heads", n_head_kv)?.into(),
    );

    let mut rope_freqs = None;
    match rope.kind() {
        None | Some("default") => {}
        Some(t) if t.eq_ignore_ascii_case("llama3") => {
            rope_freqs = Some(llama3_rope_factors(
                theta,
                head_dim as usize,
                rope.factor.unwrap_or(8.0),
                rope.low_freq_factor.unwrap_or(1.0),
                rope.high_freq_factor.unwrap_or(4.0),
                rope.original_max_position_embeddings.unwrap_or(8192.0),
            ));
        }
        Some("linear") => {
            let factor = rope
                .factor
                .ok_or_else(|| config_err("rope_scaling", "linear scaling without \"factor\""))?;
            put(k("rope.scaling.type"), "linear".into());
            put(k("rope.scaling.factor"), (factor as f32).into());
        }
        Some(other) => {
            return Err(ConvertError::Unsupported {
                what: format!("RoPE scaling type {other:?} (supported: default, linear, llama3)"),
            });
        }
    }
    put(k("rope.freq_base"), (theta as f32).into());
    put(k("attention.layer_norm_rms_epsilon"), (eps as f32).into());

    let mut moe = None;
    if llama4 {
        let n_expert = cfg.required("num_local_experts", cfg.num_local_experts)?;
        let n_used = cfg.num_experts_per_tok.unwrap_or(1);
        if n_used == 0 || n_used > n_expert {
            return Err(config_err(
                "num_experts_per_tok",
                format!("{n_used} experts per token of {n_expert}"),
            ));
        }
        put(
            k("expert_count"),
            u32_of("num_local_experts", n_expert)?.into(),
        );
        put(
            k("expert_used_count"),
            u32_of("num_experts_per_tok", n_used)?.into(),
        );
        let n_ff_exp = cfg.required("intermediate_size", cfg.intermediate_size)?;
        let step = cfg.interleave_moe_layer_step.unwrap_or(1);
        moe = Some((n_expert, n_ff_exp, step));
    }
    // transformers' LlamaConfig / Llama4TextConfig always have `head_dim`
    // (hidden_size / heads when config.json has none), and llama.cpp's
    // converter reads the config through them, so it always writes these.
    put(
        k("attention.key_length"),
        u32_of("head_dim", head_dim)?.into(),
    );
    put(
        k("attention.value_length"),
        u32_of("head_dim", head_dim)?.into(),
    );
    put("general.file_type".into(), out.file_type().into());
    put(k("vocab_size"), u32_of("vocab_size", n_vocab)?.into());
    put(
        k("rope.dimension_count"),
        u32_of("head_dim", head_dim)?.into(),
    );

    let mut moe_layers = vec![false; n_layer as usize];
    if let Some((_, n_ff_exp, step)) = moe {
        put(
            k("interleave_moe_layer_step"),
            u32_of("interleave_moe_layer_step", step)?.into(),
        );
        put(
            k("expert_feed_forward_length"),
            u32_of("intermediate_size", n_ff_exp)?.into(),
        );
        for (i, m) in moe_layers.iter_mut().enumerate() {
            *m = step > 0 && (i as u64 + 1) % step == 0;
        }
        if let Some(listed) = &cfg.moe_layers {
            let expected: Vec<u64> = (0..n_layer).filter(|&i| moe_layers[i as usize]).collect();
            if *listed != expected {
                return Err(ConvertError::Unsupported {
                    what: format!(
                        "moe_layers {listed:?}: GGUF describes MoE layers by interleave_moe_layer_step={step}, which means {expected:?}"
                    ),
                });
            }
        }
        for (key, v) in llama4_attention_keys(cfg, n_layer as usize)? {
            put(k(key), v);
        }
    }
    let cross_layers = cross_attention_layers(cfg, arch, n_layer)?;
    if arch == Arch::Mllama {
        let l: Vec<u32> = cross_layers.iter().map(|&i| i as u32).collect();
        put(
            k("attention.cross_attention_layers"),
            crate::gguf::Array::from_scalars(&l).into(),
        );
    }
    put("general.quantization_version".into(), 2u32.into());

    // Tensors.
    let n_embd = usize_of("hidden_size", n_embd)?;
    let n_head = usize_of("num_attention_heads", n_head)?;
    let n_head_kv = usize_of("num_key_value_heads", n_head_kv)?;
    let head_dim = usize_of("head_dim", head_dim)?;
    let n_vocab = usize_of("vocab_size", n_vocab)?;
    let n_ff = usize_of("intermediate_size", n_ff)?;
    let q_dim = n_head * head_dim;
    let kv_dim = n_head_kv * head_dim;
    let attn_bias = cfg.attention_bias.unwrap_or(false);
    let mlp_bias = cfg.mlp_bias.unwrap_or(false);
    if llama4 && mlp_bias {
        return Err(ConvertError::Unsupported {
            what: "mlp_bias in a Llama 4 model".into(),
        });
    }

    let mut b = Builder {
        src: Tensors::new(ckpt, &mut notes),
        out,
        tensors: Vec::new(),
    };
    if let Some(f) = rope_freqs {
        b.push(
            "rope_freqs.weight".into(),
            vec![f.len() as u64],
            Recipe::Values(f),
            true,
        );
    }
    // Mllama's embedding has extra rows past the vocabulary (the image
    // token and 7 more); lm_head has vocab_size rows.
    let embd_rows = match b.src.by_name.get("model.embed_tokens.weight") {
        Some(t) if arch == Arch::Mllama && t.shape.len() == 2 && t.shape[0] >= n_vocab => {
            t.shape[0]
        }
        _ => n_vocab,
    };
    b.copy(
        "model.embed_tokens.weight",
        &[embd_rows, n_embd],
        "token_embd.weight".into(),
    )?;
    for (i, &is_moe) in moe_layers.iter().enumerate() {
        if cross_layers.contains(&i) {
            let dims = CrossDims {
                n_embd,
                q_dim,
                kv_dim,
                head_dim,
                n_ff,
            };
            mllama_cross_layer(&mut b, i, dims)?;
            continue;
        }
        let hf = |s: &str| format!("model.layers.{i}.{s}");
        let gg = |s: &str| format!("blk.{i}.{s}");
        b.copy(
            &hf("input_layernorm.weight"),
            &[n_embd],
            gg("attn_norm.weight"),
        )?;
        let (q, kk) = (hf("self_attn.q_proj.weight"), hf("self_attn.k_proj.weight"));
        if llama4 {
            // Llama 4 rotates adjacent pairs already: no permutation.
            b.copy(&q, &[q_dim, n_embd], gg("attn_q.weight"))?;
            b.copy(&kk, &[kv_dim, n_embd], gg("attn_k.weight"))?;
        } else {
            b.unpermute(&q, &[q_dim, n_embd], n_head, gg("attn_q.weight"))?;
            b.unpermute(&kk, &[kv_dim, n_embd], n_head_kv, gg("attn_k.weight"))?;
        }
        b.copy(
            &hf("self_attn.v_proj.weight"),
            &[kv_dim, n_embd],
            gg("attn_v.weight"),
        )?;
        b.copy(
            &hf("self_attn.o_proj.weight"),
            &[n_embd, q_dim],
            gg("attn_output.weight"),
        )?;
        if attn_bias {
            let (qb, kb) = (hf("self_attn.q_proj.bias"), hf("self_attn.k_proj.bias"));
            if llama4 {
                b.copy(&qb, &[q_dim], gg("attn_q.bias"))?;
                b.copy(&kb, &[kv_dim], gg("attn_k.bias"))?;
            } else {
                b.unpermute(&qb, &[q_dim], n_head, gg("attn_q.bias"))?;
                b.unpermute(&kb, &[kv_dim], n_head_kv, gg("attn_k.bias"))?;
            }
            b.copy(&hf("self_attn.v_proj.bias"), &[kv_dim], gg("attn_v.bias"))?;
            b.copy(
                &hf("self_attn.o_proj.bias"),
                &[n_embd],
                gg("attn_output.bias"),
            )?;
        }
        b.copy(
            &hf("post_attention_layernorm.weight"),
            &[n_embd],
            gg("ffn_norm.weight"),
        )?;

        if !llama4 {
            for (p, g, shape) in [
                ("gate_proj", "ffn_gate", [n_ff, n_embd]),
                ("up_proj", "ffn_up", [n_ff, n_embd]),
                ("down_proj", "ffn_down", [n_embd, n_ff]),
            ] {
                b.copy(
                    &hf(&format!("mlp.{p}.weight")),
                    &shape,
                    gg(&format!("{g}.weight")),
                )?;
                if mlp_bias {
                    b.copy(
                        &hf(&format!("mlp.{p}.bias")),
                        &shape[..1],
                        gg(&format!("{g}.bias")),
                    )?;
                }
            }
        } else if !is_moe {
            for (p, g, shape) in [
                ("gate_proj", "ffn_gate", [n_ff, n_embd]),
                ("up_proj", "ffn_up", [n_ff, n_embd]),
                ("down_proj", "ffn_down", [n_embd, n_ff]),
            ] {
                b.copy(
                    &hf(&format!("feed_forward.{p}.weight")),
                    &shape,
                    gg(&format!("{g}.weight")),
                )?;
            }
        } else {
            let (n_expert, n_ff_exp, _) = moe.expect("llama4 has experts");
            let n_expert = usize_of("num_local_experts", n_expert)?;
            let n_ff_exp = usize_of("intermediate_size", n_ff_exp)?;
            b.copy_f32(
                &hf("feed_forward.router.weight"),
                &[n_expert, n_embd],
                gg("ffn_gate_inp.weight"),
            )?;
            // gate_up_proj [E, H, 2I], gate half first → gate, up [E, I, H].
            let gate_up = b.src.take(
                &hf("feed_forward.experts.gate_up_proj"),
                &[n_expert, n_embd, 2 * n_ff_exp],
            )?;
            for (g, offset) in [("ffn_gate_exps", 0), ("ffn_up_exps", n_ff_exp)] {
                b.push(
                    gg(&format!("{g}.weight")),
                    ggml_dims(&[n_expert, n_ff_exp, n_embd]),
                    Recipe::TransposeExperts {
                        src: gate_up.clone(),
                        rows: n_ff_exp,
                        offset,
                    },
                    false,
                );
            }
            // down_proj [E, I, H] → [E, H, I].
            let down = b.src.take(
                &hf("feed_forward.experts.down_proj"),
                &[n_expert, n_ff_exp, n_embd],
            )?;
            b.push(
                gg("ffn_down_exps.weight"),
                ggml_dims(&[n_expert, n_embd, n_ff_exp]),
                Recipe::TransposeExperts {
                    src: down,
                    rows: n_embd,
                    offset: 0,
                },
                false,
            );
            for (p, g, shape) in [
                ("gate_proj", "ffn_gate_shexp", [n_ff_exp, n_embd]),
                ("up_proj", "ffn_up_shexp", [n_ff_exp, n_embd]),
                ("down_proj", "ffn_down_shexp", [n_embd, n_ff_exp]),
            ] {
                b.copy(
                    &hf(&format!("feed_forward.shared_expert.{p}.weight")),
                    &shape,
                    gg(&format!("{g}.weight")),
                )?;
            }
        }
    }
    b.copy("model.norm.weight", &[n_embd], "output_norm.weight".into())?;

    let has_lm_head = b.src.has("lm_head.weight");
    let tied = cfg.tie_word_embeddings.unwrap_or(!has_lm_head);
    if tied {
        if has_lm_head {
            // llama.cpp would write it; with tied embeddings it is the same
            // matrix as token_embd, so it is left out (llama.cpp then uses
            // token_embd as the output, as for any tied model).
            b.src.skip("lm_head.weight");
            notes.push(
                "tie_word_embeddings: lm_head.weight left out (token_embd is the output)".into(),
            );
        }
    } else {
        b.copy("lm_head.weight", &[n_vocab, n_embd], "output.weight".into())?;
    }

    if let Some(extra) = b.src.leftover() {
        return Err(ConvertError::UnexpectedTensor {
            tensor: extra.to_string(),
        });
    }
    Ok(ModelPlan {
        kv,
        tensors: b.tensors,
        notes,
    })
}

/// Mllama's cross-attention layers (empty for other architectures).
fn cross_attention_layers(cfg: &HfConfig, arch: Arch, n_layer: u64) -> Result<Vec<usize>> {
    if arch != Arch::Mllama {
        return Ok(Vec::new());
    }
    let layers = cfg
        .cross_attention_layers
        .clone()
        .ok_or_else(|| config_err("cross_attention_layers", "missing for an mllama model"))?;
    let mut out = Vec::with_capacity(layers.len());
    for l in layers {
        if l >= n_layer || out.contains(&(l as usize)) {
            return Err(config_err(
                "cross_attention_layers",
                format!("layer {l} is out of range or listed twice ({n_layer} layers)"),
            ));
        }
        out.push(l as usize);
    }
    Ok(out)
}

#[derive(Clone, Copy)]
struct CrossDims {
    n_embd: usize,
    q_dim: usize,
    kv_dim: usize,
    head_dim: usize,
    n_ff: usize,
}

/// An mllama cross-attention block: q from the text, k/v from the vision
/// features, per-head q/k RMS norms, no RoPE (so q/k are not permuted),
/// tanh gates on the attention and MLP branches, then a SwiGLU MLP.
fn mllama_cross_layer(b: &mut Builder<'_>, i: usize, d: CrossDims) -> Result<()> {
    let hf = |s: &str| format!("model.layers.{i}.{s}");
    let gg = |s: &str| format!("blk.{i}.{s}");
    b.copy(
        &hf("input_layernorm.weight"),
        &[d.n_embd],
        gg("attn_norm.weight"),
    )?;
    for (p, g, shape) in [
        ("q_proj", "cross_attn_q", [d.q_dim, d.n_embd]),
        ("k_proj", "cross_attn_k", [d.kv_dim, d.n_embd]),
        ("v_proj", "cross_attn_v", [d.kv_dim, d.n_embd]),
        ("o_proj", "cross_attn_o", [d.n_embd, d.q_dim]),
    ] {
        b.copy(
            &hf(&format!("cross_attn.{p}.weight")),
            &shape,
            gg(&format!("{g}.weight")),
        )?;
    }
    b.copy(
        &hf("cross_attn.q_norm.weight"),
        &[d.head_dim],
        gg("cross_attn_q_norm.weight"),
    )?;
    b.copy(
        &hf("cross_attn.k_norm.weight"),
        &[d.head_dim],
        gg("cross_attn_k_norm.weight"),
    )?;
    b.copy_f32(
        &hf("cross_attn_attn_gate"),
        &[1],
        gg("cross_attn_attn_gate"),
    )?;
    b.copy_f32(&hf("cross_attn_mlp_gate"), &[1], gg("cross_attn_mlp_gate"))?;
    b.copy(
        &hf("post_attention_layernorm.weight"),
        &[d.n_embd],
        gg("ffn_norm.weight"),
    )?;
    for (p, g, shape) in [
        ("gate_proj", "ffn_gate", [d.n_ff, d.n_embd]),
        ("up_proj", "ffn_up", [d.n_ff, d.n_embd]),
        ("down_proj", "ffn_down", [d.n_embd, d.n_ff]),
    ] {
        b.copy(
            &hf(&format!("mlp.{p}.weight")),
            &shape,
            gg(&format!("{g}.weight")),
        )?;
    }
    Ok(())
}

/// Llama 4's attention layout as the keys Spinel's model loader reads
/// (llama.cpp hard-codes these for `llama4`; Hugging Face makes them
/// per-model): chunked attention on RoPE layers, NoPE layers every
/// `no_rope_layer_step`-th layer, attention temperature tuning and the
/// weightless q/k norm.
fn llama4_attention_keys(
    cfg: &HfConfig,
    n_layer: usize,
) -> Result<Vec<(&'static str, Value<'static>)>> {
    let interval = cfg.no_rope_layer_interval.unwrap_or(4);
    let rope_layers: Vec<bool> = match &cfg.no_rope_layers {
        Some(v) if !v.is_empty() => {
            if v.len() != n_layer {
                return Err(config_err(
                    "no_rope_layers",
                    format!("{} entries for {n_layer} layers", v.len()),
                ));
            }
            v.iter().map(|&x| x != 0).collect()
        }
        _ => {
            if interval == 0 {
                return Err(config_err("no_rope_layer_interval", "must be positive"));
            }
            (0..n_layer)
                .map(|i| (i as u64 + 1) % interval != 0)
                .collect()
        }
    };
    let chunk = cfg.attention_chunk_size;
    let chunked: Vec<bool> = match &cfg.layer_types {
        Some(types) => {
            if types.len() != n_layer {
                return Err(config_err(
                    "layer_types",
                    format!("{} entries for {n_layer} layers", types.len()),
                ));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "chunked_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => Err(ConvertError::Unsupported {
                        what: format!("layer type {other:?}"),
                    }),
                })
                .collect::<Result<_>>()?
        }
        None => rope_layers.iter().map(|&r| r && chunk.is_some()).collect(),
    };

    let mut keys: Vec<(&'static str, Value<'static>)> = Vec::new();
    let qk_norm = cfg.use_qk_norm.unwrap_or(true);
    if chunked.iter().all(|c| !c) {
        // As llama.cpp: sliding_window = 0 means plain attention with RoPE
        // on every layer (MobileLLM-style configs).
        if rope_layers.iter().any(|r| !r) {
            return Err(ConvertError::Unsupported {
                what: "Llama 4 NoPE layers without chunked attention".into(),
            });
        }
        keys.push(("attention.sliding_window", 0u32.into()));
        keys.push(("use_qk_norm", qk_norm.into()));
        return Ok(keys);
    }
    if chunked != rope_layers {
        return Err(ConvertError::Unsupported {
            what: format!(
                "Llama 4 layer pattern: chunked attention on layers {:?} but RoPE on layers {:?} (GGUF needs them to be the same layers)",
                indices(&chunked),
                indices(&rope_layers)
            ),
        });
    }
    // The NoPE layers must be every `step`-th layer: the config's interval
    // if it describes them, else the first NoPE layer's position (or, with
    // none, a step past the last layer).
    let pattern =
        |step: usize| -> Vec<bool> { (0..n_layer).map(|i| (i + 1) % step != 0).collect() };
    let first_nope = rope_layers
        .iter()
        .position(|r| !r)
        .map_or(n_layer + 1, |p| p + 1);
    let step = [usize::try_from(interval).unwrap_or(0), first_nope]
        .into_iter()
        .find(|&s| s > 0 && pattern(s) == rope_layers)
        .ok_or_else(|| ConvertError::Unsupported {
            what: format!(
                "no_rope_layers {:?}: NoPE layers must be every n-th layer",
                cfg.no_rope_layers
            ),
        })?;
    let chunk = chunk.ok_or_else(|| config_err("attention_chunk_size", "missing"))?;
    keys.push((
        "attention.chunk_size",
        u32_of("attention_chunk_size", chunk)?.into(),
    ));
    keys.push((
        "no_rope_layer_step",
        u32_of("no_rope_layer_interval", step as u64)?.into(),
    ));
    let tuning = cfg.attn_temperature_tuning.unwrap_or(true);
    let floor_scale = cfg.floor_scale.unwrap_or(8192);
    if floor_scale == 0 {
        return Err(config_err("floor_scale", "must be positive"));
    }
    let scale = if tuning {
        cfg.attn_scale.unwrap_or(0.1)
    } else {
        0.0
    };
    keys.push((
        "attention.temperature_length",
        u32_of("floor_scale", floor_scale)?.into(),
    ));
    keys.push(("attention.temperature_scale", (scale as f32).into()));
    keys.push(("use_qk_norm", qk_norm.into()));
    Ok(keys)
}

fn indices(flags: &[bool]) -> Vec<usize> {
    flags
        .iter()
        .enumerate()
        .filter(|(_, f)| **f)
        .map(|(i, _)| i)
        .collect()
}

/// llama.cpp's `LlamaModel.generate_extra_tensors`: per-frequency RoPE
/// divisors for Llama 3.1-style scaling, computed in f32 as torch does.
pub fn llama3_rope_factors(
    theta: f64,
    head_dim: usize,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    old_context_len: f64,
) -> Vec<f32> {
    let low_freq_wavelen = old_context_len / low_freq_factor;
    let high_freq_wavelen = old_context_len / high_freq_factor;
    let dim = head_dim as f32;
    (0..head_dim)
        .step_by(2)
        .map(|i| {
            // torch: 1.0 / (base ** (arange(0, dim, 2, float32) / dim))
            let freq = 1.0f32 / (theta as f32).powf(i as f32 / dim);
            let wavelen = (2.0 * std::f64::consts::PI) as f32 / freq;
            if (wavelen as f64) < high_freq_wavelen {
                1.0
            } else if (wavelen as f64) > low_freq_wavelen {
                factor as f32
            } else {
                let smooth = (old_context_len as f32 / wavelen - low_freq_factor as f32)
                    / (high_freq_factor - low_freq_factor) as f32;
                1.0 / ((1.0 - smooth) / factor as f32 + smooth)
            }
        })
        .collect()
}
