//! The Llama 4 vision tower, pixel-shuffle adapter and projector, in f32.
//!
//! Unfold + linear patch embedding → CLS appended last → position
//! embedding → layernorm_pre → encoder (pre-LN, biased attention with 2-D
//! RoPE on adjacent pairs, GELU MLP; every LayerNorm eps 1e-5) →
//! layernorm_post → drop CLS → pixel shuffle → MLP2 (GELU after both
//! layers) → projector.

use serde_json::Value;

use super::error::{Result, VisionError, field};
use super::tensor::{
    Bias, EncoderLayer, LayerDims, LayerInputs, LayerNorm, Linear, Scratch, TensorSource, gelu,
    load, patches,
};

/// The Llama 4 vision hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Llama4VisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub pixel_shuffle_ratio: f64,
    pub projector_input_dim: usize,
    pub projector_output_dim: usize,
    pub rope_theta: f32,
    pub text_hidden_size: usize,
}

impl Llama4VisionConfig {
    /// From a Hugging Face `Llama4ForConditionalGeneration` config.json.
    pub fn from_hf_config(config: &Value) -> Result<Llama4VisionConfig> {
        let v = config
            .get("vision_config")
            .ok_or_else(|| VisionError::Config("no vision_config".into()))?;
        let t = config
            .get("text_config")
            .ok_or_else(|| VisionError::Config("no text_config".into()))?;
        let theta = v
            .get("rope_theta")
            .or_else(|| v.get("rope_parameters").and_then(|r| r.get("rope_theta")))
            .and_then(Value::as_f64)
            .unwrap_or(10000.0);
        let cfg = Llama4VisionConfig {
            image_size: field(v, "image_size")?,
            patch_size: field(v, "patch_size")?,
            num_channels: field(v, "num_channels").unwrap_or(3),
            hidden_size: field(v, "hidden_size")?,
            num_attention_heads: field(v, "num_attention_heads")?,
            intermediate_size: field(v, "intermediate_size")?,
            num_hidden_layers: field(v, "num_hidden_layers")?,
            pixel_shuffle_ratio: v
                .get("pixel_shuffle_ratio")
                .and_then(Value::as_f64)
                .unwrap_or(0.5),
            projector_input_dim: field(v, "projector_input_dim")?,
            projector_output_dim: field(v, "projector_output_dim")?,
            rope_theta: theta as f32,
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
        if self.num_attention_heads == 0 || self.hidden_size % (4 * self.num_attention_heads) != 0 {
            return bad("head_dim must be a multiple of 4 (2-D RoPE)");
        }
        let s = self.shuffle_factor();
        if s == 0
            || (1.0 / s as f64 - self.pixel_shuffle_ratio).abs() > 1e-9
            || self.grid() % s != 0
        {
            return bad("pixel_shuffle_ratio must be 1/n with n dividing the patch grid");
        }
        Ok(())
    }

    /// Patches per side of a tile.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// 1 / pixel_shuffle_ratio.
    pub fn shuffle_factor(&self) -> usize {
        (1.0 / self.pixel_shuffle_ratio).round() as usize
    }

    /// Output tokens per tile.
    pub fn tokens_per_tile(&self) -> usize {
        (self.grid() / self.shuffle_factor()).pow(2)
    }
}

/// The loaded tower.
pub struct Llama4Vision {
    pub cfg: Llama4VisionConfig,
    patch_embedding: Linear,
    class_embedding: Vec<f32>,
    position: Vec<f32>,
    layernorm_pre: LayerNorm,
    layernorm_post: LayerNorm,
    layers: Vec<EncoderLayer>,
    adapter_fc1: Linear,
    adapter_fc2: Linear,
    projector: Linear,
    /// Per token (patches row-major, then CLS): cos/sin per adjacent pair.
    rope: Vec<f32>,
}

/// The tower's outputs for one image.
pub struct Llama4VisionOutput {
    /// `[tiles, tokens_per_tile, projector_output_dim]`.
    pub vision_out: Vec<f32>,
    /// `[tiles, tokens_per_tile, text_hidden]`: replaces the `<|patch|>`
    /// embeddings in order.
    pub features: Vec<f32>,
}

impl Llama4Vision {
    /// Loads the tower by Hugging Face tensor names.
    pub fn load(cfg: Llama4VisionConfig, src: &dyn TensorSource) -> Result<Llama4Vision> {
        let d = cfg.hidden_size;
        let p1 = cfg.grid().pow(2) + 1;
        let pl = cfg.num_channels * cfg.patch_size * cfg.patch_size;
        let v = "vision_model";
        let dims = LayerDims {
            hidden: d,
            intermediate: cfg.intermediate_size,
            // HF ignores norm_eps: every vision LayerNorm uses 1e-5.
            eps: 1e-5,
            attn_bias: Bias::Yes,
            gated: false,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(src, &format!("{v}.model.layers.{i}"), dims))
            .collect::<Result<Vec<_>>>()?;
        let s2 = cfg.shuffle_factor().pow(2);
        Ok(Llama4Vision {
            patch_embedding: Linear::load(
                src,
                &format!("{v}.patch_embedding.linear"),
                d,
                pl,
                Bias::No,
            )?,
            class_embedding: load(src, &format!("{v}.class_embedding"), &[d])?,
            position: load(src, &format!("{v}.positional_embedding_vlm"), &[p1, d])?,
            layernorm_pre: LayerNorm::load(src, &format!("{v}.layernorm_pre"), d, 1e-5)?,
            layernorm_post: LayerNorm::load(src, &format!("{v}.layernorm_post"), d, 1e-5)?,
            layers,
            adapter_fc1: Linear::load(
                src,
                &format!("{v}.vision_adapter.mlp.fc1"),
                cfg.projector_input_dim,
                d * s2,
                Bias::No,
            )?,
            adapter_fc2: Linear::load(
                src,
                &format!("{v}.vision_adapter.mlp.fc2"),
                cfg.projector_output_dim,
                cfg.projector_input_dim,
                Bias::No,
            )?,
            projector: Linear::load(
                src,
                "multi_modal_projector.linear_1",
                cfg.text_hidden_size,
                cfg.projector_output_dim,
                Bias::No,
            )?,
            rope: rope_table(&cfg),
            cfg,
        })
    }

