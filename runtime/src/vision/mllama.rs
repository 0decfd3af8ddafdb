//! The Llama 3.2 Vision (mllama) vision tower and projector, in f32.
//!
//! Conv patch embedding → gated pre-tile embedding → CLS (first) → gated
//! position + tile embeddings → layernorm_pre → pad each tile to a multiple
//! of 8 tokens → local encoder over all tiles as one sequence (keeping the
//! intermediate layers' inputs) → layernorm_post → gated post-tile
//! embedding → gated global encoder → drop pads → concat(global,
//! interleaved intermediates) → projector (with bias).

use serde_json::Value;

use super::error::{Result, VisionError, field};
use super::tensor::{
    Bias, EncoderLayer, LayerDims, LayerInputs, LayerNorm, Linear, Scratch, TensorSource, Weights,
    load, load_gate, patches,
};

/// The mllama vision hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub struct MllamaVisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub hidden_size: usize,
    pub attention_heads: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_global_layers: usize,
    pub max_num_tiles: usize,
    /// Number of supported aspect ratios (the embeddings have one more row).
    pub num_aspect_ratios: usize,
    pub intermediate_layers_indices: Vec<usize>,
    pub norm_eps: f32,
    /// The text model's hidden size (the projector's output).
    pub text_hidden_size: usize,
}

impl MllamaVisionConfig {
    /// From a Hugging Face `MllamaForConditionalGeneration` config.json.
    pub fn from_hf_config(config: &Value) -> Result<MllamaVisionConfig> {
        let v = config
            .get("vision_config")
            .ok_or_else(|| VisionError::Config("no vision_config".into()))?;
        let t = config
            .get("text_config")
            .ok_or_else(|| VisionError::Config("no text_config".into()))?;
        let indices = v
            .get("intermediate_layers_indices")
            .and_then(Value::as_array)
            .ok_or_else(|| VisionError::Config("intermediate_layers_indices missing".into()))?
            .iter()
            .map(|x| x.as_u64().map(|x| x as usize))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                VisionError::Config("intermediate_layers_indices: not integers".into())
            })?;
        let ratios = v
            .get("supported_aspect_ratios")
            .and_then(Value::as_array)
            .map(Vec::len);
        let max_num_tiles = field(v, "max_num_tiles")?;
        let cfg = MllamaVisionConfig {
            image_size: field(v, "image_size")?,
            patch_size: field(v, "patch_size")?,
            num_channels: field(v, "num_channels").unwrap_or(3),
            hidden_size: field(v, "hidden_size")?,
            attention_heads: field(v, "attention_heads")?,
            intermediate_size: field(v, "intermediate_size")?,
            num_hidden_layers: field(v, "num_hidden_layers")?,
            num_global_layers: field(v, "num_global_layers")?,
            max_num_tiles,
            num_aspect_ratios: ratios
                .unwrap_or_else(|| super::processor::mllama_aspect_ratios(max_num_tiles).len()),
            intermediate_layers_indices: indices,
            norm_eps: v.get("norm_eps").and_then(Value::as_f64).unwrap_or(1e-5) as f32,
            text_hidden_size: field(t, "hidden_size")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |s: &str| Err(VisionError::Config(s.to_string()));
        if self.patch_size == 0 || self.image_size % self.patch_size != 0 {
            return bad("image_size must be a multiple of patch_size");
        }
        if self.attention_heads == 0 || self.hidden_size % self.attention_heads != 0 {
            return bad("hidden_size must be a multiple of attention_heads");
        }
        if self
            .intermediate_layers_indices
            .iter()
            .any(|&i| i >= self.num_hidden_layers)
        {
            return bad("intermediate_layers_indices out of range");
        }
        if self.max_num_tiles == 0 || self.num_channels == 0 {
            return bad("max_num_tiles and num_channels must be positive");
        }
        Ok(())
    }

    /// Patches per tile.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// The tower's output width: hidden · (1 + intermediate layers).
    pub fn vision_output_dim(&self) -> usize {
        self.hidden_size * (1 + self.intermediate_layers_indices.len())
    }
}

/// The loaded tower.
pub struct MllamaVision {
    pub cfg: MllamaVisionConfig,
    patch_embedding: Linear,
    class_embedding: Vec<f32>,
    pre_tile: (f32, Vec<f32>),
    position: Vec<f32>,
    position_gate: f32,
    tile_position: Vec<f32>,
    post_tile: (f32, Vec<f32>),
    layernorm_pre: LayerNorm,
    layernorm_post: LayerNorm,
    local: Vec<EncoderLayer>,
    global: Vec<EncoderLayer>,
    projector: Linear,
}

/// The tower's outputs for one image.
pub struct MllamaVisionOutput {
    /// `[max_tiles, P+1, vision_output_dim]`.
    pub vision_out: Vec<f32>,
    /// `cross_attention_states`: `[max_tiles · (P+1), text_hidden]`.
    pub features: Vec<f32>,
}

