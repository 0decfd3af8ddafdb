//! Streaming generation: a model loaded once, many sessions over it.
//!
//! * [`Engine`]: one model file, memory-mapped and loaded once — the forward
//!   pass, the tokenizer, the chat template and the end-of-generation tokens.
//!   Immutable, `Send + Sync`: put it in an [`Arc`] and share it.
//! * [`Session`]: one conversation or completion stream over an engine, with
//!   its own KV cache ([`SessionOptions`] size it). Sessions are `Send`; run
//!   as many as memory allows, each on its own thread.
//! * A generation streams tokens through a callback ([`Session::complete`],
//!   [`Session::chat`]) or an iterator ([`Session::stream`],
//!   [`Session::chat_stream`]). Each [`Piece`] carries whole UTF-8 text from
//!   the streaming detokenizer, with stop strings held back until they can
//!   no longer match. It ends at an end-of-generation token, a stop string,
//!   `max_tokens`, a full context, or a [`CancelHandle`] fired from any
//!   thread ([`StopReason`]), and reports [`Stats`].
//!
//! A session remembers which tokens are in its KV cache. Every prompt is
//! the whole text the model sees: its longest common prefix with the cache
//! is kept and only the rest is processed. A chat session renders the whole
//! conversation with the model's template each turn, so a new turn only
//! processes the tokens after what the cache already holds (the end of the
//! last answer, the new user message and the assistant header).
//!
//! ```no_run
//! use std::sync::Arc;
//! use spinel_runtime::engine::{Engine, GenerateOptions, SessionOptions};
//! use spinel_runtime::sampling::SamplingParams;
//!
//! let engine = Arc::new(Engine::load("model.gguf")?);
//! let mut session = engine.session(&SessionOptions::default())?;
//! let opts = GenerateOptions {
//!     sampling: SamplingParams::greedy(),
//!     max_tokens: Some(64),
//!     ..GenerateOptions::default()
//! };
//! let answer = session.chat("What is the capital of France?", &opts, |piece| {
//!     print!("{}", piece.text);
//! })?;
//! eprintln!("{:.1} tokens/s", answer.stats.generation_tokens_per_sec());
//! # Ok::<(), spinel_runtime::engine::EngineError>(())
//! ```

mod batch;
mod error;
mod pool;
mod saved;
mod session;
mod speculative;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::chat::{ChatTemplate, Message};
use crate::grammar::{Grammar, JSON_GBNF, json_schema_to_gbnf};
use crate::model::{KvType, LoadOptions, Model};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

pub use batch::{BatchStats, Batcher};
pub use error::EngineError;
pub use pool::{Panicked, PoolError, PooledSession, Reusable, SessionPool, common_prefix};
pub use session::{Generation, Piece, Session, Stats, StopReason, Stream};
pub use speculative::{Draft, SpeculativeOptions, lookup_draft};

/// The default memory budget for one session's KV cache: 1 GiB. With an f16
/// cache that is the full 8192-token context of a SmolLM2 or Llama 3.2 1B,
/// and 8192 tokens of a Llama 3 8B.
pub const DEFAULT_KV_BUDGET: usize = 1 << 30;

/// How a session is sized.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Context length in tokens. `None`: the model's training context,
    /// capped so the KV cache fits in `kv_budget`.
    pub n_ctx: Option<usize>,
    /// Bytes the KV cache may take when `n_ctx` is `None`.
    pub kv_budget: usize,
    /// The K cache element type, and the V cache's unless `kv_type_v` is
    /// set.
    pub kv_type: KvType,
    /// The V cache element type when it differs from the K cache's.
    pub kv_type_v: Option<KvType>,
    /// Hadamard rotations around the KV cache (see
    /// [`crate::model::StateOptions::kv_rotation`]): `None` rotates queries
    /// and keys when the K cache is quantized, values when the V cache is.
    pub kv_rotation: Option<bool>,
    /// Most prompt tokens pushed through the model together.
    pub n_batch: usize,
    /// Threads for the forward pass; `None`: all cores.
    pub n_threads: Option<usize>,
    /// Continuous batching: this session's decode steps run together with
    /// those of the engine's other batched sessions generating at the same
    /// time, and its prompts take turns with them ([`Batcher`]). For
    /// servers; a lone session gains nothing from it.
    pub batched: bool,
    /// Sessions opened with these options that live side by side (a
    /// server's parallel slots): when `n_ctx` is `None` each gets this
    /// share of the KV budget, so that together they stay within it.
    pub sessions: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            n_ctx: None,
            kv_budget: DEFAULT_KV_BUDGET,
            kv_type: KvType::default(),
            kv_type_v: None,
            kv_rotation: None,
            n_batch: 512,
            n_threads: None,
            batched: false,
            sessions: 1,
        }
    }
}

