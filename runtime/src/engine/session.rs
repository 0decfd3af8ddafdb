//! Sessions: a KV cache, the tokens in it, a conversation, and the
//! generation loop.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::chat::Message;
use crate::chat::tools::{ToolCall, parse_tool_calls};
use crate::grammar::TokenConstraint;
use crate::model::{ModelError, State, StateOptions};
use crate::sampling::{Sampler, SamplingError, StopStrings};
use crate::tokenizer::{Detokenizer, TokenType, Tokenizer};
use crate::vision::{RgbImage, VisionPrompt};

use super::speculative::{Draft, DraftState, SpeculativeOptions, lookup_draft};
use super::{Batcher, CancelHandle, Engine, EngineError, GenerateOptions, SessionOptions};

/// One step of a generation: a token and the text it completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The generated token; `None` for the text released when generation
    /// ends (the tail held back for a possible stop string or an
    /// incomplete character).
    pub token: Option<u32>,
    /// Text that is now final: whole UTF-8 characters, never part of a
    /// stop string. Often empty (a token inside a character, or text held
    /// back while it could still become a stop string).
    pub text: String,
}

/// Why a generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model generated this end-of-generation token (it is not part of
    /// the generated ids or the text).
    EndOfGeneration(u32),
    /// This stop string appeared; the text stops before it.
    StopString(String),
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// A [`CancelHandle`] stopped it.
    Cancelled,
}

impl StopReason {
    /// A short name: `eog`, `stop_string`, `max_tokens`, `context_full`,
    /// `cancelled`.
    pub fn name(&self) -> &'static str {
        match self {
            StopReason::EndOfGeneration(_) => "eog",
            StopReason::StopString(_) => "stop_string",
            StopReason::MaxTokens => "max_tokens",
            StopReason::ContextFull => "context_full",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// Counts and timings of one generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Tokens in the prompt (the whole context the model saw).
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already in the cache and
    /// were not processed again.
    pub cached_tokens: usize,
    /// Tokens generated (end-of-generation tokens not counted).
    pub generated_tokens: usize,
    /// Forward passes after the first token: one per plain decode step,
    /// one per speculative round.
    pub decode_steps: usize,
    /// Tokens sampled after the first one (one per plain step; a
    /// speculative round makes its accepted drafts plus one).
    pub decode_tokens: usize,
    /// Tokens proposed by speculative decoding's drafter.
    pub drafted_tokens: usize,
    /// Drafted tokens the model accepted.
    pub accepted_tokens: usize,
    /// Seconds spent encoding the prompt's images (preprocessing and the
    /// vision tower).
    pub image_encode_secs: f64,
    /// Seconds spent processing the prompt.
    pub prompt_secs: f64,
    /// Seconds spent in the decode steps (forward pass and sampling).
    pub generation_secs: f64,
    /// Seconds from the start of the generation to the first sampled token
    /// (`None` if none was sampled).
    pub time_to_first_token_secs: Option<f64>,
    /// Seconds from the start of the generation to its end.
    pub total_secs: f64,
}

impl Stats {
    /// Prompt tokens that went through the model this time.
    pub fn processed_prompt_tokens(&self) -> usize {
        self.prompt_tokens - self.cached_tokens
    }

    /// Processed prompt tokens per second (0 when nothing was timed).
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        rate(self.processed_prompt_tokens(), self.prompt_secs)
    }

    /// Tokens sampled per second after the first (0 when there were none).
    pub fn generation_tokens_per_sec(&self) -> f64 {
        rate(self.decode_tokens, self.generation_secs)
    }

    /// Share of the drafted tokens the model accepted (0 without drafts).
    pub fn acceptance_rate(&self) -> f64 {
        match self.drafted_tokens {
            0 => 0.0,
            n => self.accepted_tokens as f64 / n as f64,
        }
    }

    /// Tokens made per forward pass after the first token (1 without
    /// speculative decoding; 0 when there were no steps).
    pub fn tokens_per_pass(&self) -> f64 {
        match self.decode_steps {
            0 => 0.0,
            n => self.decode_tokens as f64 / n as f64,
        }
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if n == 0 || secs <= 0.0 {
        0.0
    } else {
        n as f64 / secs
    }
}

/// The result of a whole generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The prompt as run (the whole context; see [`Session::complete`]).
    pub prompt_ids: Vec<u32>,
    /// The tokens generated, without a final end-of-generation token.
    pub generated_ids: Vec<u32>,
    /// The generated text, cut before a stop string.
    pub text: String,
    pub stop: StopReason,
    pub stats: Stats,
    /// The answer read as tool calls, when tools were offered
    /// ([`GenerateOptions::tools`]) and the answer is one (else empty).
    pub tool_calls: Vec<ToolCall>,
}

