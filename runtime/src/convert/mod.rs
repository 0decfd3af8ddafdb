//! `spinel convert`: Hugging Face checkpoints to GGUF, the way llama.cpp's
//! `convert_hf_to_gguf.py` does it.
//!
//! Reads a checkpoint folder — `config.json`, the weights in one
//! `model.safetensors` or in shards listed by `model.safetensors.index.json`
//! (F32, F16 or BF16), `tokenizer.json` + `tokenizer_config.json` and
//! `generation_config.json` when present — and writes a GGUF file that
//! llama.cpp loads and that matches what llama.cpp's converter writes for
//! the same folder:
//!
//! * `LlamaForCausalLM` → `llama`: llama.cpp's metadata keys and tensor
//!   names; q/k projections un-permuted (llama.cpp's `LlamaModel.permute`:
//!   HF's rotate-half layout to GGUF's adjacent pairs); `rope_freqs` for
//!   Llama 3.1-style RoPE scaling; no `output` tensor when embeddings are
//!   tied.
//! * `Llama4ForCausalLM` (and the text model of
//!   `Llama4ForConditionalGeneration`) → `llama4`: fused experts split and
//!   transposed into `ffn_{gate,up,down}_exps`, the shared expert as
//!   `ffn_*_shexp`, the router as `ffn_gate_inp`; q/k not permuted.
//! * `MllamaForConditionalGeneration` (Llama 3.2 Vision) → `mllama`: the
//!   `llama` layout plus cross-attention blocks in the layers listed by
//!   `mllama.attention.cross_attention_layers` (see README.md).
//! * Multimodal checkpoints (`MllamaForConditionalGeneration`,
//!   `Llama4ForConditionalGeneration`) also give an mmproj file with the
//!   vision tower and projector ([`Conversion::write_mmproj`]).
//!
//! Tensor types follow llama.cpp's rule ([`plan::tensor_type`]): 1-D
//! tensors, norms, biases and the MoE router stay F32; other weights take
//! the out type, and a Q8_0 weight whose rows are not a multiple of 32
//! falls back to F16.
//!
//! # Where Spinel's output differs from llama.cpp's
//!
//! * `general.*` descriptive keys: `general.name` is the folder name;
//!   llama.cpp's model-card heuristics (`general.basename`,
//!   `general.size_label`, `general.finetune`, license, tags …) are not
//!   reproduced.
//! * Llama 4: llama.cpp hard-codes the chunk size (8192), the NoPE-layer
//!   step (4), attention temperature tuning (8192, 0.1) and q/k norm (off
//!   only with 128 experts); Hugging Face configs make them per-model, so
//!   Spinel also writes `llama4.attention.chunk_size`,
//!   `llama4.no_rope_layer_step`, `llama4.attention.temperature_length`,
//!   `llama4.attention.temperature_scale` (0 when
//!   `attn_temperature_tuning` is off) and `llama4.use_qk_norm`, which
//!   Spinel's loader reads and llama.cpp ignores.
//! * A tied checkpoint that also stores `lm_head.weight` gets no `output`
//!   tensor (llama.cpp copies it; it equals `token_embd`).
//! * Without `tokenizer.json` llama.cpp's converter stops; Spinel writes
//!   the model without tokenizer metadata and says so in
//!   [`Conversion::notes`].
//!
//! # Use
//!
//! ```no_run
//! use spinel_runtime::convert::{Conversion, ConvertOptions, OutType};
//! let opts = ConvertOptions { outtype: OutType::Q8_0, ..Default::default() };
//! let conv = Conversion::plan("Llama-3.2-1B".as_ref(), &opts)?;
//! for note in conv.notes() {
//!     eprintln!("note: {note}");
//! }
//! conv.write("llama-3.2-1b-q8_0.gguf".as_ref(), &mut |_progress| {})?;
//! # Ok::<(), spinel_runtime::convert::ConvertError>(())
//! ```
//!
//! The checkpoint files are memory-mapped: they must not be modified while
//! a conversion runs.

pub(crate) mod checkpoint;
mod config;
mod error;
mod llama;
mod mmproj;
mod plan;
mod tokenizer;
mod write;

use std::path::{Path, PathBuf};

use spinel_quant::GgmlType;

use crate::gguf::Value;

pub use checkpoint::{Dtype, INDEX_FILE};
pub use config::{GenerationConfig, HfConfig, RopeParams, TokenIds};
pub use error::ConvertError;
pub use llama::{Arch, llama3_rope_factors};
pub use plan::{OutType, tensor_type};

/// HF `architectures` names [`Conversion::plan`] accepts.
pub const SUPPORTED_ARCHITECTURES: [&str; 5] = [
    llama::ARCHITECTURES[0].0,
    llama::ARCHITECTURES[1].0,
    llama::ARCHITECTURES[2].0,
    llama::ARCHITECTURES[3].0,
    llama::ARCHITECTURES[4].0,
];

/// How to convert.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// The type of the 2-D weights.
    pub outtype: OutType,
    /// `general.name`; default: the folder name.
    pub name: Option<String>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            outtype: OutType::F16,
            name: None,
        }
    }
}

