//! A chat or text completion on its engine thread: the request's prompt
//! rendered and tokenized, a session from the pool (bounded queue, the
//! request's deadline), the generation, and the answer sent to the HTTP side
//! as one JSON response or as server-sent events over a bounded channel.
//!
//! The generation runs under [`PooledSession::run`]: a panic becomes a 500
//! (or, once events were sent, an error event and the end of the stream)
//! and the session is reset before it serves anyone else. A client that
//! goes away (its channel closes) or a request past its deadline cancels
//! the generation at its next step.

use std::time::Instant;

use hyper::body::Bytes;
use serde_json::{Map, Value, json};
use spinel_runtime::chat::openai::{ChatImage, ImageSource};
use spinel_runtime::engine::{
    EngineError, GenerateOptions, Piece, PoolError, PooledSession, Session, Stats,
};
use spinel_runtime::sampling::SamplingParams;
use spinel_runtime::vision::{RgbImage, decode_image};
use tokio::sync::mpsc;

use super::http::Msg;
use super::metrics::Generated;
use super::openai::{self, ApiError, Settings};
use super::requests::Ticket;
use super::routes::parse_object;
use super::{Ctx, now_secs, random_seed};

/// A prompt containing this panics its generation after the first token,
/// in a build with the `fault-injection` feature (tests only).
#[cfg(feature = "fault-injection")]
pub const PANIC_MAGIC: &str = "spinel-fault-injection:panic";

/// A prompt containing this holds its session for [`HOLD_FOR`] before
/// generating, in a build with the `fault-injection` feature (tests only):
/// a way to keep the queue behind it waiting past its deadline.
#[cfg(feature = "fault-injection")]
pub const HOLD_MAGIC: &str = "spinel-fault-injection:hold";

#[cfg(feature = "fault-injection")]
const HOLD_FOR: std::time::Duration = std::time::Duration::from_secs(3);

/// A prepared generation: the prompt and how to run it.
struct Job {
    chat: bool,
    prompt: Vec<u32>,
    /// The images of a chat prompt, in order (its image markers).
    images: Vec<RgbImage>,
    opts: GenerateOptions,
    settings: Settings,
    tools_offered: bool,
    received: Instant,
    deadline: Instant,
    #[cfg(feature = "fault-injection")]
    panic: bool,
    #[cfg(feature = "fault-injection")]
    hold: bool,
}

/// The engine side of one request (see the [module docs](self)).
pub fn work(
    ctx: &Ctx,
    body: &[u8],
    chat: bool,
    ticket: &Ticket,
    tx: mpsc::Sender<Msg>,
    received: Instant,
) {
    let mut reply = Reply::new(tx);
    let job = match parse_object(body).and_then(|b| prepare(ctx, &b, chat, received)) {
        Ok(job) => job,
        Err(e) => return reply.error(&e),
    };
    let t0 = Instant::now();
    let acquired = ctx
        .pool
        .acquire(&job.prompt, Some(job.deadline), Some(ticket.abandoned()));
    let mut session: PooledSession<Session> = match acquired {
        Ok(s) => s,
        Err(e) => return reply.error(&pool_error(&e, ctx)),
    };
    ctx.metrics.queued(t0.elapsed());
    #[cfg(feature = "fault-injection")]
    if job.hold {
        std::thread::sleep(HOLD_FOR);
    }
    let mut answer = Answer::new(ctx, &job);
    let outcome = session.run(|s| generate(s, ctx, &job, ticket, &mut reply, &mut answer));
    if matches!(outcome, Ok(Err(_))) {
        // A failed step (a batch whose forward pass failed, say) may have
        // left the cache half written: start that session afresh.
        session.poison();
    }
    ticket.detach();
    // Back to the pool before the last write.
    drop(session);
    match outcome {
        Ok(Ok(done)) => {
            let s = &done.stats;
            ctx.metrics.generated(Generated {
                prompt_tokens: s.prompt_tokens,
                cached_tokens: s.cached_tokens,
                generated_tokens: s.generated_tokens,
                drafted_tokens: s.drafted_tokens,
                accepted_tokens: s.accepted_tokens,
            });
            answer.finish(&done, &mut reply);
        }
        Ok(Err(e)) => reply.error(&engine_error(&e)),
        Err(panicked) => {
            ctx.metrics.panicked();
            eprintln!("spinel serve: {panicked}; the session was reset");
            reply.error(&ApiError::server(format!(
                "internal error: {panicked} (the server goes on)"
            )));
        }
    }
}