/// A session's mutable parts, apart from the engine so that a [`Stream`]
/// can borrow both.
#[derive(Debug)]
pub(super) struct Core {
    pub(super) state: State,
    /// The tokens whose keys and values are in the cache (`state.n_past()`
    /// of them), in order.
    pub(super) cached: Vec<u32>,
    pub(super) messages: Vec<Message>,
    cancel: CancelHandle,
    n_batch: usize,
    /// A draft model's cache (speculative decoding), kept across turns.
    draft: Option<DraftState>,
    /// Through the engine's [`Batcher`](super::Batcher).
    batched: bool,
    /// What the image prompt the cache holds was made of (`None`: the
    /// cache holds none); only a prompt with the same images and the same
    /// tokens up to the last one reuses such a cache.
    image_key: Option<ImageKey>,
    /// The conversation's images, in order (each chat turn runs them all).
    images: Vec<RgbImage>,
}

impl Core {
    /// The cache holds an image prompt.
    pub(super) fn image_in_cache(&self) -> bool {
        self.image_key.is_some()
    }
}

/// One sequence over an [`Engine`]: a KV cache, the tokens in it and, for
/// chat, the conversation.
///
/// Every prompt is the whole context: the part of it the cache already
/// holds (the longest common prefix) is kept, the rest processed. So a
/// session runs one completion after another cheaply when they share a
/// beginning, and a chat turn only processes what the last turn did not.
#[derive(Debug)]
pub struct Session {
    pub(super) engine: Arc<Engine>,
    pub(super) core: Core,
}

/// What a cached image prompt was made of, so that a later prompt with the
/// same images and the same tokens up to its last image (the next turn of
/// an image chat) continues the cache instead of encoding the images and
/// running the prompt again. Tokens after the last image are plain text:
/// a Llama 4 image is in the KV cache, and an mllama state keeps the
/// image's cross-attention keys and values, which text after the last
/// image sees whole, as the processor's mask gives it.
#[derive(Debug, Clone)]
struct ImageKey {
    /// The prompt's tokens up to and including its last image marker.
    head: Vec<u32>,
    /// How many of the cached tokens stand for `head` (Llama 4 expands
    /// each marker into its tiles' tokens).
    expanded_head: usize,
    /// The images' sizes and pixels, hashed.
    images: u64,
}

/// A hash of images' sizes and pixels.
fn hash_images(images: &[RgbImage]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for image in images {
        (image.width, image.height, &image.data).hash(&mut h);
    }
    h.finish()
}

/// An image prompt, prepared: encoded and to run from an empty cache, or
/// continuing the cached image prompt.
struct ImagePrepared {
    prep: Prepared,
    /// The encoded prompt and its key (`None`: the cache is continued).
    fresh: Option<(VisionPrompt, ImageKey)>,
    image_encode_secs: f64,
}

/// What a generation needs, checked before it starts.
struct Prepared {
    prompt: Vec<u32>,
    n_reuse: usize,
    sampler: Sampler,
    stops: StopStrings,
    constraint: Option<TokenConstraint>,
}

impl Session {
    /// A session over `engine` (see [`Engine::session`]).
    pub fn new(engine: Arc<Engine>, opts: &SessionOptions) -> Result<Session, EngineError> {
        let n_ctx = engine.context_length(opts)?;
        let state = engine.model().new_state_with(&StateOptions {
            n_ctx: Some(n_ctx),
            kv_type: opts.kv_type,
            kv_type_v: opts.kv_type_v,
            n_batch: opts.n_batch,
            n_threads: opts.n_threads,
            kv_rotation: opts.kv_rotation,
        })?;
        let n_batch = opts.n_batch.clamp(1, n_ctx);
        Ok(Session {
            engine,
            core: Core {
                state,
                cached: Vec::new(),
                messages: Vec::new(),
                cancel: CancelHandle::new(),
                n_batch,
                draft: None,
                batched: opts.batched,
                image_key: None,
                images: Vec::new(),
            },
        })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The context length: the most tokens the session holds.
    pub fn n_ctx(&self) -> usize {
        self.core.state.n_ctx()
    }

    /// Threads the forward pass uses.
    pub fn n_threads(&self) -> usize {
        self.core.state.n_threads()
    }

    /// The tokens in the KV cache.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.core.cached
    }