/// How one generation runs. [`Default`]: llama.cpp's sampling defaults,
/// no token limit, no stop strings.
#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    pub sampling: SamplingParams,
    /// Most tokens to generate; `None`: until end of generation or a full
    /// context.
    pub max_tokens: Option<usize>,
    /// Generation ends when one of these appears in the text; the text from
    /// it on is left out.
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens (they are then
    /// generated tokens like any other).
    pub ignore_eog: bool,
    /// Show control tokens (`<|im_start|>` …) in the text instead of
    /// leaving them out.
    pub special: bool,
    /// Function declarations offered to a chat turn (a JSON array, passed
    /// to the chat template as `tools`); the answer's tool calls come back
    /// parsed in [`Generation::tool_calls`].
    pub tools: Option<serde_json::Value>,
    /// Constrains the answer to the sentences of a grammar (see
    /// [`json_schema`](Self::json_schema), [`gbnf`](Self::gbnf)).
    pub grammar: Option<Arc<Grammar>>,
    /// Speculative decoding: drafted tokens checked in one batched forward
    /// pass; the output is what decoding without it gives.
    pub speculative: Option<SpeculativeOptions>,
}

impl GenerateOptions {
    /// Constrains the answer to the JSON documents `schema` accepts.
    pub fn json_schema(mut self, schema: &serde_json::Value) -> Result<Self, EngineError> {
        let gbnf = json_schema_to_gbnf(schema).map_err(|e| EngineError::Grammar {
            reason: format!("JSON schema: {e}"),
        })?;
        let grammar = Grammar::parse(&gbnf).map_err(|e| EngineError::Grammar {
            reason: format!("JSON schema: the grammar made from it is invalid: {e}"),
        })?;
        self.grammar = Some(Arc::new(grammar));
        Ok(self)
    }

    /// Constrains the answer to one JSON object (any keys and values), as
    /// OpenAI's `response_format: {"type": "json_object"}`.
    pub fn json_object(self) -> Self {
        self.gbnf(JSON_GBNF)
            .expect("the built-in JSON grammar parses (tested)")
    }

    /// Constrains the answer to a GBNF grammar (llama.cpp's format; the
    /// start rule is `root`).
    pub fn gbnf(mut self, src: &str) -> Result<Self, EngineError> {
        let grammar = Grammar::parse(src).map_err(|e| EngineError::Grammar {
            reason: e.to_string(),
        })?;
        self.grammar = Some(Arc::new(grammar));
        Ok(self)
    }
}

/// Stops a session's generation from any thread.
///
/// [`cancel`](CancelHandle::cancel) makes the generation that is running end
/// at its next step (between prompt batches or before the next token) with
/// [`StopReason::Cancelled`]. Each generation clears the flag when it
/// starts, so a cancel only ever stops the generation in progress (or the
/// one about to start, if it comes between the start and the first step).
#[derive(Clone, Debug, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    pub fn new() -> Self {
        CancelHandle::default()
    }

    /// Asks the running generation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether a cancel is pending.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn clear(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A loaded model ready to serve sessions: the forward pass, the tokenizer,
