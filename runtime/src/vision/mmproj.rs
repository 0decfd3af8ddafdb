//! The vision side of a converted model: `OUT.mmproj.gguf`.
//!
//! Llama 4 uses llama.cpp's mmproj layout (`general.architecture = clip`,
//! `clip.projector_type = llama4`, `v.*` / `mm.*` tensors). Mllama has no
//! llama.cpp layout; Spinel's (`clip.projector_type = mllama`) follows the
//! same conventions and is described in README.md. Both carry the image
//! processor settings (llama.cpp's `clip.vision.image_mean/std` and
//! `preproc_max_tiles`, plus `spinel.vision.*` keys), so an mmproj file
//! alone is enough to preprocess images and run the tower.

use std::path::Path;

use spinel_quant::{GgmlType, Kernels};

use super::error::{Result, VisionError};
use super::llama4::{Llama4Vision, Llama4VisionConfig};
use super::mllama::{MllamaVision, MllamaVisionConfig};
use super::processor::{ProcessorConfig, ProcessorKind};
use super::tensor::{StoredMatrix, Tensor, TensorSource};
use crate::gguf::{Array, MappedGguf, Metadata, TensorInfo, Value};
use crate::model::LoadOptions;

/// `clip.projector_type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Projector {
    Llama4,
    Mllama,
}

impl Projector {
    pub fn name(self) -> &'static str {
        match self {
            Projector::Llama4 => "llama4",
            Projector::Mllama => "mllama",
        }
    }
}

/// The per-layer part of a tower tensor name: HF suffix → GGUF suffix.
const LAYER_TENSORS: [(&str, &str); 10] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_out"),
    ("input_layernorm", "ln1"),
    ("post_attention_layernorm", "ln2"),
    ("mlp.fc1", "ffn_up"),
    ("mlp.fc2", "ffn_down"),
    // Mllama's gated global layers (scalars).
    ("gate_attn", "gate_attn"),
    ("gate_ffn", "gate_ffn"),
];

/// Whole-tensor names: HF → GGUF, per projector.
const LLAMA4_TENSORS: [(&str, &str); 9] = [
    (
        "vision_model.patch_embedding.linear.weight",
        "v.patch_embd.weight",
    ),
    ("vision_model.class_embedding", "v.class_embd"),
    (
        "vision_model.positional_embedding_vlm",
        "v.position_embd.weight",
    ),
    ("vision_model.layernorm_pre.weight", "v.pre_ln.weight"),
    ("vision_model.layernorm_pre.bias", "v.pre_ln.bias"),
    ("vision_model.layernorm_post.weight", "v.post_ln.weight"),
    ("vision_model.layernorm_post.bias", "v.post_ln.bias"),
    (
        "vision_model.vision_adapter.mlp.fc1.weight",
        "mm.model.mlp.1.weight",
    ),
    (
        "vision_model.vision_adapter.mlp.fc2.weight",
        "mm.model.mlp.2.weight",
    ),
];

const MLLAMA_TENSORS: [(&str, &str); 15] = [
    ("vision_model.patch_embedding.weight", "v.patch_embd.weight"),
    ("vision_model.class_embedding", "v.class_embd"),
    (
        "vision_model.gated_positional_embedding.embedding",
        "v.position_embd.weight",
    ),
    (
        "vision_model.gated_positional_embedding.gate",
        "v.position_embd.gate",
    ),
    (
        "vision_model.gated_positional_embedding.tile_embedding.weight",
        "v.tile_position_embd.weight",
    ),
    (
        "vision_model.pre_tile_positional_embedding.embedding.weight",
        "v.pre_tile_position_embd.weight",
    ),
    (
        "vision_model.pre_tile_positional_embedding.gate",
        "v.pre_tile_position_embd.gate",
    ),
    (
        "vision_model.post_tile_positional_embedding.embedding.weight",
        "v.post_tile_position_embd.weight",
    ),
    (
        "vision_model.post_tile_positional_embedding.gate",
        "v.post_tile_position_embd.gate",
    ),
    ("vision_model.layernorm_pre.weight", "v.pre_ln.weight"),
    ("vision_model.layernorm_pre.bias", "v.pre_ln.bias"),
    ("vision_model.layernorm_post.weight", "v.post_ln.weight"),
    ("vision_model.layernorm_post.bias", "v.post_ln.bias"),
    ("multi_modal_projector.weight", "mm.model.fc.weight"),
    ("multi_modal_projector.bias", "mm.model.fc.bias"),
];

