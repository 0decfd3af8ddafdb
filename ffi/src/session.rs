//! Chat sessions and streaming generation: [`ChatSession`] holds the
//! runtime's `Session` behind an `Arc<Mutex<…>>`; [`ChatSession::send`] runs
//! one turn on its own thread, streaming to a foreign [`GenerationListener`],
//! and returns a [`GenerationHandle`] to cancel it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use spinel_runtime::chat::Message;
use spinel_runtime::engine::{
    self, CancelHandle, Engine, GenerateOptions, Session, SpeculativeOptions, Stats,
    StopReason as RuntimeStopReason,
};
use spinel_runtime::sampling::SamplingParams;
use spinel_runtime::vision::{RgbImage, decode_image};

use crate::{Finished, Model, SpinelError, call_foreign, spawn_job};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// How one answer is generated. The defaults are llama.cpp's sampling
/// defaults, no token limit and no stop strings.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct GenerationParams {
    /// Softmax temperature; `≤ 0`: greedy (always the most likely token).
    #[uniffi(default = 0.8)]
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 turns it off.
    #[uniffi(default = 40)]
    pub top_k: u32,
    /// Nucleus threshold in [0, 1]; 1 turns it off.
    #[uniffi(default = 0.95)]
    pub top_p: f32,
    /// Relative probability floor in [0, 1]; 0 turns it off.
    #[uniffi(default = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (> 0); 1 turns it off.
    #[uniffi(default = 1.0)]
    pub repeat_penalty: f32,
    /// The same seed, model and conversation give the same answer.
    #[uniffi(default = 24301)]
    pub seed: u64,
    /// Most tokens to generate; `null`: until the model ends its answer or
    /// the context is full.
    #[uniffi(default = None)]
    pub max_tokens: Option<u32>,
    /// The answer ends where one of these appears (the stop string is left
    /// out of it).
    #[uniffi(default = [])]
    pub stop: Vec<String>,
    /// Function declarations the model may call, as a JSON array (OpenAI's
    /// `tools` shape or `{"name", "description", "parameters"}` objects),
    /// given to the chat template; calls in the answer come back parsed in
    /// `GenerationStats.tool_calls`. `null`: no tools.
    #[uniffi(default = None)]
    pub tools: Option<String>,
    /// A JSON Schema (as JSON text) the answer must match: the answer is
    /// then always one JSON document the schema accepts. `null`: free text.
    #[uniffi(default = None)]
    pub json_schema: Option<String>,
    /// A GBNF grammar (llama.cpp's format, start rule `root`) the answer
    /// must follow. `null`: none. At most one of `json_schema` and
    /// `grammar`.
    #[uniffi(default = None)]
    pub grammar: Option<String>,
    /// Speculative decoding by prompt lookup: the tokens that followed the
    /// last `lookup_ngram` (down to 1) tokens earlier in the conversation
    /// are checked in one batched pass. Fast when answers quote their
    /// input (summaries, edits, code); the answer is unchanged. `null`:
    /// off (a draft model set with `ChatSession.setDraftModel` is used if
    /// there is one).
    #[uniffi(default = None)]
    pub lookup_ngram: Option<u32>,
    /// Most tokens drafted per step (prompt lookup or a draft model).
    #[uniffi(default = 16)]
    pub draft_max: u32,
}

impl Default for GenerationParams {
    fn default() -> Self {
        let s = SamplingParams::default();
        GenerationParams {
            temperature: s.temperature,
            top_k: u32::try_from(s.top_k).unwrap_or(u32::MAX),
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            seed: s.seed,
            max_tokens: None,
            stop: Vec::new(),
            tools: None,
            json_schema: None,
            grammar: None,
            lookup_ngram: None,
            draft_max: 16,
        }
    }
}

impl GenerationParams {
    fn options(
        &self,
        draft: Option<&Arc<Engine>>,
        target: &Engine,
    ) -> Result<GenerateOptions, SpinelError> {
        let mut opts = self.constrained_options()?;
        let draft_max = self.draft_max as usize;
        opts.speculative = match (self.lookup_ngram, draft) {
            (Some(n), _) => Some(SpeculativeOptions::prompt_lookup(n as usize, draft_max)?),
            (None, Some(d)) => Some(SpeculativeOptions::draft_model(
                target,
                d.clone(),
                draft_max,
            )?),
            (None, None) => None,
        };
        Ok(opts)
    }