/// the chat template and the end-of-generation tokens, read once from one
/// memory-mapped GGUF file.
pub struct Engine {
    model: Model<'static>,
    tokenizer: Tokenizer,
    template: Result<ChatTemplate, String>,
    batcher: Batcher,
    /// The vision tower of an mmproj file, when images are supported.
    vision: Option<crate::vision::Vision>,
    /// The tower's resident bytes ([`Engine::vision_bytes`]).
    vision_bytes: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model)
            .field("tokenizer", &self.tokenizer)
            .field("template", &self.template.as_ref().map(|t| t.origin()))
            .finish()
    }
}

impl Engine {
    /// Memory-maps the GGUF file at `path` and loads the model, its
    /// tokenizer and its chat template. The file must not change while the
    /// engine lives (see [`Model::load`]).
    ///
    /// A chat template that does not compile does not stop the load: the
    /// engine completes text, and [`Session::chat`] reports the problem.
    pub fn load(path: impl AsRef<Path>) -> Result<Engine, EngineError> {
        Engine::from_model(Model::load(path)?)
    }

    /// Like [`load`](Self::load), with a memory budget for the model
    /// ([`LoadOptions`]): weights beyond it are streamed from the file, and
    /// sessions sized by `kv_budget` keep their KV cache within the part of
    /// the budget the model leaves for it.
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Engine, EngineError> {
        Engine::from_model(Model::load_with(path, opts)?)
    }

    /// Like [`load_with`](Self::load_with), with the vision tower of the
    /// mmproj file at `mmproj` ([`load_mmproj`](Self::load_mmproj)) counted
    /// in the memory budget: the tower's resident bytes
    /// ([`MmprojFile::tower_bytes`](crate::vision::MmprojFile::tower_bytes))
    /// come off the budget before the model plans its weights, so the
    /// model's [`residency`](Model::residency) budget is what the tower
    /// leaves. A tower larger than the whole budget is refused.
    pub fn load_with_vision(
        path: impl AsRef<Path>,
        mmproj: impl AsRef<Path>,
        opts: &LoadOptions,
    ) -> Result<Engine, EngineError> {
        // SAFETY: as in `load_mmproj`.
        let file = unsafe { crate::vision::MmprojFile::open(mmproj) }?;
        let mut engine = Engine::load_with(path, &file.model_load_options(opts)?)?;
        engine.vision = Some(crate::vision::Vision::new(&file, engine.model.config())?);
        engine.vision_bytes = file.tower_bytes();
        Ok(engine)
    }

    /// Bytes the vision tower keeps in memory (0 without one).
    pub fn vision_bytes(&self) -> u64 {
        self.vision_bytes
    }

    /// An engine over a loaded model.
    pub fn from_model(model: Model<'static>) -> Result<Engine, EngineError> {
        let tokenizer = Tokenizer::from_gguf(model.gguf())?;
        let template = ChatTemplate::from_gguf(model.gguf()).map_err(|e| e.to_string());
        Ok(Engine {
            model,
            tokenizer,
            template,
            batcher: Batcher::new(),
            vision: None,
            vision_bytes: 0,
        })
    }

    /// Loads the vision tower of the mmproj file at `path` (written by
    /// `spinel convert` next to the text model), so that sessions take
    /// images. An mmproj that does not fit the model (another family or
    /// width, or a text-only model) is refused. Like the model file, it
    /// must not change while the engine lives.
    pub fn load_mmproj(&mut self, path: impl AsRef<Path>) -> Result<(), EngineError> {
        // SAFETY: `MmprojFile::open` needs the file unchanged while mapped:
        // the same contract as the model file (see `Model::load`), stated on
        // this function; the mapping is dropped once the tower is loaded.
        let file = unsafe { crate::vision::MmprojFile::open(path) }?;
        self.vision = Some(crate::vision::Vision::new(&file, self.model.config())?);
        self.vision_bytes = file.tower_bytes();
        Ok(())
    }

    /// The vision tower, when an mmproj is loaded.
    pub fn vision(&self) -> Option<&crate::vision::Vision> {
        self.vision.as_ref()
    }

    /// Replaces the chat template (a user's Jinja source, say).
    pub fn set_chat_template(&mut self, template: ChatTemplate) {
        self.template = Ok(template);
    }