/// A failed generation: the request's fault (an image prompt that does not
/// fit, say; caught before anything was sent) is a 400, anything else 500.
fn engine_error(e: &EngineError) -> ApiError {
    match e {
        EngineError::Vision(_) | EngineError::NoVision => {
            ApiError::invalid(e.to_string(), Some("messages"))
        }
        EngineError::PromptTooLong { .. } => {
            ApiError::invalid(e.to_string(), Some("messages")).with_code("context_length_exceeded")
        }
        _ => ApiError::server(e.to_string()),
    }
}

fn pool_error(e: &PoolError, ctx: &Ctx) -> ApiError {
    match e {
        PoolError::QueueFull { .. } => ApiError::unavailable(
            format!(
                "The server is busy: all {} sessions are generating and {} requests are waiting; try again later",
                ctx.pool.size(),
                ctx.pool.max_waiting()
            ),
            "server_busy",
        ),
        PoolError::Timeout { .. } => {
            ApiError::unavailable(format!("The server is busy: {e}"), "queue_timeout")
        }
        PoolError::Closed => ApiError::unavailable("The server is shutting down", "shutting_down"),
        // Its client is gone: nobody reads this.
        _ => ApiError::unavailable(e.to_string(), "cancelled"),
    }
}

/// How a generation ended.
struct Done {
    stop: &'static str,
    stats: Stats,
    /// The request's deadline stopped it.
    timed_out: bool,
}

/// Runs the generation, forwarding pieces as they come.
fn generate(
    session: &mut Session,
    ctx: &Ctx,
    job: &Job,
    ticket: &Ticket,
    reply: &mut Reply,
    answer: &mut Answer,
) -> Result<Done, EngineError> {
    let cancel = session.cancel_handle();
    let mut stream = match job.images.is_empty() {
        true => session.stream(&job.prompt, &job.opts)?,
        false => session.stream_with_images(&job.prompt, &job.images, &job.opts)?,
    };
    ticket.attach(cancel.clone());
    if job.settings.stream && !answer.start(reply) {
        cancel.cancel();
    }
    let mut timed_out = false;
    let mut first = true;
    for piece in stream.by_ref() {
        let piece = piece?;
        if first && piece.token.is_some() {
            first = false;
            ctx.metrics.first_token(job.received.elapsed());
        }
        #[cfg(feature = "fault-injection")]
        if job.panic {
            panic!("fault injection: a prompt asked for a panic");
        }
        if !timed_out && Instant::now() >= job.deadline {
            timed_out = true;
            cancel.cancel();
        }
        if !answer.forward(&piece, reply) {
            // The client went away.
            cancel.cancel();
        }
    }
    let g = stream.finish()?;
    Ok(Done {
        stop: g.stop.name(),
        stats: g.stats,
        timed_out,
    })
}

/// The engine side of the channel to the request's connection.
struct Reply {
    tx: mpsc::Sender<Msg>,
    /// The event stream's head went out: errors are events from now on.
    streaming: bool,
}

impl Reply {
    fn new(tx: mpsc::Sender<Msg>) -> Reply {
        Reply {
            tx,
            streaming: false,
        }
    }

    /// Sends, waiting while the channel is full (the client reads slowly);
    /// false when the connection is gone.
    fn send(&mut self, m: Msg) -> bool {
        self.tx.blocking_send(m).is_ok()
    }

    fn is_gone(&self) -> bool {
        self.tx.is_closed()
    }