    /// A handle that cancels this session's generations from any thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.core.cancel.clone()
    }

    /// The conversation so far (chat).
    pub fn messages(&self) -> &[Message] {
        &self.core.messages
    }

    /// Sets the system message: replaces the first message if it is one,
    /// else puts one first.
    pub fn set_system(&mut self, content: impl Into<String>) {
        let m = Message::system(content);
        match self.core.messages.first_mut() {
            Some(first) if first.role == "system" => *first = m,
            _ => self.core.messages.insert(0, m),
        }
    }

    /// Appends a message to the conversation (to restore a history, say).
    pub fn push_message(&mut self, message: Message) {
        self.core.messages.push(message);
    }

    /// Forgets the conversation (the cache is kept: a new conversation that
    /// starts the same way reuses it).
    pub fn clear_history(&mut self) {
        self.core.messages.clear();
        self.core.images.clear();
    }

    /// Gives back the KV cache and the activation buffers (an app sent to
    /// the background, memory pressure). The conversation stays: the next
    /// turn processes it again from the start, then answers as before.
    /// Returns the bytes given back.
    pub fn release_memory(&mut self) -> usize {
        self.core.cached.clear();
        let draft = self.core.draft.take().map_or(0, |d| d.kv_cache_bytes());
        self.core.state.release() + draft
    }

    /// Bytes of the KV cache now allocated.
    pub fn kv_cache_bytes(&self) -> usize {
        self.core.state.kv_cache_bytes()
    }

    /// Bytes of the activation buffers now allocated.
    pub fn scratch_bytes(&self) -> usize {
        self.core.state.scratch_bytes()
    }

    /// Forgets everything: the conversation and the cache.
    pub fn reset(&mut self) {
        self.core.messages.clear();
        self.core.cached.clear();
        self.core.state.reset();
        self.core.draft = None;
        self.core.image_key = None;
        self.core.images.clear();
    }

    /// Generates a continuation of `prompt`, the whole context the model
    /// sees (cached tokens it starts with are reused), calling `on_piece`
    /// for each token as it comes.
    pub fn complete(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_piece: impl FnMut(&Piece),
    ) -> Result<Generation, EngineError> {
        let mut stream = self.stream(prompt, opts)?;
        drive(&mut stream, &mut on_piece)
    }

    /// [`complete`](Session::complete) as an iterator of pieces; call
    /// [`Stream::finish`] for the result and the stats.
    pub fn stream(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Stream<'_>, EngineError> {
        let prep = self.prepare(prompt.to_vec(), opts)?;
        Ok(self.open(prep, opts, false))
    }

    /// Like [`complete`](Session::complete) with images: `prompt` holds one
    /// `<|image|>` token per image, in order (Llama 4 expands each into its
    /// tiles' tokens, as the Hugging Face processor does). Needs the
    /// engine's vision tower ([`Engine::load_mmproj`](super::Engine::load_mmproj)).
    /// The cache is reused only by a prompt with the same images and the
    /// same tokens up to the last one (the next turn of an image chat).
    pub fn complete_with_images(
        &mut self,
        prompt: &[u32],
        images: &[RgbImage],
        opts: &GenerateOptions,
        mut on_piece: impl FnMut(&Piece),
    ) -> Result<Generation, EngineError> {
        let mut stream = self.stream_with_images(prompt, images, opts)?;
        drive(&mut stream, &mut on_piece)
    }

    /// [`complete_with_images`](Session::complete_with_images) as a stream.
    pub fn stream_with_images(
        &mut self,
        prompt: &[u32],
        images: &[RgbImage],
        opts: &GenerateOptions,
    ) -> Result<Stream<'_>, EngineError> {
        self.open_with_images(prompt, images, opts, false)
    }

    fn open_with_images(
        &mut self,
        prompt: &[u32],
        images: &[RgbImage],
        opts: &GenerateOptions,
        chat: bool,
    ) -> Result<Stream<'_>, EngineError> {
        let prepared = self.prepare_images(prompt, images, opts)?;
        Ok(self.open_images(prepared, opts, chat))
    }

    /// Encodes the images of `prompt` and prepares the generation over an
    /// empty cache, or continues the cached image prompt when it was made of
    /// the same images and the same tokens up to the last image
    /// ([`ImageKey`]); everything that can fail before a stream opens.
    fn prepare_images(
        &mut self,
        prompt: &[u32],
        images: &[RgbImage],
        opts: &GenerateOptions,
    ) -> Result<ImagePrepared, EngineError> {
        let engine = self.engine.clone();
        let vision = engine.vision().ok_or(EngineError::NoVision)?;
        let marker = engine.tokenizer().token_id(crate::vision::IMAGE_MARKER);
        let last = marker.and_then(|m| prompt.iter().rposition(|&t| t == m));
        let hash = hash_images(images);
        if let Some(tokens) = last.and_then(|k| self.continued_image_prompt(prompt, k, hash)) {
            let prep = self.prepare_keeping(tokens, opts, true)?;
            return Ok(ImagePrepared {
                prep,
                fresh: None,
                image_encode_secs: 0.0,
            });
        }
        let t0 = Instant::now();
        let vp = vision.prompt(engine.tokenizer(), prompt, images)?;
        let image_encode_secs = t0.elapsed().as_secs_f64();
        let key = last.map(|k| ImageKey {
            head: prompt[..=k].to_vec(),
            expanded_head: vp.tokens().len() - (prompt.len() - k - 1),
            images: hash,
        });
        self.forget_cache();
        let prep = self.prepare(vp.tokens().to_vec(), opts)?;
        Ok(ImagePrepared {
            prep,
            fresh: key.map(|key| (vp, key)),
            image_encode_secs,
        })
    }

    /// The tokens to run for `prompt` (whose last image marker is at `k`)
    /// over the cached image prompt, when it continues it.
    fn continued_image_prompt(&self, prompt: &[u32], k: usize, hash: u64) -> Option<Vec<u32>> {
        let key = self.core.image_key.as_ref()?;
        let tail = &prompt[k + 1..];
        let fits = key.images == hash
            && prompt[..=k] == key.head[..]
            && self.core.cached.len() >= key.expanded_head
            // Something after the image to run, so the cache keeps it all.
            && !tail.is_empty();
        fits.then(|| [&self.core.cached[..key.expanded_head], tail].concat())
    }

    fn open_images(
        &mut self,
        prepared: ImagePrepared,
        opts: &GenerateOptions,
        chat: bool,
    ) -> Stream<'_> {
        let mut stream = self.open(prepared.prep, opts, chat);
        stream.stats.image_encode_secs = prepared.image_encode_secs;
        stream.image = prepared.fresh;
        stream
    }

    fn forget_cache(&mut self) {
        self.core.cached.clear();
        self.core.state.reset();
        self.core.image_key = None;
    }

    /// One chat turn: adds `user` to the conversation, renders it with the
    /// model's template, generates the answer (streamed to `on_piece`) and
    /// adds it to the conversation.
    pub fn chat(
        &mut self,
        user: &str,
        opts: &GenerateOptions,
        mut on_piece: impl FnMut(&Piece),
    ) -> Result<Generation, EngineError> {
        let mut stream = self.chat_stream(user, opts)?;
        drive(&mut stream, &mut on_piece)
    }

    /// [`chat`](Session::chat) as an iterator of pieces. The answer joins
    /// the conversation when the stream ends or is dropped (as far as it
    /// got); a turn cancelled before any text leaves the conversation as it
    /// was.
    pub fn chat_stream(
        &mut self,
        user: &str,
        opts: &GenerateOptions,
    ) -> Result<Stream<'_>, EngineError> {
        self.chat_stream_with_images(user, Vec::new(), opts)
    }

    /// A chat turn with `images` shown before the user's text (as Hugging
    /// Face's image chats render them). Needs the engine's vision tower.
    /// The conversation keeps its images: a later turn that adds none
    /// continues the cache (nothing encoded again, only its text runs); one
    /// that adds an image runs everything from an empty cache.
    pub fn chat_with_images(
        &mut self,
        user: &str,
        images: Vec<RgbImage>,
        opts: &GenerateOptions,
        mut on_piece: impl FnMut(&Piece),
    ) -> Result<Generation, EngineError> {
        let mut stream = self.chat_stream_with_images(user, images, opts)?;
        drive(&mut stream, &mut on_piece)
    }

    /// [`chat_with_images`](Session::chat_with_images) as a stream.
    pub fn chat_stream_with_images(
        &mut self,
        user: &str,
        images: Vec<RgbImage>,
        opts: &GenerateOptions,
    ) -> Result<Stream<'_>, EngineError> {
        if !images.is_empty() && self.engine.vision().is_none() {
            return Err(EngineError::NoVision);
        }
        let (n_msgs, n_images) = (self.core.messages.len(), self.core.images.len());
        self.core
            .messages
            .push(Message::user_with_images(user, images.len()));
        self.core.images.extend(images);
        if !self.core.images.is_empty() {
            let all = std::mem::take(&mut self.core.images);
            let prepared = self
                .chat_prompt()
                .and_then(|p| self.prepare_images(&p, &all, opts));
            self.core.images = all;
            return match prepared {
                Ok(prepared) => Ok(self.open_images(prepared, opts, true)),
                Err(e) => {
                    self.core.messages.truncate(n_msgs);
                    self.core.images.truncate(n_images);
                    Err(e)
                }
            };
        }
        let prompt = match &opts.tools {
            Some(tools) => self
                .engine
                .render_chat_with_tools(&self.core.messages, tools)
                .and_then(|text| self.engine.tokenize_chat(&text)),
            None => self.chat_prompt(),
        };
        let prep = prompt.and_then(|p| self.prepare(p, opts));
        match prep {
            Ok(prep) => Ok(self.open(prep, opts, true)),
            Err(e) => {
                self.core.messages.pop();
                Err(e)
            }
        }
    }

    /// The token ids of the conversation rendered with the assistant header.
    pub fn chat_prompt(&self) -> Result<Vec<u32>, EngineError> {
        let text = self.engine.render_chat(&self.core.messages, true)?;
        self.engine.tokenize_chat(&text)
    }

    fn prepare(
        &mut self,
        prompt: Vec<u32>,
        opts: &GenerateOptions,
    ) -> Result<Prepared, EngineError> {
        self.prepare_keeping(prompt, opts, false)
    }

    /// [`prepare`](Self::prepare); `keep_image`: the prompt continues the
    /// cached image prompt ([`ImageKey`]), whose cache is kept.
    fn prepare_keeping(
        &mut self,
        prompt: Vec<u32>,
        opts: &GenerateOptions,
        keep_image: bool,
    ) -> Result<Prepared, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if self.core.image_in_cache() && !keep_image {
            self.forget_cache();
        }
        let n_ctx = self.n_ctx();
        if prompt.len() > n_ctx {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: prompt.len(),
                n_ctx,
            });
        }
        let n_vocab = self.engine.model().config().n_vocab;
        // Input tokens may go past the vocabulary (mllama's <|image|>).
        let n_input = self.engine.model().n_input_tokens();
        if let Some((index, &token)) = prompt
            .iter()
            .enumerate()
            .find(|&(_, &t)| t as usize >= n_input)
        {
            return Err(ModelError::TokenOutOfRange {
                token,
                index,
                n_vocab: n_input,
            }
            .into());
        }
        let mut sampler = Sampler::new(opts.sampling.clone(), n_vocab)?;
        if opts.grammar.is_some() && opts.ignore_eog {
            return Err(EngineError::Grammar {
                reason: "a grammar cannot be combined with ignore_eog: the answer ends \
                         with the grammar's sentence"
                    .into(),
            });
        }
        let constraint = opts
            .grammar
            .as_ref()
            .map(|g| TokenConstraint::new(g.clone(), n_vocab));
        if let Some(Draft::Model(draft)) = opts.speculative.as_ref().map(|s| &s.draft) {
            if !self.core.draft.as_ref().is_some_and(|d| d.is_for(draft)) {
                let n_threads = self.n_threads();
                self.core.draft = Some(DraftState::new(draft.clone(), n_ctx, n_threads)?);
            }
        }
        let stops = StopStrings::new(opts.stop.iter().cloned())?;
        // Prompt tokens count for the repetition penalties, as in llama.cpp.
        // Input-only ids past the vocabulary (mllama's <|image|>) are never
        // sampled: nothing to penalize.
        let window = opts.sampling.penalty_last_n.min(prompt.len());
        let sampled = |t: &&u32| (**t as usize) < n_vocab;
        for &t in prompt[prompt.len() - window..].iter().filter(sampled) {
            sampler.accept(t)?;
        }

        // Keep what the cache shares with the prompt, but process at least
        // the last token: its logits are where generation starts.
        let common = self
            .core
            .cached
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let n_reuse = common.min(prompt.len() - 1);
        Ok(Prepared {
            prompt,
            n_reuse,
            sampler,
            stops,
            constraint,
        })
    }

    fn open(&mut self, prep: Prepared, opts: &GenerateOptions, chat: bool) -> Stream<'_> {
        let engine: &Engine = &self.engine;
        let core = &mut self.core;
        core.cancel.clear();
        core.state.truncate(prep.n_reuse);
        core.cached.truncate(prep.n_reuse);
        let tok = engine.tokenizer();
        let vocab = tok.vocab();
        // The detokenizer drops the SentencePiece space prefix of the first
        // piece, right for a whole text or an answer but not for a
        // continuation ("The capital of France is" + " Paris").
        let restore_space = !chat && vocab.add_space_prefix.unwrap_or(vocab.model == "llama");
        Stream {
            engine,
            detok: Some(tok.detokenizer(!opts.special)),
            core,
            sampler: prep.sampler,
            stops: prep.stops,
            constraint: prep.constraint,
            spec: opts.speculative.clone().map(|opts| Spec {
                opts,
                draft: Vec::new(),
                batch: Vec::new(),
                logits: Vec::new(),
                ready: VecDeque::new(),
            }),
            max_tokens: opts.max_tokens,
            ignore_eog: opts.ignore_eog,
            special: opts.special,
            stats: Stats {
                prompt_tokens: prep.prompt.len(),
                cached_tokens: prep.n_reuse,
                ..Stats::default()
            },
            prompt: prep.prompt,
            prompt_done: false,
            last: None,
            generated: Vec::new(),
            text: String::new(),
            stop: None,
            tail: None,
            failed: false,
            restore_space,
            chat,
            tools_offered: chat && opts.tools.is_some(),
            recorded: false,
            start: Instant::now(),
            generating: None,
            image: None,
        }
    }
}

