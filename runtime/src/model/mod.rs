//! The Llama-family forward pass: Llama 1/2/3/3.1/3.2 (`llama`) and the
//! Llama 4 text model (`llama4`) from GGUF files.
//!
//! A [`Model`] is the file's tensors, used in place (memory-mapped, never
//! copied) in whatever block type they are stored in, plus the
//! hyperparameters ([`Config`]) read from its metadata. A [`State`] is one
//! sequence being run: its KV cache and every activation buffer, allocated
//! once by [`Model::new_state`]. [`Model::forward`] pushes tokens through the
//! model — a prompt in batches of positions, each batch through every layer
//! together under a causal mask — and returns the logits of the last one.
//!
//! Matrix products follow ggml: an activation row is converted once to the
//! weight type's `vec_dot_type` (Q8 blocks for quantized weights), then
//! multiplied with the weight rows by the kernels of `spinel-quant`
//! (`Kernels::gemm`: register-blocked for batches, one `vec_dot` per row
//! for a single token). With F32 weights and an F32 KV cache everything is
//! f32, which is what matching the Hugging Face reference to 1e-4 takes.
//!
//! Each state owns a worker pool (`pool`) of its thread count, started
//! once: matrix products (`matmul`) split their weight rows across it,
//! attention (`attention`) its heads and query blocks, row-wise steps their
//! rows. The split never changes what is summed in which order, so the
//! logits do not depend on the thread count; nothing is allocated per
//! token.
//!
//! ```no_run
//! use spinel_runtime::model::{KvType, Model};
//! let model = Model::load("model.gguf")?;
//! let mut state = model.new_state(None, KvType::F16)?;
//! let logits = model.forward(&mut state, &[1, 450, 7483])?;
//! let next = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b]));
//! # Ok::<(), spinel_runtime::model::ModelError>(())
//! ```

mod attention;
#[doc(hidden)]
pub mod bench;
mod config;
mod cross;
mod error;
mod forward;
mod matmul;
mod observe;
pub(crate) mod ops;
mod pool;
mod residency;
mod state;
mod weights;

use std::path::Path;

use crate::gguf::{GgufFile, MappedGguf};

pub use config::{Arch, AttnTemperature, Config, MoeConfig, OnlineRotation};
pub use error::ModelError;
pub use forward::EmbeddingOverride;
pub use observe::{ActivationObserver, MatmulSite};
pub use residency::{LoadOptions, ResidencyReport};
pub use state::{DEFAULT_MAX_CTX, KvType, State, StateOptions};

use residency::Residency;
use state::Layout;
use weights::Weights;

/// Where the file's bytes live.
enum Source<'a> {
    Mapped(MappedGguf),
    Borrowed(GgufFile<'a>),
}

/// A loaded model: hyperparameters and zero-copy views of its tensors.
///
/// `Model<'static>` owns its memory map ([`Model::load`]); `Model<'a>`
/// borrows a file parsed elsewhere ([`Model::from_gguf`]). A model is
/// immutable and `Sync`: share one between threads, each with its own
/// [`State`].
pub struct Model<'a> {
    source: Source<'a>,
    config: Config,
    weights: Weights,
    /// `(head_dim / 2)`: RoPE inverse frequencies, `rope_freqs` divided in.
    rope_inv_freq: Vec<f32>,
    layout: Layout,
    /// What stays in memory and what is streamed ([`LoadOptions`]).
    residency: Residency,
}

impl std::fmt::Debug for Model<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Model<'static> {
    /// Memory-maps and loads the GGUF file at `path`.
    ///
    /// The file is read in place for as long as the model lives. Like
    /// llama.cpp, Spinel treats model files as immutable: rewriting or
    /// truncating a file while a model is loaded from it is not supported
    /// (its bytes would change under the model, or reads would fault).
    pub fn load(path: impl AsRef<Path>) -> Result<Model<'static>, ModelError> {
        Model::load_with(path, &LoadOptions::default())
    }

    /// Like [`load`](Self::load), with a memory budget: weights that do not
    /// fit are streamed from the file (see [`LoadOptions`] and
    /// [`Model::residency`]).
    pub fn load_with(
        path: impl AsRef<Path>,
        opts: &LoadOptions,
    ) -> Result<Model<'static>, ModelError> {
        // SAFETY: `MappedGguf::open` needs the file not to be modified or
        // truncated while mapped. Model files are read-only inputs that
        // nothing writes to while they are used, the contract documented on
        // this function (the same one llama.cpp's mmap loading relies on).
        let mapped = unsafe { MappedGguf::open(path) }?;
        Model::from_mapped_with(mapped, opts)
    }

    /// Loads a model from a file the caller mapped.
    pub fn from_mapped(mapped: MappedGguf) -> Result<Model<'static>, ModelError> {
        Model::from_mapped_with(mapped, &LoadOptions::default())
    }

    /// Loads a model from a file the caller mapped, with a memory budget.
    pub fn from_mapped_with(
        mapped: MappedGguf,
        opts: &LoadOptions,
    ) -> Result<Model<'static>, ModelError> {
        let (config, weights) = read(mapped.file())?;
        let mut model = Model::assemble(Source::Mapped(mapped), config, weights);
        model.residency = Residency::plan(&model.config, &model.weights, opts.memory_budget);
        Ok(model)
    }
}