    fn constrained_options(&self) -> Result<GenerateOptions, SpinelError> {
        let tools = match &self.tools {
            None => None,
            Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(v @ serde_json::Value::Array(_)) => Some(v),
                Ok(_) => {
                    return Err(SpinelError::InvalidArgument {
                        reason: "tools must be a JSON array of function declarations".into(),
                    });
                }
                Err(e) => {
                    return Err(SpinelError::InvalidArgument {
                        reason: format!("tools is not valid JSON: {e}"),
                    });
                }
            },
        };
        let opts = GenerateOptions {
            tools,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k as usize,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                seed: self.seed,
                ..SamplingParams::default()
            },
            max_tokens: self.max_tokens.map(|n| n as usize),
            stop: self.stop.clone(),
            ..GenerateOptions::default()
        };
        let invalid = |e: spinel_runtime::engine::EngineError| SpinelError::InvalidArgument {
            reason: e.to_string(),
        };
        match (&self.json_schema, &self.grammar) {
            (Some(_), Some(_)) => Err(SpinelError::InvalidArgument {
                reason: "give json_schema or grammar, not both".into(),
            }),
            (Some(schema), None) => {
                let schema = serde_json::from_str::<serde_json::Value>(schema).map_err(|e| {
                    SpinelError::InvalidArgument {
                        reason: format!("json_schema is not valid JSON: {e}"),
                    }
                })?;
                opts.json_schema(&schema).map_err(invalid)
            }
            (None, Some(gbnf)) => opts.gbnf(gbnf).map_err(invalid),
            (None, None) => Ok(opts),
        }
    }
}

/// A function call the model made (tools offered in `GenerationParams`).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as JSON text.
    pub arguments_json: String,
}

/// Why an answer ended.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum StopReason {
    /// The model ended its answer.
    EndOfGeneration,
    /// This stop string appeared.
    StopString { stop: String },
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// [`GenerationHandle::cancel`] stopped it.
    Cancelled,
}

impl From<RuntimeStopReason> for StopReason {
    fn from(r: RuntimeStopReason) -> Self {
        match r {
            RuntimeStopReason::EndOfGeneration(_) => StopReason::EndOfGeneration,
            RuntimeStopReason::StopString(stop) => StopReason::StopString { stop },
            RuntimeStopReason::MaxTokens => StopReason::MaxTokens,
            RuntimeStopReason::ContextFull => StopReason::ContextFull,
            RuntimeStopReason::Cancelled => StopReason::Cancelled,
        }
    }
}

/// Counts and timings of one answer.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct GenerationStats {
    /// Tokens of the whole conversation the model saw.
    pub prompt_tokens: u32,
    /// Of those, tokens already in the KV cache from earlier turns.
    pub cached_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// Generation speed (decode steps per second).
    pub tokens_per_second: f64,
    /// Prompt processing speed.
    pub prompt_tokens_per_second: f64,
    /// Seconds from `send` starting to run to the first token (`null` if
    /// none came).
    pub time_to_first_token_seconds: Option<f64>,
    pub total_seconds: f64,
    pub stop_reason: StopReason,
    /// Tokens drafted by speculative decoding, and of those accepted.
    pub drafted_tokens: u32,
    pub accepted_tokens: u32,
    /// The answer read as tool calls, when tools were offered and the
    /// answer is one (else empty).
    pub tool_calls: Vec<ToolCall>,
    /// Seconds the vision tower took to encode the conversation's images
    /// (0 without images).
    pub image_encode_seconds: f64,
}

impl GenerationStats {
    fn new(stats: &Stats, stop: RuntimeStopReason) -> Self {
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        GenerationStats {
            prompt_tokens: n(stats.prompt_tokens),
            cached_tokens: n(stats.cached_tokens),
            generated_tokens: n(stats.generated_tokens),
            tokens_per_second: stats.generation_tokens_per_sec(),
            prompt_tokens_per_second: stats.prompt_tokens_per_sec(),
            time_to_first_token_seconds: stats.time_to_first_token_secs,
            total_seconds: stats.total_secs,
            stop_reason: stop.into(),
            drafted_tokens: n(stats.drafted_tokens),
            accepted_tokens: n(stats.accepted_tokens),
            tool_calls: Vec::new(),
            image_encode_seconds: stats.image_encode_secs,
        }
    }
}