    /// Encodes `n_tiles` tiles `[n_tiles, C, size, size]` (grid tiles
    /// row-major, then the global tile). `trace` receives the intermediate
    /// tensors by stage name.
    pub fn encode(
        &self,
        pixels: &[f32],
        n_tiles: usize,
        trace: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<Llama4VisionOutput> {
        let cfg = &self.cfg;
        let (d, size, g) = (cfg.hidden_size, cfg.image_size, cfg.grid());
        if n_tiles == 0 || pixels.len() != n_tiles * cfg.num_channels * size * size {
            return Err(VisionError::Config(format!(
                "pixel values: {} floats for {n_tiles} tiles",
                pixels.len()
            )));
        }
        let p = g * g;
        let p1 = p + 1;
        let cols = patches(pixels, n_tiles, cfg.num_channels, size, cfg.patch_size);
        let mut pe = vec![0f32; n_tiles * p * d];
        self.patch_embedding.forward(&cols, &mut pe);
        drop(cols);
        trace("patch_embedding_out", &pe);
        let mut x = vec![0f32; n_tiles * p1 * d];
        for t in 0..n_tiles {
            let dst = &mut x[t * p1 * d..(t + 1) * p1 * d];
            dst[..p * d].copy_from_slice(&pe[t * p * d..(t + 1) * p * d]);
            dst[p * d..].copy_from_slice(&self.class_embedding);
            dst.iter_mut()
                .zip(&self.position)
                .for_each(|(a, &b)| *a += b);
        }
        drop(pe);
        self.layernorm_pre.forward_inplace(&mut x);
        trace("after_layernorm_pre", &x);
        let inputs = LayerInputs {
            heads: cfg.num_attention_heads,
            rope: Some(&self.rope),
            masked: None,
        };
        let mut sc = Scratch::new(p1, d, cfg.intermediate_size, d / cfg.num_attention_heads);
        for t in 0..n_tiles {
            let tile = &mut x[t * p1 * d..(t + 1) * p1 * d];
            for layer in &self.layers {
                layer.forward(tile, inputs, &mut sc);
            }
        }
        drop(sc);
        trace("encoder_out", &x);
        self.layernorm_post.forward_inplace(&mut x);
        trace("after_layernorm_post", &x);
        let shuffled = self.pixel_shuffle(&x, n_tiles);
        drop(x);
        let n_tok = n_tiles * cfg.tokens_per_tile();
        let mut h = vec![0f32; n_tok * cfg.projector_input_dim];
        self.adapter_fc1.forward(&shuffled, &mut h);
        h.iter_mut().for_each(|v| *v = gelu(*v));
        let mut vision_out = vec![0f32; n_tok * cfg.projector_output_dim];
        self.adapter_fc2.forward(&h, &mut vision_out);
        vision_out.iter_mut().for_each(|v| *v = gelu(*v));
        trace("vision_adapter_out", &vision_out);
        let mut features = vec![0f32; n_tok * cfg.text_hidden_size];
        self.projector.forward(&vision_out, &mut features);
        Ok(Llama4VisionOutput {
            vision_out,
            features,
        })
    }

    /// Drops CLS and folds s×s neighbourhoods into channels: output token
    /// (h', w') channel (dh·s + dw)·D + c = channel c of patch (s·h'+dh, s·w'+dw).
    fn pixel_shuffle(&self, x: &[f32], n_tiles: usize) -> Vec<f32> {
        let cfg = &self.cfg;
        let (d, g, s) = (cfg.hidden_size, cfg.grid(), cfg.shuffle_factor());
        let (go, p1) = (g / s, g * g + 1);
        let width = d * s * s;
        let mut out = vec![0f32; n_tiles * go * go * width];
        for t in 0..n_tiles {
            for h2 in 0..go {
                for w2 in 0..go {
                    let dst = &mut out[((t * go + h2) * go + w2) * width..][..width];
                    for dh in 0..s {
                        for dw in 0..s {
                            let src = t * p1 + (s * h2 + dh) * g + s * w2 + dw;
                            let o = (dh * s + dw) * d;
                            dst[o..o + d].copy_from_slice(&x[src * d..(src + 1) * d]);
                        }
                    }
                }
            }
        }
        out
    }
}

/// The 2-D RoPE angles: for patch (x, y), pairs j < hd/4 turn by
/// (x+1)·f_j and pairs j ≥ hd/4 by (y+1)·f_{j−hd/4}, with
/// f_i = θ^(−2i/(hd/2)) (f32, as HF computes them); CLS (last) turns by 0.
fn rope_table(cfg: &Llama4VisionConfig) -> Vec<f32> {
    let hd = cfg.hidden_size / cfg.num_attention_heads;
    let g = cfg.grid();
    let freq_dim = hd / 2;
    let f: Vec<f32> = (0..hd / 4)
        .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / freq_dim as f32))
        .collect();
    let mut cs = vec![0f32; (g * g + 1) * hd];
    for p in 0..=g * g {
        let row = &mut cs[p * hd..(p + 1) * hd];
        for j in 0..hd / 2 {
            let angle = if p == g * g {
                0.0
            } else if j < hd / 4 {
                ((p % g + 1) as f32 * f[j]) as f64
            } else {
                ((p / g + 1) as f32 * f[j - hd / 4]) as f64
            };
            row[2 * j] = angle.cos() as f32;
            row[2 * j + 1] = angle.sin() as f32;
        }
    }
    cs
}