impl<'a> Model<'a> {
    /// A model over a file parsed elsewhere; tensor data stays where it is.
    pub fn from_gguf(file: &GgufFile<'a>) -> Result<Model<'a>, ModelError> {
        let (config, weights) = read(file)?;
        Ok(Model::assemble(
            Source::Borrowed(file.clone()),
            config,
            weights,
        ))
    }

    fn assemble(source: Source<'a>, config: Config, weights: Weights) -> Model<'a> {
        let rope_inv_freq = rope_inv_freq(&config, weights.rope_freqs.as_deref());
        let layout = layout(&config, &weights);
        let residency = Residency::plan(&config, &weights, None);
        Model {
            source,
            config,
            weights,
            rope_inv_freq,
            layout,
            residency,
        }
    }

    /// The hyperparameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Token ids the model takes as input: `n_vocab`, or more where the
    /// embedding has rows past the vocabulary (mllama's `<|image|>`).
    pub fn n_input_tokens(&self) -> usize {
        self.weights.token_embd.rows
    }

    /// The GGUF file (metadata for tokenizers and chat templates).
    pub fn gguf(&self) -> &GgufFile<'_> {
        match &self.source {
            Source::Mapped(m) => m.file(),
            Source::Borrowed(f) => f,
        }
    }

    /// The RoPE inverse frequencies `θ_base^(-2i/d) / rope_freqs[i]`, as
    /// applied (Hugging Face's `inv_freq` after scaling).
    pub fn rope_inv_freq(&self) -> &[f32] {
        &self.rope_inv_freq
    }

    /// A fresh state with context length `n_ctx` (`None`: the training
    /// context, capped at [`DEFAULT_MAX_CTX`]) and a KV cache of `kv_type`.
    pub fn new_state(&self, n_ctx: Option<usize>, kv_type: KvType) -> Result<State, ModelError> {
        self.new_state_with(&StateOptions {
            n_ctx,
            kv_type,
            ..StateOptions::default()
        })
    }

    /// A fresh state sized by `opts`.
    pub fn new_state_with(&self, opts: &StateOptions) -> Result<State, ModelError> {
        State::new(self.layout.clone(), opts)
    }

    fn bytes(&self) -> &[u8] {
        self.gguf().bytes()
    }

    /// The residency plan and the expert cache's hits so far.
    pub fn residency(&self) -> ResidencyReport {
        self.residency.report()
    }

    /// Reads up to `max_bytes` of the first streamed weights with plain
    /// reads and returns the speed in bytes per second (then drops them
    /// from the page cache again); `None` when nothing is streamed. With the
    /// plan's bytes per token this gives the tokens per second the disk
    /// allows.
    pub fn measure_stream_speed(&self, max_bytes: usize) -> Option<f64> {
        let Source::Mapped(m) = &self.source else {
            return None;
        };
        let r = self.residency.first_streamed()?;
        m.measure_read_speed(r.start..r.end.min(r.start + max_bytes))
    }

    /// Bytes of the weights now in memory: the resident pages of the
    /// file's mapping (all of a model read from memory).
    pub fn weights_resident_bytes(&self) -> u64 {
        match &self.source {
            Source::Mapped(m) => m.resident_bytes().unwrap_or(m.len() as u64),
            Source::Borrowed(_) => self.gguf().bytes().len() as u64,
        }
    }

    /// Under memory pressure: drops the pages of the weights that are
    /// streamed (a model larger than its budget); they are read from the
    /// file again when next used. Resident weights stay.
    pub fn release_streamed_weights(&self) {
        if let Some(m) = self.mapped() {
            self.residency.release_streamed(m);
        }
    }

    fn mapped(&self) -> Option<&MappedGguf> {
        match &self.source {
            Source::Mapped(m) => Some(m),
            Source::Borrowed(_) => None,
        }
    }

    /// Residency hooks of the forward pass: stage `stage` (a layer, or
    /// `n_layer` for the output) starts / ends.
    fn enter_stage(&self, stage: usize) {
        if let Some(m) = self.mapped() {
            self.residency.enter(m, stage);
        }
    }

    /// The embedding rows of `tokens` were read (dropped when streaming).
    fn gathered_embeddings(&self, tokens: &[u32]) {
        if let Some(m) = self.mapped() {
            self.residency.gathered(m, self.weights.token_embd, tokens);
        }
    }

    fn leave_stage(&self, stage: usize) {
        if let Some(m) = self.mapped() {
            self.residency.leave(m, stage);
        }
    }
}

fn read(file: &GgufFile<'_>) -> Result<(Config, Weights), ModelError> {
    let config = Config::from_gguf(file)?;
    let weights = weights::load(file, &config)?;
    Ok((config, weights))
}

/// Hugging Face's `inv_freq = 1 / θ^(2i/d)` computed in f32 as it is there,
/// then divided by the file's `rope_freqs` factors (Llama 3.1 scaling).
fn rope_inv_freq(c: &Config, factors: Option<&[f32]>) -> Vec<f32> {
    let d = c.head_dim as f32;
    (0..c.head_dim / 2)
        .map(|i| {
            let inv = 1.0 / c.rope_freq_base.powf((2 * i) as f32 / d);
            let inv = inv * c.rope_freq_scale;
            match factors {
                Some(f) => inv / f[i],
                None => inv,
            }
        })
        .collect()
}

fn layout(config: &Config, w: &Weights) -> Layout {
    let all = w.matrices();
    let max_act_row_bytes = all.iter().map(|m| m.act_row_bytes).max().unwrap_or(0);
    let max_ff = config
        .moe
        .as_ref()
        .map_or(config.n_ff, |m| m.n_ff_expert.max(config.n_ff));
    Layout {
        config: config.clone(),
        max_act_row_bytes,
        max_ff,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn models_are_shared_and_states_moved_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::Model<'static>>();
        send_sync::<super::State>();
    }
}
