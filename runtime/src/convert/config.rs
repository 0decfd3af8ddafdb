//! `config.json` and `generation_config.json`, with transformers' defaults.
//!
//! Fields that fix tensor shapes (`hidden_size`, `num_hidden_layers` …) are
//! required: guessing them would only move the error to a shape mismatch.
//! Scalars that transformers' `LlamaConfig` / `Llama4TextConfig` give a
//! default (`rms_norm_eps`, `rope_theta`, `max_position_embeddings` …) get
//! that default, because llama.cpp's converter reads the config through
//! transformers and so writes the defaults too.

use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use super::checkpoint::read_json_object;
use super::error::{ConvertError, config_err};

type Result<T> = std::result::Result<T, ConvertError>;

/// A token id field that may be one id or a list of ids (`eos_token_id`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenIds(pub Vec<u32>);

impl<'de> Deserialize<'de> for TokenIds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(i64),
            Many(Vec<i64>),
        }
        // Negative ids (old configs say `"pad_token_id": -1`) mean "none".
        let ids = match Option::<OneOrMany>::deserialize(d)? {
            None => Vec::new(),
            Some(OneOrMany::One(x)) => vec![x],
            Some(OneOrMany::Many(v)) => v,
        };
        Ok(TokenIds(
            ids.into_iter()
                .filter_map(|x| u32::try_from(x).ok())
                .collect(),
        ))
    }
}

impl TokenIds {
    /// The first id, if any.
    pub fn first(&self) -> Option<u32> {
        self.0.first().copied()
    }
}

/// The RoPE parameters (`rope_parameters` in transformers 5, `rope_scaling`
/// before), as llama.cpp's converter reads them.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RopeParams {
    pub rope_type: Option<String>,
    #[serde(rename = "type")]
    pub legacy_type: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<f64>,
}

impl RopeParams {
    /// `rope_type`, or the older `type`.
    pub fn kind(&self) -> Option<&str> {
        self.rope_type.as_deref().or(self.legacy_type.as_deref())
    }
}

/// The fields of `config.json` the converter uses (after `text_config`, if
/// any, is merged into the top level).
#[derive(Clone, Debug, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: Option<String>,

    pub vocab_size: Option<u64>,
    pub hidden_size: Option<u64>,
    pub intermediate_size: Option<u64>,
    pub num_hidden_layers: Option<u64>,
    pub num_attention_heads: Option<u64>,
    pub num_key_value_heads: Option<u64>,
    pub head_dim: Option<u64>,
    pub max_position_embeddings: Option<u64>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_parameters: Option<Json>,
    pub rope_scaling: Option<Json>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub pretraining_tp: Option<u64>,

    #[serde(default)]
    pub bos_token_id: TokenIds,
    #[serde(default)]
    pub eos_token_id: TokenIds,
    #[serde(default)]
    pub pad_token_id: TokenIds,

    // Llama 4 (text)
    pub intermediate_size_mlp: Option<u64>,
    pub num_local_experts: Option<u64>,
    pub num_experts_per_tok: Option<u64>,
    pub interleave_moe_layer_step: Option<u64>,
    pub moe_layers: Option<Vec<u64>>,
    pub attention_chunk_size: Option<u64>,
    pub layer_types: Option<Vec<String>>,
    pub no_rope_layers: Option<Vec<u64>>,
    pub no_rope_layer_interval: Option<u64>,
    pub use_qk_norm: Option<bool>,
    pub attn_temperature_tuning: Option<bool>,
    pub floor_scale: Option<u64>,
    pub attn_scale: Option<f64>,

    // Mllama (text): the layers replaced by cross-attention blocks.
    pub cross_attention_layers: Option<Vec<u64>>,
}

impl HfConfig {
    /// Reads `config.json` from `dir`, merging a `text_config` object into
    /// the top level as llama.cpp does (its keys win).
    pub fn load(dir: &Path) -> Result<HfConfig> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(ConvertError::MissingFile {
                path,
                what: "config.json",
            });
        }
        let mut obj = read_json_object(&path)?;
        if let Some(Json::Object(text)) = obj.get("text_config").cloned() {
            for (k, v) in text {
                obj.insert(k, v);
            }
        }
        from_object(&path, obj)
    }

    /// A required shape field, nonzero.
    pub fn required(&self, field: &str, v: Option<u64>) -> Result<u64> {
        match v {
            Some(0) => Err(config_err(field, "must be positive")),
            Some(x) => Ok(x),
            None => Err(config_err(field, "missing")),
        }
    }

    /// The RoPE parameters: `rope_parameters`, else `rope_scaling`, else
    /// none; a per-layer-type form (`{"full_attention": {...}}`) gives its
    /// `full_attention` entry.
    pub fn rope(&self) -> Result<RopeParams> {
        let raw = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) if !p.is_null() => ("rope_parameters", p),
            (_, Some(s)) if !s.is_null() => ("rope_scaling", s),
            _ => return Ok(RopeParams::default()),
        };
        let (field, mut v) = (raw.0, raw.1.clone());
        if let Some(full) = v.get("full_attention") {
            v = full.clone();
        }
        serde_json::from_value(v).map_err(|e| config_err(field, e.to_string()))
    }
}

fn from_object<T: DeserializeOwned>(path: &Path, obj: Map<String, Json>) -> Result<T> {
    serde_json::from_value(Json::Object(obj)).map_err(|e| ConvertError::BadJson {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// `generation_config.json`: the end-of-generation ids.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub bos_token_id: TokenIds,
    #[serde(default)]
    pub eos_token_id: TokenIds,
    #[serde(default)]
    pub pad_token_id: TokenIds,
}

impl GenerationConfig {
    /// Reads `generation_config.json` if `dir` has one.
    pub fn load(dir: &Path) -> Result<Option<GenerationConfig>> {
        let path = dir.join("generation_config.json");
        if !path.is_file() {
            return Ok(None);
        }
        let v = Json::Object(read_json_object(&path)?);
        serde_json::from_value(v)
            .map(Some)
            .map_err(|e| ConvertError::BadJson {
                path,
                message: e.to_string(),
            })
    }
}