fn drive(
    stream: &mut Stream<'_>,
    on_piece: &mut impl FnMut(&Piece),
) -> Result<Generation, EngineError> {
    while let Some(step) = stream.step_checked() {
        on_piece(&step?);
    }
    stream.result()
}

/// A generation in progress: an iterator of [`Piece`]s, one per generated
/// token plus possibly a final one with the held-back text.
///
/// The iterator ends when the generation does; after an error it ends too.
/// [`finish`](Stream::finish) runs it to the end and returns the
/// [`Generation`]. The session's cache always holds exactly the tokens
/// processed so far, so dropping a stream early is safe.
pub struct Stream<'s> {
    engine: &'s Engine,
    core: &'s mut Core,
    detok: Option<Detokenizer<'s>>,
    sampler: Sampler,
    stops: StopStrings,
    /// The grammar the answer must follow.
    constraint: Option<TokenConstraint>,
    /// Speculative decoding.
    spec: Option<Spec>,
    max_tokens: Option<usize>,
    ignore_eog: bool,
    special: bool,
    prompt: Vec<u32>,
    prompt_done: bool,
    /// The last sampled token, not yet in the cache.
    last: Option<u32>,
    generated: Vec<u32>,
    text: String,
    stop: Option<StopReason>,
    /// Text released at the end, not yet handed out.
    tail: Option<String>,
    failed: bool,
    /// Still to put back a space the detokenizer strips (see `open`).
    restore_space: bool,
    chat: bool,
    /// Tools were offered: the answer is read as tool calls at the end.
    tools_offered: bool,
    recorded: bool,
    stats: Stats,
    start: Instant,
    /// While a batched session generates: counted by the batcher.
    generating: Option<super::batch::Generating<'s>>,
    /// An image prompt, run whole by the first step.
    image: Option<(VisionPrompt, ImageKey)>,
}