    fn full(&mut self, status: u16, v: &Value) -> bool {
        let retry_after = (status == 503).then_some(1);
        self.send(Msg::Full {
            status,
            body: Bytes::from(v.to_string()),
            retry_after,
        })
    }

    fn start_stream(&mut self) -> bool {
        self.streaming = true;
        self.send(Msg::Stream)
    }

    fn event(&mut self, v: &Value) -> bool {
        self.send(Msg::Chunk(Bytes::from(format!("data: {v}\n\n"))))
    }

    fn done(&mut self) -> bool {
        self.send(Msg::Chunk(Bytes::from_static(b"data: [DONE]\n\n")))
    }

    /// An error: a JSON response, or an error event ending the stream.
    fn error(&mut self, e: &ApiError) {
        if self.streaming {
            let _ = self.event(&e.body()) && self.done();
        } else {
            self.full(e.status, &e.body());
        }
    }
}

/// The answer being built: the text and tokens so far, what was streamed,
/// and the OpenAI response shapes.
struct Answer {
    chat: bool,
    stream: bool,
    tools_offered: bool,
    return_tokens: bool,
    include_usage: bool,
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    text: String,
    ids: Vec<u32>,
    /// Bytes of `text` already streamed.
    sent: usize,
}

impl Answer {
    fn new(ctx: &Ctx, job: &Job) -> Answer {
        let n = super::NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (id, object) = match job.chat {
            true => (format!("chatcmpl-{n}"), "chat.completion"),
            false => (format!("cmpl-{n}"), "text_completion"),
        };
        Answer {
            chat: job.chat,
            stream: job.settings.stream,
            tools_offered: job.tools_offered,
            return_tokens: job.settings.return_tokens,
            include_usage: job.settings.include_usage,
            id,
            object,
            created: now_secs(),
            model: ctx.model_id.clone(),
            text: String::new(),
            ids: Vec::new(),
            sent: 0,
        }
    }

    /// The fields every response or chunk has, plus `extra`'s.
    fn base(&self, extra: Value) -> Value {
        let object = match self.stream {
            true => format!("{}.chunk", self.object),
            false => self.object.to_string(),
        };
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "spinel",
        });
        if let (Value::Object(v), Value::Object(e)) = (&mut v, extra) {
            v.extend(e);
        }
        v
    }

    /// The stream's head and first chunk (the assistant role); false when
    /// the client is gone.
    fn start(&self, reply: &mut Reply) -> bool {
        let first = match self.chat {
            true => {
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]})
            }
            false => {
                json!({"choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": null}]})
            }
        };
        reply.start_stream() && reply.event(&self.base(first))
    }

    /// Takes a piece; streams what can be streamed. False when the client
    /// is gone.
    fn forward(&mut self, piece: &Piece, reply: &mut Reply) -> bool {
        self.text.push_str(&piece.text);
        self.ids.extend(piece.token);
        // Tool calls are held back while the answer may still be one.
        let hold =
            self.chat && self.tools_offered && self.text.trim_start().starts_with(['{', '<']);
        if !self.stream || hold || piece.text.is_empty() {
            return !reply.is_gone();
        }
        let delta = &self.text[self.sent..];
        let chunk = match self.chat {
            true => {
                json!({"choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": null}]})
            }
            false => {
                json!({"choices": [{"index": 0, "text": delta, "logprobs": null, "finish_reason": null}]})
            }
        };
        self.sent = self.text.len();
        reply.event(&self.base(chunk))
    }

    /// The last chunks or the whole response.
    fn finish(&self, done: &Done, reply: &mut Reply) {
        if reply.is_gone() {
            return;
        }
        let mut finish = match done.timed_out {
            true => "length",
            false => openai::finish_reason(done.stop),
        };
        let s = &done.stats;
        let usage = openai::usage(
            s.prompt_tokens,
            s.generated_tokens,
            s.cached_tokens.min(s.prompt_tokens),
        );
        if !self.stream {
            let choice = match self.chat {
                true => {
                    let (msg, is_call) =
                        openai::assistant_message(&self.text, self.tools_offered, &self.id);
                    if is_call {
                        finish = "tool_calls";
                    }
                    json!({"index": 0, "message": msg, "logprobs": null, "finish_reason": finish})
                }
                false => {
                    json!({"index": 0, "text": self.text, "logprobs": null, "finish_reason": finish})
                }
            };
            let mut v = self.base(json!({"choices": [choice], "usage": usage}));
            v["timings"] = timings(s);
            if self.return_tokens {
                v["tokens"] = json!(self.ids);
            }
            reply.full(200, &v);
            return;
        }
        let rest = &self.text[self.sent..];
        let mut last = match self.chat {
            true => {
                let mut delta = json!({});
                if !rest.is_empty() {
                    match openai::parse_tool_calls(rest).filter(|_| self.tools_offered) {
                        Some(calls) => {
                            finish = "tool_calls";
                            delta["tool_calls"] = openai::tool_calls_json(&calls, &self.id, true);
                        }
                        None => delta["content"] = json!(rest),
                    }
                }
                json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            }
            false => {
                json!({"choices": [{"index": 0, "text": rest, "logprobs": null, "finish_reason": finish}]})
            }
        };
        if !self.include_usage {
            // Not OpenAI's, but harmless; clients ignore unknown fields.
            last["usage"] = usage.clone();
        }
        last["timings"] = timings(s);
        if self.return_tokens {
            last["tokens"] = json!(self.ids);
        }
        let _ = reply.event(&self.base(last))
            && (!self.include_usage
                || reply.event(&self.base(json!({"choices": [], "usage": usage}))))
            && reply.done();
    }
}

