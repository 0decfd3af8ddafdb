//! Loading a model: [`Model`] holds the runtime's `Arc<Engine>` and the
//! options every chat session it opens is sized with.

use std::collections::HashMap;
use std::sync::Arc;

use spinel_runtime::engine::{DEFAULT_KV_BUDGET, Engine, SessionOptions};
use spinel_runtime::model::{KvType, LoadOptions as RuntimeLoadOptions, Model as RuntimeModel};

use crate::memory::Sessions;
use crate::session::ChatSession;
use crate::{SpinelError, call_foreign};

/// The element type of the KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, uniffi::Enum)]
pub enum KvCacheType {
    /// Exact, twice the memory of F16.
    F32,
    /// llama.cpp's default.
    #[default]
    F16,
    /// Half the memory of F16 (needs a head size that is a multiple of 32).
    #[allow(non_camel_case_types)]
    Q8_0,
    /// A quarter of the memory of F16, and the least exact (needs a head
    /// size that is a multiple of 32).
    #[allow(non_camel_case_types)]
    Q4_0,
}

impl From<KvCacheType> for KvType {
    fn from(t: KvCacheType) -> Self {
        match t {
            KvCacheType::F32 => KvType::F32,
            KvCacheType::F16 => KvType::F16,
            KvCacheType::Q8_0 => KvType::Q8_0,
            KvCacheType::Q4_0 => KvType::Q4_0,
        }
    }
}

/// How a model is loaded and how its chat sessions are sized.
#[derive(Clone, Debug, Default, PartialEq, uniffi::Record)]
pub struct LoadOptions {
    /// Threads for the forward pass; `null`: all cores.
    #[uniffi(default = None)]
    pub threads: Option<u32>,
    /// Context length of each session in tokens; `null`: the model's
    /// training context, capped so the KV cache takes at most half of what
    /// the weights leave of `memory_budget` (and at most 1 GiB).
    #[uniffi(default = None)]
    pub context_length: Option<u32>,
    /// Bytes the model may keep in memory: weights, KV cache and buffers.
    /// Weights beyond it are streamed from the file as they are used
    /// (slower, but a model larger than memory runs). `null`: 75% of the
    /// memory available to the process.
    #[uniffi(default = None)]
    pub memory_budget: Option<u64>,
    /// The KV cache element type (of keys, and of values unless
    /// `kv_cache_type_v` is set); `null`: F16.
    #[uniffi(default = None)]
    pub kv_cache_type: Option<KvCacheType>,
    /// The element type of the values in the KV cache when it differs from
    /// the keys'; `null`: `kv_cache_type`.
    #[uniffi(default = None)]
    pub kv_cache_type_v: Option<KvCacheType>,
    /// The vision tower of a vision model (Llama 3.2 Vision, Llama 4): the
    /// `X.mmproj.gguf` file `spinel convert` writes beside `X.gguf`. With
    /// it, chat turns take images. Like the model file, it must not change
    /// while the model is loaded. `null`: text only.
    #[uniffi(default = None)]
    pub mmproj_path: Option<String>,
}

impl LoadOptions {
    fn session_options(&self) -> SessionOptions {
        SessionOptions {
            n_ctx: self.context_length.map(|n| n as usize),
            // The engine keeps it within the model's memory budget.
            kv_budget: DEFAULT_KV_BUDGET,
            kv_type: self.kv_cache_type.unwrap_or_default().into(),
            kv_type_v: self.kv_cache_type_v.map(Into::into),
            n_threads: self.threads.map(|n| n as usize),
            ..SessionOptions::default()
        }
    }
}

/// Told how far a load has got. The stages are coarse (the file is
/// memory-mapped, so loading is quick): `fraction` goes 0 → 1.
#[uniffi::export(with_foreign)]
pub trait LoadProgressListener: Send + Sync {
    fn on_progress(&self, fraction: f32, stage: String);
}

/// What a loaded model is.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct ModelInfo {
    /// `general.architecture`: `llama`, `llama4`, `mllama`.
    pub architecture: String,
    /// `general.name`, if the file has one.
    pub name: Option<String>,
    /// Parameters: elements of all tensors.
    pub parameters: u64,
    /// The tensor type holding most parameters (`Q4_1`, `Q4_K` …).
    pub quantization: String,
    /// Bytes of tensor data.
    pub size_bytes: u64,
    /// The context length the model was trained for.
    pub training_context_length: u32,
    /// The context length each session of this model gets.
    pub context_length: u32,
    pub vocabulary_size: u32,
    pub layers: u32,
    pub embedding_length: u32,
    /// The chat template's Jinja source (`null` if it could not be loaded:
    /// then chatting fails with `ChatTemplate`).
    pub chat_template: Option<String>,
    /// Whether chat turns take images: a vision tower was loaded
    /// (`LoadOptions.mmproj_path`).
    pub supports_images: bool,
}

/// A model file loaded once; open as many [`ChatSession`]s over it as
/// memory allows. Thread-safe.
#[derive(Debug, uniffi::Object)]
pub struct Model {
    engine: Arc<Engine>,
    options: LoadOptions,
    sessions: Sessions,
}