impl std::fmt::Debug for Stream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("prompt_tokens", &self.prompt.len())
            .field("generated", &self.generated)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl Stream<'_> {
    /// The tokens generated so far.
    pub fn generated_ids(&self) -> &[u32] {
        &self.generated
    }

    /// The text released so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Why the generation ended (`None` while it runs).
    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.stop.as_ref()
    }

    /// The stats so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Runs the generation to its end and returns the result.
    pub fn finish(mut self) -> Result<Generation, EngineError> {
        while let Some(step) = self.step_checked() {
            step?;
        }
        self.result()
    }

    fn result(&mut self) -> Result<Generation, EngineError> {
        self.record();
        let stop = self.stop.clone().unwrap_or(StopReason::Cancelled);
        let tool_calls = match self.tools_offered {
            true => parse_tool_calls(&self.text).unwrap_or_default(),
            false => Vec::new(),
        };
        Ok(Generation {
            prompt_ids: self.prompt.clone(),
            generated_ids: self.generated.clone(),
            text: self.text.clone(),
            stop,
            stats: self.stats.clone(),
            tool_calls,
        })
    }

    /// [`step`](Self::step) that ends the stream after an error.
    fn step_checked(&mut self) -> Option<Result<Piece, EngineError>> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(p) => p.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    fn step(&mut self) -> Result<Option<Piece>, EngineError> {
        if self.stop.is_some() {
            return Ok(self.tail.take().map(|text| Piece { token: None, text }));
        }
        if self.core.cancel.is_cancelled() {
            return Ok(self.end(StopReason::Cancelled));
        }
        let id = if !self.prompt_done {
            if !self.process_prompt()? {
                return Ok(self.end(StopReason::Cancelled));
            }
            self.prompt_done = true;
            if self.max_tokens == Some(0) {
                return Ok(self.end(StopReason::MaxTokens));
            }
            let id = self.sample_current()?;
            self.stats.time_to_first_token_secs = Some(self.start.elapsed().as_secs_f64());
            id
        } else {
            if self.max_tokens.is_some_and(|m| self.generated.len() >= m) {
                return Ok(self.end(StopReason::MaxTokens));
            }
            match self.spec.as_mut().and_then(|s| s.ready.pop_front()) {
                // Sampled in the last speculative round.
                Some(id) => id,
                None => {
                    if self.core.state.n_past() >= self.core.state.n_ctx() {
                        return Ok(self.end(StopReason::ContextFull));
                    }
                    let t0 = Instant::now();
                    let id = self.decode()?;
                    self.stats.generation_secs += t0.elapsed().as_secs_f64();
                    id
                }
            }
        };
        self.emit(id)
    }

    /// Runs the prompt's uncached tokens through the model. False if
    /// cancelled on the way.
    fn process_prompt(&mut self) -> Result<bool, EngineError> {
        let model = self.engine.model();
        let t0 = Instant::now();
        if let Some((vp, key)) = self.image.take() {
            // An image prompt runs whole, from an empty cache; batched, with
            // no step beside it.
            let state = &mut self.core.state;
            match self.core.batched {
                true => self.engine.batcher().exclusive(|| vp.prefill(model, state)),
                false => vp.prefill(model, state),
            }?;
            self.core.cached.extend_from_slice(vp.tokens());
            self.core.image_key = Some(key);
            self.stats.prompt_secs = t0.elapsed().as_secs_f64();
            if self.core.batched && !self.decodes_alone() {
                self.generating = Some(self.engine.batcher().generating());
            }
            return Ok(true);
        }
        let todo = &self.prompt[self.stats.cached_tokens..];
        // Batched: chunked prefill, each chunk sharing a forward pass with
        // the other sessions' decode steps (alone between them after an
        // mllama image).
        let alone = self.decodes_alone();
        let chunk_size = match self.core.batched {
            true => Batcher::chunk_size(self.core.n_batch),
            false => self.core.n_batch,
        };
        for chunk in todo.chunks(chunk_size) {
            if self.core.cancel.is_cancelled() {
                self.stats.prompt_secs = t0.elapsed().as_secs_f64();
                return Ok(false);
            }
            let state = &mut self.core.state;
            if self.core.batched && alone {
                self.engine
                    .batcher()
                    .exclusive(|| model.forward(state, chunk))?;
            } else if self.core.batched {
                self.engine.batcher().prefill(model, state, chunk)?;
            } else {
                model.forward(state, chunk)?;
            }
            self.core.cached.extend_from_slice(chunk);
        }
        self.stats.prompt_secs = t0.elapsed().as_secs_f64();
        if self.core.batched && !alone {
            self.generating = Some(self.engine.batcher().generating());
        }
        Ok(true)
    }

    /// Whether this batched session's steps run alone rather than in a
    /// shared pass: an mllama image's cross-attention is per sequence, so
    /// its decode steps are not batched with others (a Llama 4 image is in
    /// the KV cache like text, and batches as text does).
    fn decodes_alone(&self) -> bool {
        self.core.image_in_cache()
            && !self
                .engine
                .model()
                .config()
                .cross_attention_layers
                .is_empty()
    }

    /// One decode round: a speculative one when a draft is at hand, else
    /// one forward pass of the last token. Returns the next token (more may
    /// wait in the speculative queue).
    fn decode(&mut self) -> Result<u32, EngineError> {
        self.stats.decode_steps += 1;
        if self.speculate()? {
            let ready = self.spec.as_mut().and_then(|s| s.ready.pop_front());
            return Ok(ready.expect("a speculative round makes at least one token"));
        }
        let Some(last) = self.last else {
            unreachable!("a decode step follows a sampled token")
        };
        let model = self.engine.model();
        let alone = self.decodes_alone();
        let state = &mut self.core.state;
        if self.core.batched && alone {
            self.engine
                .batcher()
                .exclusive(|| model.forward(state, &[last]))?;
        } else if self.core.batched {
            self.engine.batcher().decode(model, state, last)?;
        } else {
            model.forward(state, &[last])?;
        }
        self.core.cached.push(last);
        self.stats.decode_tokens += 1;
        self.sample_current()
    }

    /// A speculative round (see [`super::speculative`]): drafts tokens,
    /// runs the last token and the draft as one batch, and queues the
    /// tokens sampled from its rows up to the first one that differs from
    /// the draft. False when there is no draft worth verifying.
    fn speculate(&mut self) -> Result<bool, EngineError> {
        let (Some(spec), Some(last)) = (self.spec.as_mut(), self.last) else {
            return Ok(false);
        };
        let core = &mut *self.core;
        let n_past = core.state.n_past();
        // Room for `last` and the draft in the context and the batch, and
        // the token budget (the round makes at least one token itself).
        let left = self
            .max_tokens
            .map_or(usize::MAX, |m| m.saturating_sub(self.generated.len()));
        let max = spec
            .opts
            .draft_max
            .min(core.state.n_ctx().saturating_sub(n_past + 1))
            .min(core.n_batch.saturating_sub(1))
            .min(left.saturating_sub(1));
        if max == 0 {
            return Ok(false);
        }
        core.cached.push(last);
        let drafted = match (&spec.opts.draft, core.draft.as_mut()) {
            (Draft::PromptLookup { ngram }, _) => {
                lookup_draft(&core.cached, *ngram, max, &mut spec.draft);
                Ok(())
            }
            (Draft::Model(_), Some(d)) => {
                d.propose(&core.cached, max, spec.opts.p_min, &mut spec.draft)
            }
            (Draft::Model(_), None) => {
                spec.draft.clear();
                Ok(())
            }
        };
        core.cached.pop();
        drafted?;
        if spec.draft.is_empty() || spec.draft.len() < spec.opts.draft_min {
            return Ok(false);
        }
        spec.batch.clear();
        spec.batch.push(last);
        spec.batch.extend_from_slice(&spec.draft);
        let model = self.engine.model();
        let (state, batch, logits) = (&mut core.state, &spec.batch, &mut spec.logits);
        if core.batched {
            self.engine
                .batcher()
                .exclusive(|| model.forward_verify(state, batch, logits))?;
        } else {
            model.forward_verify(state, batch, logits)?;
        }
        let n_vocab = model.config().n_vocab;
        let tok = self.engine.tokenizer();
        let mut accepted = 0;
        for (i, row) in spec.logits.chunks_exact(n_vocab).enumerate() {
            let id = sample_row(&mut self.sampler, self.constraint.as_mut(), tok, row)?;
            spec.ready.push_back(id);
            if spec.draft.get(i) != Some(&id) {
                break;
            }
            accepted += 1;
        }
        // The cache keeps `last` and the accepted drafts.
        core.state.truncate(n_past + 1 + accepted);
        core.cached.push(last);
        core.cached.extend_from_slice(&spec.draft[..accepted]);
        self.stats.drafted_tokens += spec.draft.len();
        self.stats.accepted_tokens += accepted;
        self.stats.decode_tokens += spec.ready.len();
        Ok(true)
    }

    /// The next token from the state's logits.
    fn sample_current(&mut self) -> Result<u32, EngineError> {
        let tok = self.engine.tokenizer();
        sample_row(
            &mut self.sampler,
            self.constraint.as_mut(),
            tok,
            self.core.state.logits(),
        )
    }

    /// Hands out a sampled token: end of generation, or its text through
    /// the detokenizer and the stop strings.
    fn emit(&mut self, id: u32) -> Result<Option<Piece>, EngineError> {
        let tok = self.engine.tokenizer();
        if !self.ignore_eog && tok.is_eog(id) {
            return Ok(self.end(StopReason::EndOfGeneration(id)));
        }
        self.generated.push(id);
        self.stats.generated_tokens = self.generated.len();
        self.last = Some(id);

        let detok = self
            .detok
            .as_mut()
            .expect("the detokenizer lives until the end");
        let mut piece = detok.push(id)?;
        if self.restore_space {
            let skipped = !self.special
                && matches!(tok.token_type(id)?, TokenType::Control | TokenType::Unknown);
            let bytes = tok.token_to_piece(id)?;
            if !skipped && !bytes.is_empty() {
                if bytes[0] == b' ' {
                    piece.insert(0, ' ');
                }
                self.restore_space = false;
            }
        }
        let step = self.stops.push(&piece);
        let text = step.text.to_owned();
        let stopped = step.stopped;
        self.text.push_str(&text);
        if stopped {
            let s = self.stops.stopped().unwrap_or_default().to_owned();
            self.end(StopReason::StopString(s));
        }
        Ok(Some(Piece {
            token: Some(id),
            text,
        }))
    }

    /// Ends the generation: flushes the detokenizer and the stop-string
    /// hold-back into `tail` and returns it as a piece.
    fn end(&mut self, reason: StopReason) -> Option<Piece> {
        let mut tail = String::new();
        if self.stops.stopped().is_none() {
            if let Some(d) = self.detok.take() {
                let rest = d.finish();
                if !rest.is_empty() {
                    tail.push_str(self.stops.push(&rest).text);
                }
            }
            if self.stops.stopped().is_none() {
                tail.push_str(self.stops.finish());
            }
        }
        self.detok = None;
        self.generating = None;
        self.text.push_str(&tail);
        self.stop = Some(reason);
        self.stats.total_secs = self.start.elapsed().as_secs_f64();
        (!tail.is_empty()).then_some(Piece {
            token: None,
            text: tail,
        })
    }

    /// Chat: puts the answer into the conversation, once.
    fn record(&mut self) {
        if !self.chat || self.recorded {
            return;
        }
        self.recorded = true;
        let messages = &mut self.core.messages;
        let nothing = self.generated.is_empty() && self.text.is_empty();
        let cancelled = matches!(self.stop, None | Some(StopReason::Cancelled));
        if nothing && cancelled {
            // The turn did not happen: drop the user message it added.
            if messages.last().is_some_and(|m| m.role == "user") {
                messages.pop();
            }
        } else {
            messages.push(Message::assistant(self.text.clone()));
        }
    }
}