/// The GGUF name of HF tower tensor `hf`, or `None` if it is not part of
/// the projector's layout.
pub fn mmproj_tensor_name(projector: Projector, hf: &str) -> Option<String> {
    type Names = [(&'static str, &'static str)];
    let (whole, layer_prefixes): (&Names, &Names) = match projector {
        Projector::Llama4 => (&LLAMA4_TENSORS, &[("vision_model.model.layers.", "v.blk.")]),
        Projector::Mllama => (
            &MLLAMA_TENSORS,
            &[
                ("vision_model.transformer.layers.", "v.blk."),
                ("vision_model.global_transformer.layers.", "v.global.blk."),
            ],
        ),
    };
    if projector == Projector::Llama4 && hf.starts_with("multi_modal_projector.linear_1.") {
        // "despite the name with number postfix, this is a single fully
        // connected layer" (llama.cpp).
        return Some(hf.replace("multi_modal_projector.linear_1.", "mm.model.fc."));
    }
    if let Some((_, g)) = whole.iter().find(|(h, _)| *h == hf) {
        return Some((*g).to_string());
    }
    for (hp, gp) in layer_prefixes {
        let Some(rest) = hf.strip_prefix(hp) else {
            continue;
        };
        let (idx, tail) = rest.split_once('.')?;
        idx.parse::<usize>().ok()?;
        for (hs, gs) in LAYER_TENSORS {
            if tail == hs {
                return Some(format!("{gp}{idx}.{gs}"));
            }
            if let Some(kind) = tail.strip_prefix(hs).and_then(|t| t.strip_prefix('.')) {
                if kind == "weight" || kind == "bias" {
                    return Some(format!("{gp}{idx}.{gs}.{kind}"));
                }
            }
        }
        return None;
    }
    None
}

/// The metadata keys written and read here.
pub mod keys {
    pub const PROJECTOR_TYPE: &str = "clip.projector_type";
    pub const HAS_VISION: &str = "clip.has_vision_encoder";
    pub const PROJECTION_DIM: &str = "clip.vision.projection_dim";
    pub const IMAGE_SIZE: &str = "clip.vision.image_size";
    pub const PATCH_SIZE: &str = "clip.vision.patch_size";
    pub const EMBEDDING_LENGTH: &str = "clip.vision.embedding_length";
    pub const FEED_FORWARD_LENGTH: &str = "clip.vision.feed_forward_length";
    pub const BLOCK_COUNT: &str = "clip.vision.block_count";
    pub const HEAD_COUNT: &str = "clip.vision.attention.head_count";
    pub const LAYER_NORM_EPS: &str = "clip.vision.attention.layer_norm_epsilon";
    pub const IMAGE_MEAN: &str = "clip.vision.image_mean";
    pub const IMAGE_STD: &str = "clip.vision.image_std";
    pub const SCALE_FACTOR: &str = "clip.vision.projector.scale_factor";
    pub const USE_GELU: &str = "clip.use_gelu";
    pub const PREPROC_MAX_TILES: &str = "clip.vision.preproc_max_tiles";
    pub const FEATURE_LAYER: &str = "clip.vision.feature_layer";
    // Spinel's own keys.
    pub const IMAGE_PROCESSOR: &str = "spinel.vision.image_processor";
    pub const TILE_SIZE: &str = "spinel.vision.tile_size";
    pub const RESCALE_FACTOR: &str = "spinel.vision.rescale_factor";
    pub const RESIZE_TO_MAX_CANVAS: &str = "spinel.vision.resize_to_max_canvas";
    pub const ROPE_THETA: &str = "spinel.vision.rope_theta";
    pub const PROJECTOR_INPUT_DIM: &str = "spinel.vision.projector_input_dim";
    pub const PROJECTOR_OUTPUT_DIM: &str = "spinel.vision.projector_output_dim";
    pub const GLOBAL_BLOCK_COUNT: &str = "spinel.vision.global_block_count";
    pub const MAX_NUM_TILES: &str = "spinel.vision.max_num_tiles";
    pub const NUM_ASPECT_RATIOS: &str = "spinel.vision.num_aspect_ratios";
    pub const CHANNELS: &str = "spinel.vision.num_channels";
}