/// llama.cpp's server's `timings` (not OpenAI's; clients ignore it), with
/// the image encoding time.
fn timings(s: &Stats) -> Value {
    json!({
        "prompt_n": s.processed_prompt_tokens(),
        "prompt_ms": s.prompt_secs * 1e3,
        "predicted_n": s.generated_tokens,
        "predicted_ms": s.generation_secs * 1e3,
        "image_encode_ms": s.image_encode_secs * 1e3,
    })
}

/// What a request asks the model: the prompt's text, whether tools are
/// offered, and the images of a chat.
struct Prompt {
    text: String,
    tools_offered: bool,
    images: Vec<RgbImage>,
}

/// The prompt of a chat request: its messages rendered with the template,
/// and its images decoded.
fn chat_prompt(ctx: &Ctx, body: &Map<String, Value>) -> Result<Prompt, ApiError> {
    let input = openai::chat_input(body, ctx.ipython)?;
    let images = input
        .images
        .iter()
        .map(|image| load_image(ctx, image))
        .collect::<Result<Vec<_>, _>>()?;
    let template = ctx
        .engine
        .chat_template()
        .map_err(|e| ApiError::server(e.to_string()))?;
    let mut extra = Map::new();
    let tools_offered = input.tools.is_some();
    if let Some(tools) = input.tools {
        extra.insert("tools".into(), tools);
    }
    let text = template
        .render_json(&input.messages, true, &extra)
        .map_err(|e| ApiError::invalid(format!("cannot render the chat: {e}"), Some("messages")))?;
    Ok(Prompt {
        text,
        tools_offered,
        images,
    })
}

/// Largest image a request may point at with an http(s) URL.
const MAX_IMAGE_BYTES: u64 = 20 << 20;