    pub fn model(&self) -> &Model<'static> {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The batcher of the [`batched`](SessionOptions::batched) sessions.
    pub fn batcher(&self) -> &Batcher {
        &self.batcher
    }

    /// The chat template, or why the file's could not be used.
    pub fn chat_template(&self) -> Result<&ChatTemplate, EngineError> {
        self.template
            .as_ref()
            .map_err(|reason| EngineError::NoChatTemplate {
                reason: reason.clone(),
            })
    }

    /// The tokens that end generation (EOS, `<|eot_id|>`, `<|im_end|>` …).
    pub fn eog_ids(&self) -> &[u32] {
        self.tokenizer.eog_ids()
    }

    /// Token ids of a prompt: BOS as the file's metadata says, special
    /// tokens written in the text (`<|im_start|>`) recognised.
    pub fn tokenize_prompt(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(self.tokenizer.encode(text, true, true)?)
    }

    /// Token ids of a conversation rendered by the chat template: special
    /// tokens recognised, BOS added as the metadata says unless the
    /// template already wrote one.
    pub fn tokenize_chat(&self, rendered: &str) -> Result<Vec<u32>, EngineError> {
        let mut ids = self.tokenizer.encode(rendered, true, true)?;
        if let Some(bos) = self.tokenizer.bos() {
            if self.tokenizer.add_bos() && ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
                ids.remove(0);
            }
        }
        Ok(ids)
    }

    /// Renders `messages` with the chat template and `tools` (a JSON array
    /// of function declarations) as its `tools` variable, the assistant
    /// header appended.
    pub fn render_chat_with_tools(
        &self,
        messages: &[Message],
        tools: &serde_json::Value,
    ) -> Result<String, EngineError> {
        Ok(self
            .chat_template()?
            .render_with_tools(messages, true, tools)?)
    }

    /// Renders `messages` with the chat template (the assistant header
    /// appended when `add_generation_prompt`).
    pub fn render_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        Ok(self
            .chat_template()?
            .render(messages, add_generation_prompt)?)
    }

    /// Bytes of KV cache one position takes with the K and V cache types
    /// of `opts`.
    pub fn kv_bytes_per_position(&self, opts: &SessionOptions) -> usize {
        let c = self.model.config();
        let row = |t: KvType| t.ggml_type().row_size(c.head_dim).unwrap_or(0);
        let v = opts.kv_type_v.unwrap_or(opts.kv_type);
        c.n_layer * c.n_head_kv * (row(opts.kv_type) + row(v))
    }

    /// The context length a session opened with `opts` gets: `opts.n_ctx`,
    /// or the model's training context capped by its share
    /// (1/`opts.sessions`) of the KV budget: `opts.kv_budget`, and with a
    /// memory budget at most half of what the weights leave of it.
    pub fn context_length(&self, opts: &SessionOptions) -> Result<usize, EngineError> {
        if let Some(n) = opts.n_ctx {
            return Ok(n);
        }
        let per_position = self.kv_bytes_per_position(opts).max(1);
        let r = self.model.residency();
        let kv_budget = match r.budget {
            // The KV cache takes at most half of what the weights leave of
            // the budget (when they are streamed: of the plan's reserve).
            Some(b) => {
                let free = match r.streaming {
                    true => r.reserve,
                    false => b.saturating_sub(r.weights_bytes).max(r.reserve),
                };
                opts.kv_budget
                    .min(usize::try_from(free / 2).unwrap_or(usize::MAX))
            }
            None => opts.kv_budget,
        } / opts.sessions.max(1);
        let fits = kv_budget / per_position;
        if fits == 0 {
            return Err(EngineError::KvBudget {
                budget: kv_budget,
                per_position,
            });
        }
        Ok(self.model.config().n_ctx_train.min(fits))
    }

    /// Opens a session with its own KV cache.
    pub fn session(self: &Arc<Self>, opts: &SessionOptions) -> Result<Session, EngineError> {
        Session::new(Arc::clone(self), opts)
    }
}

// Engines are shared between threads; sessions move between them.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<Engine>();
    send::<Session>();
    send::<CancelHandle>();
};