type Kv = Vec<(String, Value<'static>)>;

fn u32v(x: usize) -> Result<Value<'static>> {
    u32::try_from(x)
        .map(Value::from)
        .map_err(|_| VisionError::Config(format!("{x} does not fit in 32 bits")))
}

fn processor_kv(kv: &mut Kv, p: &ProcessorConfig) -> Result<()> {
    let name = match p.kind {
        ProcessorKind::Mllama => "MllamaImageProcessor",
        ProcessorKind::Llama4 => "Llama4ImageProcessor",
    };
    kv.push((keys::IMAGE_PROCESSOR.into(), name.into()));
    kv.push((
        keys::IMAGE_MEAN.into(),
        Array::from_scalars(&p.image_mean).into(),
    ));
    kv.push((
        keys::IMAGE_STD.into(),
        Array::from_scalars(&p.image_std).into(),
    ));
    kv.push((keys::PREPROC_MAX_TILES.into(), u32v(p.max_tiles)?));
    kv.push((keys::TILE_SIZE.into(), u32v(p.tile_size)?));
    kv.push((keys::RESCALE_FACTOR.into(), Value::F64(p.rescale_factor)));
    kv.push((
        keys::RESIZE_TO_MAX_CANVAS.into(),
        p.resize_to_max_canvas.into(),
    ));
    Ok(())
}

fn common_kv(kv: &mut Kv, projector: Projector, text_hidden: usize) -> Result<()> {
    kv.push((keys::PROJECTOR_TYPE.into(), projector.name().into()));
    kv.push((keys::HAS_VISION.into(), true.into()));
    kv.push((keys::PROJECTION_DIM.into(), u32v(text_hidden)?));
    Ok(())
}

/// The `clip.*` / `spinel.vision.*` metadata of a Llama 4 mmproj.
pub fn llama4_metadata(cfg: &Llama4VisionConfig, norm_eps: f32, p: &ProcessorConfig) -> Result<Kv> {
    let mut kv = Kv::new();
    common_kv(&mut kv, Projector::Llama4, cfg.text_hidden_size)?;
    kv.push((keys::IMAGE_SIZE.into(), u32v(cfg.image_size)?));
    kv.push((keys::PATCH_SIZE.into(), u32v(cfg.patch_size)?));
    kv.push((keys::EMBEDDING_LENGTH.into(), u32v(cfg.hidden_size)?));
    kv.push((
        keys::FEED_FORWARD_LENGTH.into(),
        u32v(cfg.intermediate_size)?,
    ));
    kv.push((keys::BLOCK_COUNT.into(), u32v(cfg.num_hidden_layers)?));
    kv.push((keys::HEAD_COUNT.into(), u32v(cfg.num_attention_heads)?));
    // llama.cpp writes the config's norm_eps (HF itself uses 1e-5).
    kv.push((keys::LAYER_NORM_EPS.into(), norm_eps.into()));
    kv.push((keys::SCALE_FACTOR.into(), u32v(cfg.shuffle_factor())?));
    kv.push((keys::USE_GELU.into(), true.into()));
    kv.push((keys::CHANNELS.into(), u32v(cfg.num_channels)?));
    kv.push((keys::ROPE_THETA.into(), cfg.rope_theta.into()));
    kv.push((
        keys::PROJECTOR_INPUT_DIM.into(),
        u32v(cfg.projector_input_dim)?,
    ));
    kv.push((
        keys::PROJECTOR_OUTPUT_DIM.into(),
        u32v(cfg.projector_output_dim)?,
    ));
    processor_kv(&mut kv, p)?;
    Ok(kv)
}