/// Samples the next token from `logits` (within the grammar, if any) and
/// accepts it into the sampler's penalty window and the grammar.
fn sample_row(
    sampler: &mut Sampler,
    constraint: Option<&mut TokenConstraint>,
    tok: &Tokenizer,
    logits: &[f32],
) -> Result<u32, EngineError> {
    let id = match constraint {
        None => sampler.sample(logits)?,
        Some(c) => {
            let id = match c.sample(sampler, tok, logits) {
                Err(SamplingError::NoCandidates) if c.matcher().is_too_ambiguous() => {
                    return Err(EngineError::Grammar {
                        reason: "the grammar is too ambiguous to follow (too many parses at once)"
                            .into(),
                    });
                }
                Err(SamplingError::NoCandidates) => {
                    return Err(EngineError::Grammar {
                        reason: "the grammar allows no token of the vocabulary here".into(),
                    });
                }
                other => other?,
            };
            c.accept(tok, id);
            id
        }
    };
    sampler.accept(id)?;
    Ok(id)
}

/// Speculative decoding's working state in a generation.
struct Spec {
    opts: SpeculativeOptions,
    /// This round's draft.
    draft: Vec<u32>,
    /// The verification batch: the last token and the draft.
    batch: Vec<u32>,
    /// The verification pass's logits, one row per batch position.
    logits: Vec<f32>,
    /// Tokens sampled in the last round, not yet handed out.
    ready: VecDeque<u32>,
}

impl Iterator for Stream<'_> {
    type Item = Result<Piece, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step_checked()
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        self.record();
    }
}