/// An image part's pixels: its data: URL's bytes, or its URL's where the
/// server allows fetching, decoded.
fn load_image(ctx: &Ctx, image: &ChatImage) -> Result<RgbImage, ApiError> {
    let param = Some(image.param.as_str());
    if ctx.engine.vision().is_none() {
        return Err(ApiError::invalid(
            format!(
                "{}: this server takes no images (its model has no vision tower; a vision \
                 model is served with --mmproj)",
                image.param
            ),
            param,
        ));
    }
    let fetched;
    let bytes = match &image.source {
        ImageSource::Data(bytes) => bytes,
        ImageSource::Url(url) if ctx.allow_image_urls => {
            let timeout = std::time::Duration::from_secs(30);
            fetched =
                spinel_runtime::download::fetch(url, MAX_IMAGE_BYTES, timeout).map_err(|e| {
                    ApiError::invalid(format!("{}: cannot fetch {url}: {e}", image.param), param)
                })?;
            &fetched
        }
        ImageSource::Url(_) => {
            return Err(ApiError::invalid(
                format!(
                    "{}: this server does not fetch image URLs (start it with \
                     --allow-image-urls); send the image as a base64 data: URL",
                    image.param
                ),
                param,
            ));
        }
    };
    decode_image(bytes).map_err(|e| ApiError::invalid(format!("{}: {e}", image.param), param))
}

/// The prompt of a text completion.
fn completion_prompt(body: &Map<String, Value>) -> Result<String, ApiError> {
    match body.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().unwrap_or_default().to_string())
        }
        None => Err(ApiError::invalid("'prompt' is required", Some("prompt"))),
        Some(v) => Err(ApiError::invalid(
            format!("'prompt' must be a string, not {}", openai::kind(v)),
            Some("prompt"),
        )),
    }
}

/// Checks a request and turns it into a [`Job`].
fn prepare(
    ctx: &Ctx,
    body: &Map<String, Value>,
    chat: bool,
    received: Instant,
) -> Result<Job, ApiError> {
    openai::check_model(body, &ctx.model_id)?;
    let settings = openai::settings(body)?;
    let grammar = openai::constraint(body)?;
    let engine = &ctx.engine;
    let Prompt {
        text,
        tools_offered,
        images,
    } = match chat {
        true => chat_prompt(ctx, body)?,
        false => Prompt {
            text: completion_prompt(body)?,
            tools_offered: false,
            images: Vec::new(),
        },
    };
    let prompt = match chat {
        true => engine.tokenize_chat(&text),
        false => engine.tokenize_prompt(&text),
    }
    .map_err(|e| ApiError::server(e.to_string()))?;
    check_length(ctx, prompt.len(), settings.max_tokens)?;
    let mut sampling = SamplingParams {
        seed: settings.seed.unwrap_or_else(random_seed),
        ..SamplingParams::default()
    };
    if let Some(t) = settings.temperature {
        sampling.temperature = t;
    }
    if let Some(p) = settings.top_p {
        sampling.top_p = p;
    }
    let opts = GenerateOptions {
        sampling,
        max_tokens: settings.max_tokens,
        stop: settings.stop.clone(),
        ignore_eog: (settings.ignore_eos || ctx.ignore_eos) && grammar.is_none(),
        grammar,
        speculative: ctx.speculative.clone(),
        ..GenerateOptions::default()
    };
    Ok(Job {
        chat,
        prompt,
        images,
        opts,
        settings,
        tools_offered,
        received,
        deadline: received + ctx.timeout_request,
        #[cfg(feature = "fault-injection")]
        panic: text.contains(PANIC_MAGIC),
        #[cfg(feature = "fault-injection")]
        hold: text.contains(HOLD_MAGIC),
    })
}

/// The prompt and `max_tokens` must fit in a session's context.
fn check_length(ctx: &Ctx, prompt: usize, max_tokens: Option<usize>) -> Result<(), ApiError> {
    if prompt == 0 {
        return Err(ApiError::invalid("The prompt is empty", Some("prompt")));
    }
    let n_ctx = ctx.n_ctx;
    if prompt >= n_ctx {
        return Err(ApiError::invalid(
            format!(
                "This model's context length is {n_ctx} tokens; the prompt has {prompt} tokens"
            ),
            Some("messages"),
        )
        .with_code("context_length_exceeded"));
    }
    if let Some(m) = max_tokens.filter(|m| prompt + m > n_ctx) {
        return Err(ApiError::invalid(
            format!(
                "This model's context length is {n_ctx} tokens; the prompt has {prompt} tokens and max_tokens asks for {m} more"
            ),
            Some("max_tokens"),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(())
}