/// The `clip.*` / `spinel.vision.*` metadata of an mllama mmproj.
pub fn mllama_metadata(cfg: &MllamaVisionConfig, p: &ProcessorConfig) -> Result<Kv> {
    let mut kv = Kv::new();
    common_kv(&mut kv, Projector::Mllama, cfg.text_hidden_size)?;
    kv.push((keys::IMAGE_SIZE.into(), u32v(cfg.image_size)?));
    kv.push((keys::PATCH_SIZE.into(), u32v(cfg.patch_size)?));
    kv.push((keys::EMBEDDING_LENGTH.into(), u32v(cfg.hidden_size)?));
    kv.push((
        keys::FEED_FORWARD_LENGTH.into(),
        u32v(cfg.intermediate_size)?,
    ));
    kv.push((keys::BLOCK_COUNT.into(), u32v(cfg.num_hidden_layers)?));
    kv.push((
        keys::GLOBAL_BLOCK_COUNT.into(),
        u32v(cfg.num_global_layers)?,
    ));
    kv.push((keys::HEAD_COUNT.into(), u32v(cfg.attention_heads)?));
    kv.push((keys::LAYER_NORM_EPS.into(), cfg.norm_eps.into()));
    kv.push((keys::USE_GELU.into(), true.into()));
    kv.push((keys::CHANNELS.into(), u32v(cfg.num_channels)?));
    kv.push((keys::MAX_NUM_TILES.into(), u32v(cfg.max_num_tiles)?));
    kv.push((keys::NUM_ASPECT_RATIOS.into(), u32v(cfg.num_aspect_ratios)?));
    let layers: Vec<u32> = cfg
        .intermediate_layers_indices
        .iter()
        .map(|&i| i as u32)
        .collect();
    kv.push((
        keys::FEATURE_LAYER.into(),
        Array::from_scalars(&layers).into(),
    ));
    processor_kv(&mut kv, p)?;
    Ok(kv)
}

fn meta_err(key: &str, e: impl std::fmt::Display) -> VisionError {
    VisionError::Config(format!("mmproj metadata {key}: {e}"))
}

fn get_usize(m: &Metadata<'_>, key: &str) -> Result<usize> {
    let v = m.get_uint(key).map_err(|e| meta_err(key, e))?;
    usize::try_from(v).map_err(|e| meta_err(key, e))
}

fn get_f32(m: &Metadata<'_>, key: &str) -> Result<f32> {
    match m.value(key).map_err(|e| meta_err(key, e))? {
        Value::F32(x) => Ok(*x),
        Value::F64(x) => Ok(*x as f32),
        other => Err(meta_err(
            key,
            format!("expected a float, found {:?}", other.value_type()),
        )),
    }
}

fn get_triple(m: &Metadata<'_>, key: &str) -> Result<[f32; 3]> {
    let v: Vec<f32> = m.get_array_of(key).map_err(|e| meta_err(key, e))?;
    v.try_into().map_err(|_| meta_err(key, "expected 3 values"))
}

/// HF's `Llama4ImageProcessor` default `max_patches`, for Llama 4 mmproj
/// files without `clip.vision.preproc_max_tiles` (llama.cpp's converter
/// writes none).
const LLAMA4_DEFAULT_MAX_TILES: usize = 16;

