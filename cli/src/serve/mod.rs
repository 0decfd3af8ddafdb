//! `spinel serve`: an OpenAI-compatible HTTP server.
//!
//! `POST /v1/chat/completions`, `POST /v1/completions` (streamed as
//! server-sent events or not), `GET /v1/models`, `GET /health`, and
//! llama.cpp's `POST /tokenize` and `POST /detokenize`. The HTTP
//! layer is `tiny_http`, a thread per request: a request renders and
//! tokenizes its prompt, then waits its turn for one of `--parallel`
//! sessions ([`pool`]), first come first served, and gets the free session
//! whose KV cache shares the longest prefix with its prompt, so a
//! conversation that goes on reuses what the cache holds. The sessions'
//! decode steps are batched (continuous batching: one forward pass per step
//! for all generating sessions, see `spinel_runtime::engine::Batcher`;
//! `--no-batching` runs them side by side instead). A streaming
//! client that goes away ends its generation at the next token (the write
//! fails and the stream is dropped). `GET /` is a web chat page
//! (`chat.html`, bundled): streamed answers, a stop button, the model and
//! tokens/s.

mod openai;
mod pool;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use spinel_runtime::chat::ChatTemplate;
use spinel_runtime::engine::{Engine, GenerateOptions, Piece, Session};
use spinel_runtime::sampling::SamplingParams;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::run::{SessionArgs, load_engine};
use openai::{ApiError, Settings};
use pool::Pool;

/// Serve a model over an OpenAI-compatible HTTP API.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model file.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sessions generating at the same time; further requests wait. Each
    /// has its own KV cache: of `-c` tokens, or without it of an equal
    /// share of the memory budget's KV part.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Run each session's decode steps alone, each session on its share of
    /// the cores, instead of batching the steps of all generating sessions
    /// into one forward pass on all cores (continuous batching).
    #[arg(long)]
    no_batching: bool,
    /// Generate past end-of-generation tokens (until max_tokens, a stop
    /// string, the context's end or the client's disconnect), as
    /// llama.cpp's server option; requests can ask for it with "ignore_eos".
    #[arg(long)]
    ignore_eos: bool,
    /// The model name the API shows and accepts (default: the file name
    /// without `.gguf`).
    #[arg(long)]
    alias: Option<String>,
    /// A Jinja chat template to use instead of the model's (Hugging Face
    /// dialect: `messages`, `tools`, `add_generation_prompt` …).
    #[arg(long)]
    chat_template_file: Option<PathBuf>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body: usize,
    /// Test hook: chat answers are this text instead of generated ones
    /// (checks the response mapping, tool calls included, end to end).
    #[arg(long, hide = true)]
    fake_output: Option<String>,
    #[command(flatten)]
    session: SessionArgs,
}

struct Ctx {
    engine: Arc<Engine>,
    pool: Pool,
    model_id: String,
    n_ctx: usize,
    max_body: usize,
    /// Whether `tool` messages become `ipython` ones (Llama 3 templates).
    ipython: bool,
    fake_output: Option<String>,
    /// `--ignore-eos`: every request generates past end-of-generation tokens.
    ignore_eos: bool,
    created: u64,
}

/// The web chat page served at `/`: one self-contained file, no requests
/// beyond this server's API.
const CHAT_PAGE: &str = include_str!("chat.html");

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT_ID.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