/// Receives one answer as it is generated, on Spinel's generation thread
/// (post to the UI thread yourself). Exactly one of `on_complete` and
/// `on_error` ends every generation. An exception thrown here is caught: it
/// cancels the generation, which then ends with `on_error(Internal)`.
#[uniffi::export(with_foreign)]
pub trait GenerationListener: Send + Sync {
    /// The next piece of the answer: whole characters, never part of a stop
    /// string.
    fn on_token(&self, text: String);
    fn on_complete(&self, stats: GenerationStats);
    fn on_error(&self, error: SpinelError);
}

/// A conversation over a [`Model`](crate::Model): the messages so far, the
/// model's chat template and a KV cache that keeps earlier turns, so each
/// turn only processes the new message. Thread-safe: calls from several
/// threads take turns (a call waits for a running generation to end).
#[derive(Debug, uniffi::Object)]
pub struct ChatSession {
    inner: Arc<Mutex<Session>>,
    /// Its memory as last seen (for `Model::memory_usage` while it runs).
    sizes: Arc<Sizes>,
    /// Where `Model::trim_memory` saves it before giving its cache back.
    save_on_trim: Mutex<Option<String>>,
    /// The draft model of speculative decoding, if set.
    draft: Mutex<Option<Arc<Engine>>>,
    /// The session's engine (reachable while a turn holds the session).
    engine: Arc<Engine>,
}

/// A session's KV cache and scratch bytes, recorded whenever it is locked.
#[derive(Debug, Default)]
pub(crate) struct Sizes {
    kv: AtomicU64,
    scratch: AtomicU64,
}

impl Sizes {
    fn record(&self, s: &Session) {
        self.kv.store(s.kv_cache_bytes() as u64, Ordering::Relaxed);
        self.scratch
            .store(s.scratch_bytes() as u64, Ordering::Relaxed);
    }
}

impl ChatSession {
    pub(crate) fn new(mut session: Session, system_prompt: Option<String>) -> Self {
        if let Some(system) = system_prompt {
            session.set_system(system);
        }
        let sizes = Arc::new(Sizes::default());
        sizes.record(&session);
        let engine = session.engine().clone();
        ChatSession {
            inner: Arc::new(Mutex::new(session)),
            sizes,
            save_on_trim: Mutex::new(None),
            draft: Mutex::new(None),
            engine,
        }
    }

    /// `(kv cache, scratch)` bytes: measured if the session is idle, else
    /// as last seen.
    pub(crate) fn memory(&self) -> (u64, u64) {
        if let Ok(s) = self.inner.try_lock() {
            self.sizes.record(&s);
        }
        let s = &self.sizes;
        (
            s.kv.load(Ordering::Relaxed),
            s.scratch.load(Ordering::Relaxed),
        )
    }

    /// Under memory pressure: if the session is idle, saves it where
    /// [`set_save_on_trim`](Self::set_save_on_trim) asked, then gives back
    /// its KV cache and buffers. A running answer is left alone. Returns the
    /// bytes given back.
    pub(crate) fn trim(&self) -> Result<u64, SpinelError> {
        let Ok(mut s) = self.inner.try_lock() else {
            return Ok(0);
        };
        let path = self
            .save_on_trim
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(path) = path {
            s.save(std::path::Path::new(&path))?;
        }
        let freed = s.release_memory() as u64;
        self.sizes.record(&s);
        Ok(freed)
    }
}

/// Locks a session; after a panic during a generation (caught on its
/// thread) the session is reset, so its cache and history are consistent.
fn lock(inner: &Mutex<Session>) -> MutexGuard<'_, Session> {
    inner.lock().unwrap_or_else(|poisoned: PoisonError<_>| {
        let mut session = poisoned.into_inner();
        session.reset();
        inner.clear_poison();
        session
    })
}