/// The processor settings stored in an mmproj.
///
/// A Llama 4 file from llama.cpp's converter has only the `clip.*` keys:
/// the processor is then HF's Llama 4 one with its defaults (tiles of the
/// tower's image size, at most [`LLAMA4_DEFAULT_MAX_TILES`] of them,
/// pixels rescaled by 1/255, no resizing up to the largest canvas).
pub fn processor_from_metadata(m: &Metadata<'_>) -> Result<ProcessorConfig> {
    let kind = match m.get_str(keys::IMAGE_PROCESSOR) {
        Ok("MllamaImageProcessor") => ProcessorKind::Mllama,
        Ok("Llama4ImageProcessor") => ProcessorKind::Llama4,
        Ok(other) => {
            return Err(meta_err(
                keys::IMAGE_PROCESSOR,
                format!("unknown {other:?}"),
            ));
        }
        Err(_) if matches!(m.get_str(keys::PROJECTOR_TYPE), Ok("llama4")) => ProcessorKind::Llama4,
        Err(e) => return Err(meta_err(keys::IMAGE_PROCESSOR, e)),
    };
    let llama4_default = |key: &str, default: usize| match m.value(key) {
        Err(_) if kind == ProcessorKind::Llama4 => Ok(default),
        _ => get_usize(m, key),
    };
    let scale = if kind == ProcessorKind::Llama4 {
        get_usize(m, keys::SCALE_FACTOR)?
    } else {
        1
    };
    let cfg = ProcessorConfig {
        kind,
        tile_size: llama4_default(keys::TILE_SIZE, get_usize(m, keys::IMAGE_SIZE)?)?,
        max_tiles: llama4_default(keys::PREPROC_MAX_TILES, LLAMA4_DEFAULT_MAX_TILES)?,
        image_mean: get_triple(m, keys::IMAGE_MEAN)?,
        image_std: get_triple(m, keys::IMAGE_STD)?,
        rescale_factor: match m.value(keys::RESCALE_FACTOR) {
            Ok(Value::F64(x)) => *x,
            Ok(Value::F32(x)) => f64::from(*x),
            Ok(_) => return Err(meta_err(keys::RESCALE_FACTOR, "not a float")),
            Err(_) if kind == ProcessorKind::Llama4 => 1.0 / 255.0,
            Err(e) => return Err(meta_err(keys::RESCALE_FACTOR, e)),
        },
        resize_to_max_canvas: m.get_bool(keys::RESIZE_TO_MAX_CANVAS).unwrap_or(false),
        patch_size: get_usize(m, keys::PATCH_SIZE)?,
        pixel_shuffle_ratio: 1.0 / scale.max(1) as f64,
    };
    cfg.validate()?;
    if cfg.max_tiles == 0 || cfg.max_tiles > 64 {
        return Err(meta_err(keys::PREPROC_MAX_TILES, "expected 1..=64"));
    }
    Ok(cfg)
}

/// A loaded vision tower.
pub enum VisionTower {
    Mllama(MllamaVision),
    Llama4(Llama4Vision),
}

/// An mmproj GGUF file: its tower weights by HF name.
pub struct MmprojFile {
    gguf: MappedGguf,
    projector: Projector,
}

impl MmprojFile {
    /// Maps `path`.
    ///
    /// # Safety
    /// As [`MappedGguf::open`]: the file must not change while mapped.
    pub unsafe fn open(path: impl AsRef<Path>) -> Result<MmprojFile> {
        let path = path.as_ref();
        // SAFETY: forwarded to the caller (this function's contract).
        let gguf =
            unsafe { MappedGguf::open(path) }.map_err(|e| VisionError::Weights(e.to_string()))?;
        let m = gguf.file().metadata();
        let projector = match m
            .get_str(keys::PROJECTOR_TYPE)
            .map_err(|e| meta_err(keys::PROJECTOR_TYPE, e))?
        {
            "llama4" => Projector::Llama4,
            "mllama" => Projector::Mllama,
            other => {
                return Err(meta_err(
                    keys::PROJECTOR_TYPE,
                    format!("unsupported {other:?}"),
                ));
            }
        };
        Ok(MmprojFile { gguf, projector })
    }

    pub fn projector(&self) -> Projector {
        self.projector
    }