pub fn run(args: &Args) -> Result<(), String> {
    if args.parallel == 0 {
        return Err("--parallel must be at least 1".into());
    }
    let mut engine = load_engine(&args.model, &args.session)?;
    if let Some(path) = &args.chat_template_file {
        let source = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (bos, eos) = engine
            .chat_template()
            .map_or((String::new(), String::new()), |t| {
                (t.bos_token().to_string(), t.eos_token().to_string())
            });
        let template =
            ChatTemplate::new(source, bos, eos).map_err(|e| format!("{}: {e}", path.display()))?;
        Arc::get_mut(&mut engine)
            .expect("the engine is not shared yet")
            .set_chat_template(template);
    }
    let mut opts = args.session.options()?;
    opts.batched = !args.no_batching;
    // Without -c, the sessions share the KV budget: each gets its part.
    opts.sessions = args.parallel;
    if opts.n_threads.is_none() && !opts.batched {
        // Sessions running side by side share the cores; batched ones take
        // turns, each step on all of them.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        opts.n_threads = Some((cores / args.parallel).max(1));
    }
    let sessions = (0..args.parallel)
        .map(|_| engine.session(&opts))
        .collect::<Result<Vec<Session>, _>>()
        .map_err(|e| format!("cannot open a session: {e}"))?;
    let n_ctx = sessions[0].n_ctx();
    let model_id = args.alias.clone().unwrap_or_else(|| {
        let name = args
            .model
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        name.strip_suffix(".gguf").unwrap_or(&name).to_string()
    });
    let ipython = engine
        .chat_template()
        .is_ok_and(|t| t.source().contains("<|start_header_id|>"));
    let server = Server::http((args.host.as_str(), args.port))
        .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let addr = server
        .server_addr()
        .to_ip()
        .map_or_else(|| "?".into(), |a| a.to_string());
    eprintln!(
        "spinel serve: {model_id} ({n_ctx}-token context, {} parallel) listening on http://{addr}",
        args.parallel
    );
    let ctx = Arc::new(Ctx {
        engine,
        pool: Pool::new(sessions),
        model_id,
        n_ctx,
        max_body: args.max_body,
        ipython,
        fake_output: args.fake_output.clone(),
        ignore_eos: args.ignore_eos,
        created: now_secs(),
    });
    for request in server.incoming_requests() {
        let ctx = Arc::clone(&ctx);
        std::thread::spawn(move || handle(&ctx, request));
    }
    Ok(())
}

fn json_response(status: u16, body: &Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(body.to_string().into_bytes())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

fn respond_error(request: Request, e: &ApiError) {
    let mut r = json_response(e.status, &e.body());
    if e.status == 413 {
        // The unread rest of the body must not be taken for a request.
        r = r.with_header(header("Connection", "close"));
    }
    let _ = request.respond(r);
}

fn handle(ctx: &Ctx, mut request: Request) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let method = request.method().clone();
    let result = match (&method, path.as_str()) {
        (Method::Get, "/" | "/index.html") => {
            let page = Response::from_data(CHAT_PAGE.as_bytes().to_vec())
                .with_header(header("Content-Type", "text/html; charset=utf-8"));
            let _ = request.respond(page);
            return;
        }
        (Method::Get, "/health") => {
            let batch = ctx.engine.batcher().stats();
            Ok(json!({
                "status": "ok",
                "sessions": ctx.pool.size(),
                "busy": ctx.pool.busy(),
                "waiting": ctx.pool.waiting(),
                "batched_steps": batch.steps,
                "batched_rows": batch.rows,
            }))
        }
        (Method::Get, "/v1/models") => Ok(json!({
            "object": "list",
            "data": [model_json(ctx)],
        })),
        (Method::Get, p) if p.strip_prefix("/v1/models/") == Some(ctx.model_id.as_str()) => {
            Ok(model_json(ctx))
        }
        (Method::Get, p) if p.starts_with("/v1/models/") => Err(ApiError::not_found(
            format!("The model '{}' does not exist", &p["/v1/models/".len()..]),
            "model_not_found",
        )),
        (Method::Post, "/tokenize") => {
            read_json(ctx, &mut request).and_then(|body| tokenize(ctx, &body))
        }
        (Method::Post, "/detokenize") => {
            read_json(ctx, &mut request).and_then(|body| detokenize(ctx, &body))
        }
        (Method::Post, "/v1/chat/completions") | (Method::Post, "/v1/completions") => {
            let chat = path == "/v1/chat/completions";
            match read_json(ctx, &mut request) {
                Ok(body) => return generate(ctx, request, &body, chat),
                Err(e) => Err(e),
            }
        }
        (
            _,
            "/health"
            | "/v1/models"
            | "/v1/chat/completions"
            | "/v1/completions"
            | "/tokenize"
            | "/detokenize",
        ) => Err(ApiError {
            status: 405,
            message: format!("{method} is not allowed on {path}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
        }),
        _ => Err(ApiError::not_found(
            format!("Unknown route: {method} {path}"),
            "unknown_url",
        )),
    };
    match result {
        Ok(v) => {
            let _ = request.respond(json_response(200, &v));
        }
        Err(e) => respond_error(request, &e),
    }
}

/// llama.cpp's `POST /tokenize`: `{"content": TEXT, "add_special": BOOL}`
/// → `{"tokens": [ids]}` (special tokens written in the text recognised).
fn tokenize(ctx: &Ctx, body: &Map<String, Value>) -> Result<Value, ApiError> {
    let content = match body.get("content") {
        Some(Value::String(s)) => s,
        Some(v) => {
            return Err(ApiError::invalid(
                format!("'content' must be a string, not {}", openai::kind(v)),
                Some("content"),
            ));
        }
        None => return Err(ApiError::invalid("'content' is required", Some("content"))),
    };
    let add_special = match body.get("add_special") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(ApiError::invalid(
                format!("'add_special' must be a boolean, not {}", openai::kind(v)),
                Some("add_special"),
            ));
        }
    };
    let ids = ctx
        .engine
        .tokenizer()
        .encode(content, add_special, true)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("content")))?;
    Ok(json!({ "tokens": ids }))
}