impl Model {
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub(crate) fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub(crate) fn runtime(&self) -> &RuntimeModel<'static> {
        self.engine.model()
    }

    fn open(&self, session: ChatSession) -> Arc<ChatSession> {
        let session = Arc::new(session);
        self.sessions.add(&session);
        session
    }
}

#[uniffi::export]
impl Model {
    /// Memory-maps the GGUF file at `path` and loads the model, its
    /// tokenizer and chat template, and the vision tower of
    /// `options.mmproj_path` if set (an mmproj of another model, or a
    /// text-only model given one, is `InvalidModel`). Blocks: call it off
    /// the UI thread. The files must not change while the model is loaded.
    #[uniffi::constructor]
    pub fn load(
        path: String,
        options: LoadOptions,
        progress: Option<Arc<dyn LoadProgressListener>>,
    ) -> Result<Arc<Self>, SpinelError> {
        let report = |fraction: f32, stage: &str| {
            if let Some(p) = &progress {
                // A throwing listener must not stop the load.
                let _ = call_foreign(|| p.on_progress(fraction, stage.to_string()));
            }
        };
        report(0.0, "mapping");
        let budget = RuntimeLoadOptions {
            memory_budget: options
                .memory_budget
                .or_else(spinel_runtime::memory::default_budget),
        };
        let engine = match &options.mmproj_path {
            None => {
                let model = RuntimeModel::load_with(&path, &budget)?;
                report(0.7, "tokenizer");
                Engine::from_model(model)?
            }
            // The tower's bytes come off the budget before the model plans.
            Some(mmproj) => {
                report(0.5, "model and vision tower");
                Engine::load_with_vision(&path, mmproj, &budget)?
            }
        };
        let engine = Arc::new(engine);
        // Fail here, not at the first message, when the options cannot size
        // a session.
        engine.context_length(&options.session_options())?;
        report(1.0, "ready");
        Ok(Arc::new(Model {
            engine,
            options,
            sessions: Sessions::default(),
        }))
    }

    pub fn info(&self) -> ModelInfo {
        let model = self.engine.model();
        let gguf = model.gguf();
        let config = model.config();
        let md = gguf.metadata();
        let mut parameters = 0u64;
        let mut size_bytes = 0u64;
        let mut by_type: HashMap<String, u64> = HashMap::new();
        for t in gguf.tensors() {
            parameters += t.n_elements();
            size_bytes += t.size() as u64;
            *by_type.entry(t.ggml_type().to_string()).or_default() += t.n_elements();
        }
        let quantization = by_type
            .into_iter()
            .max_by_key(|(name, n)| (*n, name.clone()))
            .map(|(name, _)| name)
            .unwrap_or_default();
        ModelInfo {
            architecture: md
                .get_str("general.architecture")
                .unwrap_or_default()
                .to_string(),
            name: md.get_str("general.name").ok().map(str::to_string),
            parameters,
            quantization,
            size_bytes,
            training_context_length: saturate(config.n_ctx_train),
            context_length: saturate(
                self.engine
                    .context_length(&self.options.session_options())
                    .unwrap_or(0),
            ),
            vocabulary_size: saturate(config.n_vocab),
            layers: saturate(config.n_layer),
            embedding_length: saturate(config.dim),
            chat_template: self
                .engine
                .chat_template()
                .ok()
                .map(|t| t.source().to_string()),
            supports_images: self.engine.vision().is_some(),
        }
    }

    /// Token ids of `text`. `add_special`: add BOS as the model's metadata
    /// says; special tokens written in the text (`<|im_start|>`) are
    /// recognised.
    pub fn tokenize(&self, text: String, add_special: bool) -> Result<Vec<u32>, SpinelError> {
        Ok(self.engine.tokenizer().encode(&text, add_special, true)?)
    }

    /// The text of `tokens` (control tokens left out; invalid UTF-8
    /// replaced).
    pub fn detokenize(&self, tokens: Vec<u32>) -> Result<String, SpinelError> {
        Ok(self.engine.tokenizer().decode(&tokens, true)?)
    }

    /// A new conversation with its own KV cache, optionally with a system
    /// prompt.
    pub fn chat_session(
        &self,
        system_prompt: Option<String>,
    ) -> Result<Arc<ChatSession>, SpinelError> {
        let session = self.engine.session(&self.options.session_options())?;
        Ok(self.open(ChatSession::new(session, system_prompt)))
    }

    /// A chat saved by [`ChatSession::save`] (after the app was killed,
    /// say): its conversation and KV cache, so the next turn processes only
    /// the new message. Fails with `SessionFile` for a file of another
    /// model, KV cache type or a longer context, or a truncated or
    /// corrupted one. Blocks: call it off the UI thread.
    pub fn restore_session(&self, path: String) -> Result<Arc<ChatSession>, SpinelError> {
        let mut session = self.engine.session(&self.options.session_options())?;
        session.restore(std::path::Path::new(&path))?;
        Ok(self.open(ChatSession::new(session, None)))
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