impl MllamaVision {
    /// Loads the tower by Hugging Face tensor names (`vision_model.*`,
    /// `multi_modal_projector.*`).
    pub fn load(cfg: MllamaVisionConfig, src: &dyn TensorSource) -> Result<MllamaVision> {
        let (d, t) = (cfg.hidden_size, cfg.max_num_tiles);
        let p1 = cfg.num_patches() + 1;
        let rows = cfg.num_aspect_ratios + 1;
        let pl = cfg.num_channels * cfg.patch_size * cfg.patch_size;
        let patch_embedding = Linear {
            w: Weights::F32(load(
                src,
                "vision_model.patch_embedding.weight",
                &[d, cfg.num_channels, cfg.patch_size, cfg.patch_size],
            )?),
            b: None,
            rows: d,
            cols: pl,
        };
        let dims = |gated| LayerDims {
            hidden: d,
            intermediate: cfg.intermediate_size,
            eps: cfg.norm_eps,
            attn_bias: Bias::No,
            gated,
        };
        let local = (0..cfg.num_hidden_layers)
            .map(|i| {
                EncoderLayer::load(
                    src,
                    &format!("vision_model.transformer.layers.{i}"),
                    dims(false),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let global = (0..cfg.num_global_layers)
            .map(|i| {
                EncoderLayer::load(
                    src,
                    &format!("vision_model.global_transformer.layers.{i}"),
                    dims(true),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let v = "vision_model";
        Ok(MllamaVision {
            patch_embedding,
            class_embedding: load(src, &format!("{v}.class_embedding"), &[d])?,
            pre_tile: (
                load_gate(src, &format!("{v}.pre_tile_positional_embedding.gate"))?,
                load(
                    src,
                    &format!("{v}.pre_tile_positional_embedding.embedding.weight"),
                    &[rows, t * d],
                )?,
            ),
            position: load(
                src,
                &format!("{v}.gated_positional_embedding.embedding"),
                &[p1, d],
            )?,
            position_gate: load_gate(src, &format!("{v}.gated_positional_embedding.gate"))?,
            tile_position: load(
                src,
                &format!("{v}.gated_positional_embedding.tile_embedding.weight"),
                &[rows, t * p1 * d],
            )?,
            post_tile: (
                load_gate(src, &format!("{v}.post_tile_positional_embedding.gate"))?,
                load(
                    src,
                    &format!("{v}.post_tile_positional_embedding.embedding.weight"),
                    &[rows, t * d],
                )?,
            ),
            // layernorm_pre/post use nn.LayerNorm's default eps.
            layernorm_pre: LayerNorm::load(src, &format!("{v}.layernorm_pre"), d, 1e-5)?,
            layernorm_post: LayerNorm::load(src, &format!("{v}.layernorm_post"), d, 1e-5)?,
            local,
            global,
            projector: Linear::load(
                src,
                "multi_modal_projector",
                cfg.text_hidden_size,
                cfg.vision_output_dim(),
                Bias::Yes,
            )?,
            cfg,
        })
    }

    /// Encodes one image: `pixels` `[max_tiles, C, size, size]` from the
    /// processor, its aspect ratio id (1-based) and tile mask. `trace`
    /// receives the intermediate tensors by stage name.
    pub fn encode(
        &self,
        pixels: &[f32],
        aspect_ratio_id: usize,
        aspect_ratio_mask: &[u8],
        trace: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<MllamaVisionOutput> {
        let cfg = &self.cfg;
        let (d, t, p) = (cfg.hidden_size, cfg.max_num_tiles, cfg.num_patches());
        let size = cfg.image_size;
        if pixels.len() != t * cfg.num_channels * size * size {
            return Err(VisionError::Config(format!(
                "pixel values: {} floats for {t} tiles",
                pixels.len()
            )));
        }
        if aspect_ratio_id == 0
            || aspect_ratio_id > cfg.num_aspect_ratios
            || aspect_ratio_mask.len() != t
        {
            return Err(VisionError::Config(format!(
                "aspect ratio id {aspect_ratio_id} / mask {aspect_ratio_mask:?}"
            )));
        }
        let x = self.embed(pixels, aspect_ratio_id, trace);
        // Pad every tile to a multiple of 8 tokens after the norm.
        let p1 = p + 1;
        let pp = p1.div_ceil(8) * 8;
        let s = t * pp;
        let mut h = vec![0f32; s * d];
        for tile in 0..t {
            h[tile * pp * d..(tile * pp + p1) * d]
                .copy_from_slice(&x[tile * p1 * d..(tile + 1) * p1 * d]);
        }
        drop(x);
        // HF's mask: tokens of masked tiles and pad tokens are "masked"; a
        // pair of masked tokens gets finfo.min. With no pad (P+1 already a
        // multiple of 8) HF's `[-0:]` slice marks every token.
        let masked: Vec<bool> = (0..s)
            .map(|i| aspect_ratio_mask[i / pp] == 0 || i % pp >= p1 || pp == p1)
            .collect();
        let inputs = LayerInputs {
            heads: cfg.attention_heads,
            rope: None,
            masked: Some(&masked),
        };
        let mut sc = Scratch::new(s, d, cfg.intermediate_size, d / cfg.attention_heads);
        let k = cfg.intermediate_layers_indices.len();
        let mut inter = vec![0f32; k * s * d];
        for (i, layer) in self.local.iter().enumerate() {
            layer.forward(&mut h, inputs, &mut sc);
            keep_intermediate(&cfg.intermediate_layers_indices, i, &h, &mut inter);
        }
        trace("local_encoder_out", &h);
        self.layernorm_post.forward_inplace(&mut h);
        trace("after_layernorm_post", &h);
        let (gate, emb) = &self.post_tile;
        let row = &emb[aspect_ratio_id * t * d..(aspect_ratio_id + 1) * t * d];
        for (i, tok) in h.chunks_exact_mut(d).enumerate() {
            let e = &row[(i / pp) * d..(i / pp + 1) * d];
            tok.iter_mut().zip(e).for_each(|(a, &b)| *a += gate * b);
        }
        for layer in &self.global {
            layer.forward(&mut h, inputs, &mut sc);
        }
        drop(sc);
        trace("global_encoder_out", &h);
        let vision_out = self.assemble(&h, &inter, pp);
        let mut features = vec![0f32; t * p1 * cfg.text_hidden_size];
        self.projector.forward(&vision_out, &mut features);
        Ok(MllamaVisionOutput {
            vision_out,
            features,
        })
    }

    /// Patch embedding, pre-tile embedding, CLS, position + tile
    /// embeddings and layernorm_pre: `[T, P+1, D]`.
    fn embed(&self, pixels: &[f32], ar: usize, trace: &mut dyn FnMut(&str, &[f32])) -> Vec<f32> {
        let cfg = &self.cfg;
        let (d, t, p) = (cfg.hidden_size, cfg.max_num_tiles, cfg.num_patches());
        let cols = patches(pixels, t, cfg.num_channels, cfg.image_size, cfg.patch_size);
        let mut pe = vec![0f32; t * p * d];
        self.patch_embedding.forward(&cols, &mut pe);
        drop(cols);
        trace("patch_embedding_out", &pe);
        let p1 = p + 1;
        let mut x = vec![0f32; t * p1 * d];
        let (pre_gate, pre) = &self.pre_tile;
        let pre_row = &pre[ar * t * d..(ar + 1) * t * d];
        let tile_row = &self.tile_position[ar * t * p1 * d..(ar + 1) * t * p1 * d];
        let g = self.position_gate;
        for tile in 0..t {
            for j in 0..p1 {
                let dst = &mut x[(tile * p1 + j) * d..(tile * p1 + j + 1) * d];
                if j == 0 {
                    dst.copy_from_slice(&self.class_embedding);
                } else {
                    let src = &pe[(tile * p + j - 1) * d..(tile * p + j) * d];
                    let e = &pre_row[tile * d..(tile + 1) * d];
                    dst.iter_mut()
                        .zip(src.iter().zip(e))
                        .for_each(|(o, (&a, &b))| *o = a + pre_gate * b);
                }
                let pos = &self.position[j * d..(j + 1) * d];
                let tp = &tile_row[(tile * p1 + j) * d..(tile * p1 + j + 1) * d];
                for c in 0..d {
                    dst[c] += (1.0 - g) * pos[c];
                    dst[c] += g * tp[c];
                }
            }
        }
        self.layernorm_pre.forward_inplace(&mut x);
        trace("after_layernorm_pre", &x);
        x
    }

    /// Drops the pads and concatenates the global output with the
    /// intermediates, interleaved: channel D + c·K + k = channel c of
    /// intermediate k. `[T, P+1, D·(K+1)]`.
    fn assemble(&self, h: &[f32], inter: &[f32], pp: usize) -> Vec<f32> {
        let cfg = &self.cfg;
        let (d, t, p1) = (cfg.hidden_size, cfg.max_num_tiles, cfg.num_patches() + 1);
        let k = cfg.intermediate_layers_indices.len();
        let out_dim = cfg.vision_output_dim();
        let s = t * pp;
        let mut out = vec![0f32; t * p1 * out_dim];
        for tile in 0..t {
            for j in 0..p1 {
                let src = tile * pp + j;
                let dst = &mut out[(tile * p1 + j) * out_dim..(tile * p1 + j + 1) * out_dim];
                dst[..d].copy_from_slice(&h[src * d..(src + 1) * d]);
                for kk in 0..k {
                    let layer = &inter[(kk * s + src) * d..(kk * s + src + 1) * d];
                    for c in 0..d {
                        dst[d + c * k + kk] = layer[c];
                    }
                }
            }
        }
        out
    }
}

/// Keeps the output of local layer `layer` if `indices` names it (0-based,
/// before layernorm_post).
fn keep_intermediate(indices: &[usize], layer: usize, h: &[f32], inter: &mut [f32]) {
    let n = h.len();
    for (k, _) in indices.iter().enumerate().filter(|&(_, &i)| i == layer) {
        inter[k * n..(k + 1) * n].copy_from_slice(h);
    }
}