/// llama.cpp's `POST /detokenize`: `{"tokens": [ids]}` → `{"content": TEXT}`.
fn detokenize(ctx: &Ctx, body: &Map<String, Value>) -> Result<Value, ApiError> {
    let bad = || ApiError::invalid("'tokens' must be an array of token ids", Some("tokens"));
    let ids = body
        .get("tokens")
        .and_then(Value::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let text = ctx
        .engine
        .tokenizer()
        .decode(&ids, true)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("tokens")))?;
    Ok(json!({ "content": text }))
}

fn model_json(ctx: &Ctx) -> Value {
    json!({
        "id": ctx.model_id,
        "object": "model",
        "created": ctx.created,
        "owned_by": "spinel",
        "meta": {"n_ctx": ctx.n_ctx, "parallel": ctx.pool.size()},
    })
}

fn too_large(max: usize) -> ApiError {
    ApiError {
        status: 413,
        message: format!("The request body is larger than the limit of {max} bytes"),
        kind: "invalid_request_error",
        param: None,
        code: Some("request_too_large"),
    }
}

fn read_json(ctx: &Ctx, request: &mut Request) -> Result<Map<String, Value>, ApiError> {
    if request.body_length().is_some_and(|n| n > ctx.max_body) {
        return Err(too_large(ctx.max_body));
    }
    let mut bytes = Vec::new();
    request
        .as_reader()
        .take(ctx.max_body as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::invalid(format!("cannot read the request body: {e}"), None))?;
    if bytes.len() > ctx.max_body {
        return Err(too_large(ctx.max_body));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(v) => Err(ApiError::invalid(
            format!(
                "The request body must be a JSON object, not {}",
                openai::kind(&v)
            ),
            None,
        )),
        Err(e) => Err(ApiError::invalid(
            format!("The request body is not valid JSON: {e}"),
            None,
        )),
    }
}

/// A prepared generation: the prompt and how to run it.
struct Job {
    prompt: Vec<u32>,
    opts: GenerateOptions,
    settings: Settings,
    tools_offered: bool,
}

fn prepare(ctx: &Ctx, body: &Map<String, Value>, chat: bool) -> Result<Job, ApiError> {
    openai::check_model(body, &ctx.model_id)?;
    let settings = openai::settings(body)?;
    let grammar = openai::constraint(body)?;
    let engine = &ctx.engine;
    let mut tools_offered = false;
    let prompt = if chat {
        let input = openai::chat_input(body, ctx.ipython)?;
        let template = engine
            .chat_template()
            .map_err(|e| ApiError::server(e.to_string()))?;
        let mut extra = Map::new();
        if let Some(tools) = input.tools {
            tools_offered = true;
            extra.insert("tools".into(), tools);
        }
        let text = template
            .render_json(&input.messages, true, &extra)
            .map_err(|e| {
                ApiError::invalid(format!("cannot render the chat: {e}"), Some("messages"))
            })?;
        engine
            .tokenize_chat(&text)
            .map_err(|e| ApiError::server(e.to_string()))?
    } else {
        let text = match body.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().unwrap_or_default().to_string()
            }
            None => return Err(ApiError::invalid("'prompt' is required", Some("prompt"))),
            Some(v) => {
                return Err(ApiError::invalid(
                    format!("'prompt' must be a string, not {}", openai::kind(v)),
                    Some("prompt"),
                ));
            }
        };
        engine
            .tokenize_prompt(&text)
            .map_err(|e| ApiError::server(e.to_string()))?
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("The prompt is empty", Some("prompt")));
    }
    if prompt.len() >= ctx.n_ctx {
        return Err(ApiError::invalid(
            format!(
                "This model's context length is {} tokens; the prompt has {} tokens",
                ctx.n_ctx,
                prompt.len()
            ),
            Some("messages"),
        )
        .with_code("context_length_exceeded"));
    }
    if let Some(m) = settings.max_tokens {
        if prompt.len() + m > ctx.n_ctx {
            return Err(ApiError::invalid(
                format!(
                    "This model's context length is {} tokens; the prompt has {} tokens and max_tokens asks for {m} more",
                    ctx.n_ctx,
                    prompt.len()
                ),
                Some("max_tokens"),
            )
            .with_code("context_length_exceeded"));
        }
    }
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
        ..GenerateOptions::default()
    };
    Ok(Job {
        prompt,
        opts,
        settings,
        tools_offered,
    })
}