/// What a progress report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressEvent {
    /// Tensor `index` is about to be written.
    Tensor,
    /// More bytes of tensor `index` were written.
    Bytes,
}

/// A progress report while writing.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    pub event: ProgressEvent,
    /// Index of the tensor being written, of `count`.
    pub index: usize,
    pub count: usize,
    pub name: &'a str,
    pub ty: GgmlType,
    /// Tensor data written so far, of `bytes_total`.
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// One tensor of the planned output.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub name: String,
    /// GGUF dims (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// The checkpoint tensor it is made from (`None` for computed ones).
    pub source: Option<String>,
}

/// A checked conversion, ready to write: everything is read and validated
/// (config, tensor names and shapes, tokenizer) before any output exists.
pub struct Conversion {
    dir: PathBuf,
    arch: Arch,
    hf_arch: String,
    ckpt: checkpoint::Checkpoint,
    kv: Vec<(String, Value<'static>)>,
    tensors: Vec<plan::OutTensor>,
    notes: Vec<String>,
    /// The vision tower and projector of a multimodal checkpoint.
    mmproj: Option<mmproj::MmprojPlan>,
}

impl Conversion {
    /// Reads and checks the checkpoint in `dir`.
    pub fn plan(dir: &Path, opts: &ConvertOptions) -> Result<Conversion, ConvertError> {
        if !dir.is_dir() {
            return Err(ConvertError::MissingFile {
                path: dir.to_path_buf(),
                what: "checkpoint folder",
            });
        }
        let cfg = HfConfig::load(dir)?;
        let (arch, hf_arch) = llama::detect_arch(&cfg)?;
        let hf_arch = hf_arch.to_string();
        let gen_cfg = GenerationConfig::load(dir)?;
        let ckpt = checkpoint::Checkpoint::open(dir)?;
        let name = match &opts.name {
            Some(n) => n.clone(),
            None => dir
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "model".to_string()),
        };
        let model = llama::plan(&cfg, &ckpt, arch, opts.outtype, &name)?;
        let mut kv = model.kv;
        let mut notes = model.notes;
        tokenizer::add_tokenizer(dir, gen_cfg.as_ref(), &mut kv, &mut notes)?;
        let mmproj = match mmproj::projector_of(&hf_arch) {
            Some(projector) => {
                let raw = checkpoint::read_json(&dir.join("config.json"))?;
                Some(mmproj::plan(
                    dir,
                    &raw,
                    &ckpt,
                    projector,
                    opts.outtype,
                    &name,
                )?)
            }
            None => None,
        };
        Ok(Conversion {
            dir: dir.to_path_buf(),
            arch,
            hf_arch,
            ckpt,
            kv,
            tensors: model.tensors,
            notes,
            mmproj,
        })
    }

    /// The checkpoint folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The GGUF architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The HF architecture name that was recognized.
    pub fn hf_architecture(&self) -> &str {
        &self.hf_arch
    }

    /// The metadata that will be written, in order.
    pub fn metadata(&self) -> &[(String, Value<'static>)] {
        &self.kv
    }

    /// The tensors that will be written, in order.
    pub fn tensors(&self) -> Vec<PlannedTensor> {
        self.tensors
            .iter()
            .map(|t| PlannedTensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
                source: t.source().map(|s| s.name.clone()),
            })
            .collect()
    }

    /// Bytes of tensor data the file will hold.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_bytes() as u64).sum()
    }

    /// Things worth telling the user (no tokenizer, left-out tensors …).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Whether the checkpoint has a vision tower (written by
    /// [`Conversion::write_mmproj`]).
    pub fn has_mmproj(&self) -> bool {
        self.mmproj.is_some()
    }

    /// The metadata and tensors of the mmproj file, if any.
    pub fn mmproj_tensors(&self) -> Vec<PlannedTensor> {
        self.mmproj
            .iter()
            .flat_map(|m| m.tensors.iter())
            .map(|t| PlannedTensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
                source: t.source().map(|s| s.name.clone()),
            })
            .collect()
    }

    /// Writes the vision tower and projector to `out` (an mmproj GGUF).
    /// Returns `None` when the checkpoint has no vision tower.
    pub fn write_mmproj(
        &self,
        out: &Path,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Option<u64>, ConvertError> {
        match &self.mmproj {
            Some(m) => write::write(out, &m.kv, &m.tensors, &self.ckpt, progress).map(Some),
            None => Ok(None),
        }
    }

    /// Writes the GGUF file to `out` (via `out.part`, renamed when
    /// complete), reporting progress. Returns the file size.
    pub fn write(
        &self,
        out: &Path,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<u64, ConvertError> {
        write::write(out, &self.kv, &self.tensors, &self.ckpt, progress)
    }
}

/// Converts `dir` to `out` in one call, without progress reports.
pub fn convert(dir: &Path, out: &Path, opts: &ConvertOptions) -> Result<Conversion, ConvertError> {
    let conv = Conversion::plan(dir, opts)?;
    conv.write(out, &mut |_| {})?;
    Ok(conv)
}