#[uniffi::export]
impl ChatSession {
    /// Speculative decoding with a draft model: a smaller model with the
    /// same vocabulary guesses the next tokens and this chat's model checks
    /// them in one batched pass, so answers come faster and are unchanged.
    /// `null` turns it off. Fails with `InvalidArgument` for a model with
    /// another vocabulary.
    pub fn set_draft_model(&self, draft: Option<Arc<Model>>) -> Result<(), SpinelError> {
        let engine = draft.map(|d| d.engine().clone());
        if let Some(d) = &engine {
            SpeculativeOptions::draft_model(&self.engine, d.clone(), 1)?;
        }
        *self.draft.lock().unwrap_or_else(PoisonError::into_inner) = engine;
        Ok(())
    }

    /// Sets the system prompt (replacing the current one).
    pub fn set_system_prompt(&self, prompt: String) {
        lock(&self.inner).set_system(prompt);
    }

    /// The conversation so far, system prompt first.
    pub fn history(&self) -> Vec<ChatMessage> {
        lock(&self.inner)
            .messages()
            .iter()
            .map(|m| ChatMessage {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect()
    }

    /// Appends a message (to restore a saved conversation).
    pub fn add_message(&self, message: ChatMessage) {
        lock(&self.inner).push_message(Message::new(message.role, message.content));
    }

    /// Forgets the conversation, system prompt included.
    pub fn clear_history(&self) {
        lock(&self.inner).clear_history();
    }

    /// The context length: the most tokens the conversation may take.
    pub fn context_length(&self) -> u32 {
        u32::try_from(lock(&self.inner).n_ctx()).unwrap_or(u32::MAX)
    }

    /// The conversation rendered with the model's chat template, ready for
    /// the assistant's answer: what the model sees on the next turn before
    /// the new message.
    /// Writes the conversation and its KV cache to `path` (Spinel's saved
    /// session format, as `spinel chat --session`), atomically: written
    /// beside it, flushed to disk, then renamed, so a kill mid-save leaves
    /// the previous file. Waits for a running answer to end. Restore with
    /// [`Model::restore_session`](crate::Model::restore_session).
    pub fn save(&self, path: String) -> Result<(), SpinelError> {
        Ok(lock(&self.inner).save(std::path::Path::new(&path))?)
    }

    /// Where `Model::trim_memory` saves this chat before it gives its KV
    /// cache back (`null`: it does not save); restore it with
    /// `Model::restore_session` if the app is then killed.
    pub fn set_save_on_trim(&self, path: Option<String>) {
        *self
            .save_on_trim
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = path;
    }

    pub fn render_prompt(&self) -> Result<String, SpinelError> {
        let session = lock(&self.inner);
        let messages: Vec<Message> = session.messages().to_vec();
        Ok(session.engine().render_chat(&messages, true)?)
    }

    /// Sends `message` as the user and generates the answer on a new
    /// thread, streaming it to `listener`; returns at once. The message and
    /// the answer (as far as it got) join the history. Turns sent while one
    /// runs wait for it.
    ///
    /// `images`: PNG or JPEG files' bytes, shown to the model before the
    /// text (a model loaded with `LoadOptions.mmproj_path`). They are
    /// decoded on the generation thread; one that is corrupt, truncated or
    /// over the runtime's pixel cap, or images sent to a text-only model,
    /// end the turn with `InvalidArgument` (and leave the history as it
    /// was). The conversation keeps its images: a later turn without a new
    /// image continues the cache (the images are not encoded again), one
    /// with a new image runs the whole conversation again; and
    /// [`save`](Self::save) refuses it with `SessionFile`.
    #[uniffi::method(default(images = []))]
    pub fn send(
        &self,
        message: String,
        params: GenerationParams,
        listener: Arc<dyn GenerationListener>,
        images: Vec<Vec<u8>>,
    ) -> Result<Arc<GenerationHandle>, SpinelError> {
        let handle = Arc::new(GenerationHandle::default());
        let inner = Arc::clone(&self.inner);
        let sizes = Arc::clone(&self.sizes);
        let (job, done) = (Arc::clone(&handle), Arc::clone(&handle));
        let options = {
            let draft = self.draft.lock().unwrap_or_else(PoisonError::into_inner);
            params.options(draft.as_ref(), &self.engine)?
        };
        spawn_job(
            "spinel-generate",
            listener,
            move |listener| {
                let turn = Turn {
                    message: &message,
                    images: decode_images(&images)?,
                    options: &options,
                };
                run_turn(&inner, &sizes, turn, &job, listener)
            },
            |listener, outcome| match outcome {
                Ok(stats) => listener.on_complete(stats),
                Err(e) => listener.on_error(e),
            },
            move || done.finish(),
        )?;
        Ok(handle)
    }
}

/// What one `send` asks for.
struct Turn<'a> {
    message: &'a str,
    images: Vec<RgbImage>,
    options: &'a GenerateOptions,
}

/// PNG or JPEG bytes to RGB, with the runtime's pixel cap (checked from the
/// header before any pixel is decoded).
fn decode_images(images: &[Vec<u8>]) -> Result<Vec<RgbImage>, SpinelError> {
    images
        .iter()
        .map(|bytes| decode_image(bytes).map_err(SpinelError::from))
        .collect()
}

fn run_turn(
    inner: &Mutex<Session>,
    sizes: &Sizes,
    turn: Turn<'_>,
    job: &GenerationHandle,
    listener: &dyn GenerationListener,
) -> Result<GenerationStats, SpinelError> {
    let mut session = lock(inner);
    if job.cancelled.load(Ordering::Acquire) {
        return Ok(GenerationStats::new(
            &Stats::default(),
            RuntimeStopReason::Cancelled,
        ));
    }
    let cancel = session.cancel_handle();
    *job.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(cancel.clone());
    let mut listener_failed = None;
    let result = session.chat_with_images(turn.message, turn.images, turn.options, |piece| {
        // A cancel that came before the runtime cleared its flag at the
        // start of this turn is passed on here.
        if job.cancelled.load(Ordering::Acquire) {
            cancel.cancel();
        }
        if piece.text.is_empty() || listener_failed.is_some() {
            return;
        }
        if let Err(e) = call_foreign(|| listener.on_token(piece.text.clone())) {
            listener_failed = Some(e);
            cancel.cancel();
        }
    });
    *job.running.lock().unwrap_or_else(PoisonError::into_inner) = None;
    sizes.record(&session);
    let generation: engine::Generation = result?;
    if let Some(e) = listener_failed {
        return Err(SpinelError::Internal {
            reason: format!("the listener failed: {e}"),
        });
    }
    let mut stats = GenerationStats::new(&generation.stats, generation.stop);
    stats.tool_calls = generation
        .tool_calls
        .into_iter()
        .map(|c| ToolCall {
            name: c.name,
            arguments_json: c.arguments,
        })
        .collect();
    Ok(stats)
}

/// One answer being generated.
#[derive(Debug, Default, uniffi::Object)]
pub struct GenerationHandle {
    cancelled: AtomicBool,
    /// The session's cancel handle while this turn runs.
    running: Mutex<Option<CancelHandle>>,
    finished: Finished,
}

impl GenerationHandle {
    fn finish(&self) {
        self.finished.set();
    }
}

#[uniffi::export]
impl GenerationHandle {
    /// Stops the answer at its next token, from any thread; the listener
    /// then gets `on_complete` with `StopReason.Cancelled`. Cancelling a
    /// finished answer does nothing.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        if let Some(c) = &*self.running.lock().unwrap_or_else(PoisonError::into_inner) {
            c.cancel();
        }
    }

    /// Whether the listener has been told the end (`on_complete` or
    /// `on_error` returned).
    pub fn is_finished(&self) -> bool {
        self.finished.is_set()
    }

    /// Blocks until the generation has ended, the listener was told and
    /// released.
    pub fn wait_for_completion(&self) {
        self.finished.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `#[uniffi(default = …)]` literals foreign code gets are the
    /// runtime's sampling defaults.
    #[test]
    fn foreign_defaults_are_the_runtime_defaults() {
        let literals = GenerationParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            seed: 24301,
            max_tokens: None,
            stop: Vec::new(),
            tools: None,
            json_schema: None,
            grammar: None,
            lookup_ngram: None,
            draft_max: 16,
        };
        assert_eq!(GenerationParams::default(), literals);
    }
}