/// The body of a streamed (chunked) response on the raw connection.
struct Sse {
    out: Box<dyn Write + Send>,
}

impl Sse {
    fn start(request: Request) -> std::io::Result<Sse> {
        let mut out = request.into_writer();
        out.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )?;
        out.flush()?;
        Ok(Sse { out })
    }

    fn send_raw(&mut self, data: &str) -> std::io::Result<()> {
        let event = format!("data: {data}\n\n");
        write!(self.out, "{:x}\r\n{event}\r\n", event.len())?;
        self.out.flush()
    }

    fn send(&mut self, v: &Value) -> std::io::Result<()> {
        self.send_raw(&v.to_string())
    }

    fn done(mut self) -> std::io::Result<()> {
        self.send_raw("[DONE]")?;
        self.out.write_all(b"0\r\n\r\n")?;
        self.out.flush()
    }
}

/// A non-streamed response whose client is watched while it generates:
/// after [`Watched::BEAT`] the 200 header goes out with a chunked body, and
/// a newline (whitespace before the JSON, which parsers skip) every beat
/// after it; a write that fails means the client went away. A quick answer
/// is an ordinary response.
struct Watched {
    request: Option<Request>,
    out: Option<Box<dyn Write + Send>>,
    last: Instant,
}

impl Watched {
    const BEAT: Duration = Duration::from_millis(500);

    fn new(request: Request) -> Watched {
        Watched {
            request: Some(request),
            out: None,
            last: Instant::now(),
        }
    }

    /// Beats if one is due; `Err` when the client is gone.
    fn beat(&mut self) -> std::io::Result<()> {
        if self.last.elapsed() < Self::BEAT {
            return Ok(());
        }
        self.last = Instant::now();
        if self.out.is_none() {
            if let Some(r) = self.request.take() {
                let mut out = r.into_writer();
                out.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                      Transfer-Encoding: chunked\r\n\r\n",
                )?;
                self.out = Some(out);
            }
        }
        let out = self.out.as_mut().expect("started");
        out.write_all(b"1\r\n\n\r\n")?;
        out.flush()
    }

    /// The final body: an ordinary response, or the rest of the chunked one
    /// (whose status is already 200, so an error is only its body).
    fn respond(self, status: u16, v: &Value) {
        match (self.request, self.out) {
            (Some(r), _) => {
                let _ = r.respond(json_response(status, v));
            }
            (None, Some(mut out)) => {
                let body = v.to_string();
                let _ = write!(out, "{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
                let _ = out.flush();
            }
            (None, None) => {}
        }
    }
}