    pub fn metadata(&self) -> &Metadata<'_> {
        self.gguf.file().metadata()
    }

    /// Bytes the loaded tower keeps in memory (the file's mapping is
    /// dropped after loading): matrices stored in another type than f32
    /// (q8_0, f16) as stored, since its linear layers run them so; every
    /// other tensor in f32. (The few embedding tables stored as f16 are
    /// expanded to f32, a rounding error beside the matrices.)
    pub fn tower_bytes(&self) -> u64 {
        self.gguf
            .file()
            .tensors()
            .iter()
            .map(
                |t| match t.dims().len() == 2 && t.ggml_type() != GgmlType::F32 {
                    true => t.data().len() as u64,
                    false => t.n_elements().saturating_mul(4),
                },
            )
            .fold(0, u64::saturating_add)
    }

    /// The load options of the text model that shares `opts`' memory
    /// budget with this tower: the budget less [`tower_bytes`](Self::tower_bytes).
    /// A tower that fills the whole budget is [`VisionError::Budget`].
    pub fn model_load_options(&self, opts: &LoadOptions) -> Result<LoadOptions> {
        let Some(budget) = opts.memory_budget else {
            return Ok(LoadOptions {
                memory_budget: None,
            });
        };
        let tower_bytes = self.tower_bytes();
        let rest =
            budget
                .checked_sub(tower_bytes)
                .filter(|&b| b > 0)
                .ok_or(VisionError::Budget {
                    tower_bytes,
                    budget,
                })?;
        Ok(LoadOptions {
            memory_budget: Some(rest),
        })
    }

    /// The image processor settings.
    pub fn processor(&self) -> Result<ProcessorConfig> {
        processor_from_metadata(self.metadata())
    }

    /// `key`, or where the file lacks it (llama.cpp's converter writes no
    /// `spinel.vision.*` keys) the output width of matrix `tensor`.
    fn dim_or(&self, m: &Metadata<'_>, key: &str, tensor: &str) -> Result<usize> {
        if m.value(key).is_ok() {
            return get_usize(m, key);
        }
        let t = self.gguf.file().tensor(tensor).ok_or_else(|| {
            VisionError::Weights(format!("neither metadata {key} nor tensor {tensor}"))
        })?;
        match t.dims() {
            [_, rows, ..] => usize::try_from(*rows).map_err(|e| meta_err(key, e)),
            _ => Err(VisionError::Weights(format!("{tensor}: not a matrix"))),
        }
    }

    /// Loads the tower in f32 (quantized weights are dequantized).
    pub fn load_tower(&self) -> Result<VisionTower> {
        let m = self.metadata();
        match self.projector {
            Projector::Llama4 => {
                let cfg = Llama4VisionConfig {
                    image_size: get_usize(m, keys::IMAGE_SIZE)?,
                    patch_size: get_usize(m, keys::PATCH_SIZE)?,
                    num_channels: get_usize(m, keys::CHANNELS).unwrap_or(3),
                    hidden_size: get_usize(m, keys::EMBEDDING_LENGTH)?,
                    num_attention_heads: get_usize(m, keys::HEAD_COUNT)?,
                    intermediate_size: get_usize(m, keys::FEED_FORWARD_LENGTH)?,
                    num_hidden_layers: get_usize(m, keys::BLOCK_COUNT)?,
                    pixel_shuffle_ratio: 1.0 / get_usize(m, keys::SCALE_FACTOR)?.max(1) as f64,
                    projector_input_dim: self.dim_or(
                        m,
                        keys::PROJECTOR_INPUT_DIM,
                        "mm.model.mlp.1.weight",
                    )?,
                    projector_output_dim: self.dim_or(
                        m,
                        keys::PROJECTOR_OUTPUT_DIM,
                        "mm.model.mlp.2.weight",
                    )?,
                    rope_theta: get_f32(m, keys::ROPE_THETA).unwrap_or(10000.0),
                    text_hidden_size: get_usize(m, keys::PROJECTION_DIM)?,
                };
                cfg.validate()?;
                Ok(VisionTower::Llama4(Llama4Vision::load(cfg, self)?))
            }
            Projector::Mllama => {
                let layers: Vec<u32> = m
                    .get_array_of(keys::FEATURE_LAYER)
                    .map_err(|e| meta_err(keys::FEATURE_LAYER, e))?;
                let cfg = MllamaVisionConfig {
                    image_size: get_usize(m, keys::IMAGE_SIZE)?,
                    patch_size: get_usize(m, keys::PATCH_SIZE)?,
                    num_channels: get_usize(m, keys::CHANNELS).unwrap_or(3),
                    hidden_size: get_usize(m, keys::EMBEDDING_LENGTH)?,
                    attention_heads: get_usize(m, keys::HEAD_COUNT)?,
                    intermediate_size: get_usize(m, keys::FEED_FORWARD_LENGTH)?,
                    num_hidden_layers: get_usize(m, keys::BLOCK_COUNT)?,
                    num_global_layers: get_usize(m, keys::GLOBAL_BLOCK_COUNT)?,
                    max_num_tiles: get_usize(m, keys::MAX_NUM_TILES)?,
                    num_aspect_ratios: get_usize(m, keys::NUM_ASPECT_RATIOS)?,
                    intermediate_layers_indices: layers.into_iter().map(|i| i as usize).collect(),
                    norm_eps: get_f32(m, keys::LAYER_NORM_EPS)?,
                    text_hidden_size: get_usize(m, keys::PROJECTION_DIM)?,
                };
                cfg.validate()?;
                Ok(VisionTower::Mllama(MllamaVision::load(cfg, self)?))
            }
        }
    }
}

