//! The vision tower and projector of a multimodal checkpoint
//! (`MllamaForConditionalGeneration`, `Llama4ForConditionalGeneration`) as
//! a separate mmproj GGUF (see [`crate::vision::mmproj`] for the layout).

use std::path::Path;

use serde_json::Value as Json;

use super::checkpoint::Checkpoint;
use super::error::{ConvertError, config_err};
use super::plan::{OutTensor, OutType, Recipe, tensor_type};
use crate::gguf::Value;
use crate::vision::mmproj::{self, Projector};
use crate::vision::{Llama4VisionConfig, MllamaVisionConfig, ProcessorConfig, VisionError};

type Result<T> = std::result::Result<T, ConvertError>;

/// The planned mmproj file.
pub struct MmprojPlan {
    pub kv: Vec<(String, Value<'static>)>,
    pub tensors: Vec<OutTensor>,
}

fn vision_err(e: VisionError) -> ConvertError {
    match e {
        VisionError::Config(m) => config_err("vision_config", m),
        other => ConvertError::Unsupported {
            what: other.to_string(),
        },
    }
}

/// The projector type of a multimodal HF architecture, if it has one.
pub fn projector_of(hf_arch: &str) -> Option<Projector> {
    match hf_arch {
        "MllamaForConditionalGeneration" => Some(Projector::Mllama),
        "Llama4ForConditionalGeneration" => Some(Projector::Llama4),
        _ => None,
    }
}

/// Plans the mmproj of the checkpoint in `dir`, whose config.json is
/// `config` (not merged with text_config).
pub fn plan(
    dir: &Path,
    config: &Json,
    ckpt: &Checkpoint,
    projector: Projector,
    out: OutType,
    name: &str,
) -> Result<MmprojPlan> {
    let processor = ProcessorConfig::from_hf_dir(dir).map_err(vision_err)?;
    let mut kv: Vec<(String, Value<'static>)> = vec![
        ("general.architecture".into(), "clip".into()),
        ("general.type".into(), "mmproj".into()),
        ("general.name".into(), name.to_string().into()),
        ("general.file_type".into(), out.file_type().into()),
        ("general.quantization_version".into(), 2u32.into()),
    ];
    let tower_kv = match projector {
        Projector::Llama4 => {
            let cfg = Llama4VisionConfig::from_hf_config(config).map_err(vision_err)?;
            let eps = config["vision_config"]["norm_eps"].as_f64().unwrap_or(1e-5) as f32;
            mmproj::llama4_metadata(&cfg, eps, &processor)
        }
        Projector::Mllama => {
            let cfg = MllamaVisionConfig::from_hf_config(config).map_err(vision_err)?;
            mmproj::mllama_metadata(&cfg, &processor)
        }
    }
    .map_err(vision_err)?;
    kv.extend(tower_kv);
    let mut tensors = Vec::new();
    for hf in ckpt.names() {
        if !(hf.starts_with("vision_model.") || hf.starts_with("multi_modal_projector.")) {
            continue;
        }
        let gguf = mmproj::mmproj_tensor_name(projector, hf).ok_or_else(|| {
            ConvertError::UnexpectedTensor {
                tensor: hf.to_string(),
            }
        })?;
        let src = ckpt.get(hf).expect("name from the checkpoint").clone();
        let dims: Vec<u64> = src.shape.iter().rev().map(|&d| d as u64).collect();
        // llama.cpp keeps the patch embedding in F16/F32 (never quantized).
        let force_f32 =
            gguf == "v.patch_embd.weight" && out != OutType::F16 && out != OutType::BF16;
        let ty = tensor_type(&gguf, &dims, out, force_f32);
        tensors.push(OutTensor {
            name: gguf,
            dims,
            ty,
            recipe: Recipe::Copy(src),
        });
    }
    for required in ["v.patch_embd.weight", "v.class_embd", "mm.model.fc.weight"] {
        if !tensors.iter().any(|t| t.name == required) {
            return Err(ConvertError::MissingTensor {
                tensor: required.to_string(),
            });
        }
    }
    Ok(MmprojPlan { kv, tensors })
}