fn generate(ctx: &Ctx, request: Request, body: &Map<String, Value>, chat: bool) {
    let job = match prepare(ctx, body, chat) {
        Ok(job) => job,
        Err(e) => return respond_error(request, &e),
    };
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let id = if chat {
        format!("chatcmpl-{n}")
    } else {
        format!("cmpl-{n}")
    };
    let object = if chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    let created = now_secs();
    let base = |extra: Value| {
        let mut v = json!({
            "id": id,
            "object": if job.settings.stream { format!("{object}.chunk") } else { object.to_string() },
            "created": created,
            "model": ctx.model_id,
            "system_fingerprint": "spinel",
        });
        if let (Value::Object(v), Value::Object(e)) = (&mut v, extra) {
            v.extend(e);
        }
        v
    };
    let (mut sse, mut watched) = if job.settings.stream {
        match Sse::start(request) {
            Ok(s) => (Some(s), None),
            Err(_) => return,
        }
    } else {
        (None, Some(Watched::new(request)))
    };

    if let Some(sse) = sse.as_mut() {
        let first = if chat {
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]})
        } else {
            json!({"choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": null}]})
        };
        if sse.send(&base(first)).is_err() {
            return;
        }
    }

    let mut lease = ctx.pool.acquire(&job.prompt);
    // Tool calls are held back while the answer may still be one.
    let hold = |text: &str| chat && job.tools_offered && text.trim_start().starts_with(['{', '<']);
    let mut text = String::new();
    let mut sent = 0;
    let mut ids: Vec<u32> = Vec::new();
    let mut disconnected = false;
    let outcome: Result<(String, usize, usize, usize), String> = if let Some(fake) =
        &ctx.fake_output
    {
        text = fake.clone();
        Ok(("stop".into(), job.prompt.len(), 0, 1))
    } else {
        let cancel = lease.cancel_handle();
        match lease.stream(&job.prompt, &job.opts) {
            Err(e) => Err(e.to_string()),
            Ok(mut stream) => {
                for piece in stream.by_ref() {
                    let piece: Piece = match piece {
                        Ok(p) => p,
                        Err(_) => break,
                    };
                    text.push_str(&piece.text);
                    ids.extend(piece.token);
                    if let Some(w) = watched.as_mut() {
                        if w.beat().is_err() {
                            // Gone: end the generation.
                            cancel.cancel();
                            disconnected = true;
                            break;
                        }
                    }
                    if let Some(sse) = sse.as_mut() {
                        if hold(&text) || piece.text.is_empty() {
                            continue;
                        }
                        let delta = &text[sent..];
                        let chunk = if chat {
                            json!({"choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": null}]})
                        } else {
                            json!({"choices": [{"index": 0, "text": delta, "logprobs": null, "finish_reason": null}]})
                        };
                        if sse.send(&base(chunk)).is_err() {
                            // The client went away: end the generation.
                            cancel.cancel();
                            disconnected = true;
                            break;
                        }
                        sent = text.len();
                    }
                }
                match stream.finish() {
                    Ok(g) => Ok((
                        g.stop.name().to_string(),
                        g.stats.prompt_tokens,
                        g.stats.generated_tokens,
                        g.stats.cached_tokens,
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    };
    drop(lease);
    if disconnected {
        return;
    }
    let (stop, n_prompt, n_gen, n_cached) = match outcome {
        Ok(o) => o,
        Err(e) => {
            let e = ApiError::server(e);
            match (sse, watched.take()) {
                (Some(mut sse), _) => {
                    let _ = sse.send(&e.body());
                    let _ = sse.done();
                }
                (None, Some(w)) => w.respond(e.status, &e.body()),
                _ => {}
            }
            return;
        }
    };
    let mut finish = openai::finish_reason(&stop);
    let usage = openai::usage(n_prompt, n_gen, n_cached.min(n_prompt));
    if let Some(mut sse) = sse {
        let mut last = if chat {
            let mut delta = json!({});
            if sent < text.len() {
                let (msg, is_call) =
                    openai::assistant_message(&text[sent..], job.tools_offered, &id);
                if is_call {
                    finish = "tool_calls";
                    delta["tool_calls"] = openai::tool_calls_json(
                        &openai::parse_tool_calls(&text[sent..]).unwrap_or_default(),
                        &id,
                        true,
                    );
                } else {
                    delta["content"] = msg["content"].clone();
                }
            }
            json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        } else {
            json!({"choices": [{"index": 0, "text": &text[sent..], "logprobs": null, "finish_reason": finish}]})
        };
        if !job.settings.include_usage {
            // Not OpenAI's, but harmless; clients ignore unknown fields.
            last["usage"] = usage.clone();
        }
        if job.settings.return_tokens {
            last["tokens"] = json!(ids);
        }
        if sse.send(&base(last)).is_err() {
            return;
        }
        if job.settings.include_usage {
            let _ = sse.send(&base(json!({"choices": [], "usage": usage})));
        }
        let _ = sse.done();
    } else if let Some(w) = watched.take() {
        let choice = if chat {
            let (msg, is_call) = openai::assistant_message(&text, job.tools_offered, &id);
            if is_call {
                finish = "tool_calls";
            }
            json!({"index": 0, "message": msg, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
        };
        let mut v = base(json!({"choices": [choice], "usage": usage}));
        if job.settings.return_tokens {
            v["tokens"] = json!(ids);
        }
        w.respond(200, &v);
    }
}

#[cfg(test)]
mod tests {
    use super::CHAT_PAGE;

    /// The page works offline: nothing loaded from elsewhere.
    #[test]
    fn chat_page_makes_no_external_requests() {
        for needle in [
            "http://", "https://", "//cdn", "<link", "src=", "@import", "url(",
        ] {
            assert!(
                !CHAT_PAGE.contains(needle),
                "the chat page contains {needle:?}"
            );
        }
        for api in [
            "/v1/models",
            "/v1/chat/completions",
            "AbortController",
            "tokens/s",
        ] {
            assert!(CHAT_PAGE.contains(api), "{api}");
        }
    }
}