impl MmprojFile {
    /// The GGUF tensor of the Hugging Face tensor `name`, and its GGUF name.
    fn find(&self, name: &str) -> Option<(String, &TensorInfo<'_>)> {
        let gname = mmproj_tensor_name(self.projector, name)?;
        let file = self.gguf.file();
        // llama.cpp's converter (since Gemma 4) maps Llama 4's
        // `post_attention_layernorm` to `v.blk.N.attn_post_norm`; older
        // ones, and Spinel, to `v.blk.N.ln2`. Both are the pre-FFN norm.
        let alias = || match self.projector {
            Projector::Llama4 => gname
                .contains(".ln2.")
                .then(|| gname.replace(".ln2.", ".attn_post_norm."))
                .and_then(|a| file.tensor(&a)),
            Projector::Mllama => None,
        };
        let t = file.tensor(&gname).or_else(alias)?;
        Some((gname, t))
    }
}

impl TensorSource for MmprojFile {
    fn tensor(&self, name: &str) -> Result<Option<Tensor>> {
        let Some((gname, t)) = self.find(name) else {
            return Ok(None);
        };
        let n = usize::try_from(t.n_elements()).map_err(|e| VisionError::Weights(e.to_string()))?;
        let ty = t.ggml_type();
        let row = t.dims().first().copied().unwrap_or(1) as usize;
        let row_bytes = ty
            .row_size(row)
            .ok_or_else(|| VisionError::Weights(format!("{gname}: bad row")))?;
        let data = t.data();
        if row == 0 || data.len() != row_bytes * (n / row) {
            return Err(VisionError::Weights(format!("{gname}: data size")));
        }
        let mut out = vec![0f32; n];
        let to_float = Kernels::get().of(ty).to_float;
        for (o, b) in out.chunks_exact_mut(row).zip(data.chunks_exact(row_bytes)) {
            to_float(b, o);
        }
        let shape = t.dims().iter().rev().map(|&d| d as usize).collect();
        Ok(Some(Tensor { shape, data: out }))
    }

    /// Matrices not stored as f32 (a quantized mmproj: q8_0, f16) stay so.
    fn stored(&self, name: &str) -> Result<Option<StoredMatrix>> {
        let Some((gname, t)) = self.find(name) else {
            return Ok(None);
        };
        let (ty, dims) = (t.ggml_type(), t.dims());
        if ty == GgmlType::F32 || dims.len() != 2 {
            return Ok(None);
        }
        let to_usize = |d: u64| usize::try_from(d).map_err(|e| VisionError::Weights(e.to_string()));
        let (cols, rows) = (to_usize(dims[0])?, to_usize(dims[1])?);
        let size = ty.row_size(cols).and_then(|r| r.checked_mul(rows));
        if size != Some(t.data().len()) {
            return Err(VisionError::Weights(format!("{gname}: data size")));
        }
        Ok(Some(StoredMatrix {
            ty,
            shape: [rows, cols],
            bytes: t.data().to_vec(),
        }))
    }
}
