//! `spinel serve`: an OpenAI-compatible HTTP server.
//!
//! `POST /v1/chat/completions`, `POST /v1/completions` (streamed as
//! server-sent events or not), `GET /v1/models`, `GET /health`, `GET
//! /metrics` (with `--metrics`), and llama.cpp's `POST /tokenize` and `POST
//! /detokenize`. `GET /` is a web chat page (`chat.html`, bundled):
//! streamed answers, a stop button, the model and tokens/s.
//!
//! This crate only speaks HTTP ([`http`]: hyper on tokio, with timeouts,
//! a connection cap and graceful shutdown). The serving policy is the
//! runtime's: a request waits its turn for one of `--parallel` sessions in
//! a `spinel_runtime::engine::SessionPool` (first come first served, at
//! most `--queue` waiting, the free session whose KV cache shares the
//! longest prefix with the prompt), OpenAI messages become template input
//! in `spinel_runtime::chat::openai`. The sessions' decode steps are
//! batched (continuous batching: one forward pass per step for all
//! generating sessions, see `spinel_runtime::engine::Batcher`;
//! `--no-batching` runs them side by side instead). Generation runs on
//! blocking threads ([`generate`]); a client that goes away, stops reading
//! or outlives its deadline ends its generation at the next token.

mod generate;
mod http;
mod metrics;
mod openai;
mod requests;
mod routes;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spinel_runtime::chat::ChatTemplate;
use spinel_runtime::engine::{Engine, Session, SessionPool, SpeculativeOptions};

use crate::run::{SessionArgs, SpeculativeArgs, load_engine_with_vision};
use http::Limits;
use metrics::{Gauges, Metrics};
use requests::Requests;

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
    /// Most requests waiting for a session; beyond them a request is
    /// answered 503 with Retry-After at once.
    #[arg(long, default_value_t = 64)]
    queue: usize,
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
    /// Largest request body in bytes (default: 4 MiB, or 32 MiB with
    /// --mmproj, room for base64 photos).
    #[arg(long)]
    max_body: Option<usize>,
    /// Most open connections; beyond them new ones wait to be accepted.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Kernel send buffer of each connection in bytes (SO_SNDBUF; default:
    /// the system's autotuning, up to megabytes). Smaller bounds the memory
    /// a stalled client pins, and how much of an answer the kernel holds
    /// before writes block and --timeout-write starts counting.
    #[arg(long, value_name = "BYTES")]
    send_buffer: Option<u32>,
    /// Seconds a request's header may take to arrive (also the longest
    /// wait for the next request on a kept-alive connection).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout_header: f64,
    /// Seconds a request's body may take to arrive.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    timeout_body: f64,
    /// Seconds a connection may send nothing while no request is in
    /// progress before it is closed.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    timeout_idle: f64,
    /// Seconds a response write may stay blocked (a client that stopped
    /// reading) before the connection is dropped and its generation
    /// cancelled.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    timeout_write: f64,
    /// Seconds a request may take in all: waiting longer for a session is
    /// a 503; a generation still running then stops (finish_reason
    /// "length").
    #[arg(long, value_name = "SECS", default_value_t = 600.0)]
    timeout_request: f64,
    /// Seconds running requests get to finish after SIGTERM or Ctrl-C
    /// before they are cancelled.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    shutdown_grace: f64,
    /// The vision tower for image input (`OUT.mmproj.gguf` from `spinel
    /// convert`): chat requests may then carry OpenAI `image_url` parts
    /// with base64 `data:` URLs.
    #[arg(long)]
    mmproj: Option<PathBuf>,
    /// Also fetch `image_url` parts that are http(s) URLs (at most 20 MiB,
    /// 30 s each); without it such requests get 400.
    #[arg(long)]
    allow_image_urls: bool,
    /// Serve Prometheus metrics at /metrics (requests, tokens, queue,
    /// time to first token, batching, speculative decoding).
    #[arg(long)]
    metrics: bool,
    #[command(flatten)]
    session: SessionArgs,
    #[command(flatten)]
    speculative: SpeculativeArgs,
}

/// What every request of the server shares.
struct Ctx {
    engine: Arc<Engine>,
    pool: Arc<SessionPool<Session>>,
    model_id: String,
    n_ctx: usize,
    /// Whether `tool` messages become `ipython` ones (Llama 3 templates).
    ipython: bool,
    /// `--ignore-eos`: every request generates past end-of-generation tokens.
    ignore_eos: bool,
    /// `--allow-image-urls`: image parts may be fetched from http(s) URLs.
    allow_image_urls: bool,
    /// Speculative decoding for every request.
    speculative: Option<SpeculativeOptions>,
    created: u64,
    limits: Limits,
    timeout_request: Duration,
    metrics: Metrics,
    metrics_enabled: bool,
    requests: Arc<Requests>,
    connections: std::sync::atomic::AtomicUsize,
}

impl Ctx {
    /// Shutdown begins: the pool refuses new and waiting requests.
    fn shutting_down(&self) {
        self.pool.close();
    }

    fn gauges(&self) -> Gauges {
        let batch = self.engine.batcher().stats();
        Gauges {
            sessions: self.pool.size(),
            running: self.pool.busy(),
            waiting: self.pool.waiting(),
            max_waiting: self.pool.max_waiting(),
            connections: self.connections.load(Ordering::Relaxed),
            decode_steps: batch.steps,
            decode_rows: batch.rows,
            rows_per_step: batch.rows_per_step,
        }
    }
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

/// A flag's seconds as a duration (positive and finite).
fn secs(flag: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!(
            "--{flag} must be a positive number of seconds, not {v}"
        ))
    }
}

impl Args {
    fn limits(&self) -> Result<Limits, String> {
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        Ok(Limits {
            max_connections: self.max_connections,
            max_body: self.max_body.unwrap_or(match self.mmproj {
                Some(_) => 32 << 20,
                None => 4 << 20,
            }),
            header: secs("timeout-header", self.timeout_header)?,
            body: secs("timeout-body", self.timeout_body)?,
            idle: secs("timeout-idle", self.timeout_idle)?,
            write: secs("timeout-write", self.timeout_write)?,
            grace: secs("shutdown-grace", self.shutdown_grace)?,
        })
    }

    fn model_id(&self) -> String {
        self.alias.clone().unwrap_or_else(|| {
            let name = self
                .model
                .file_name()
                .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
            name.strip_suffix(".gguf").unwrap_or(&name).to_string()
        })
    }
}

/// Loads the model (with `--chat-template-file`'s template) and opens the
/// `--parallel` sessions.
fn load(args: &Args) -> Result<(Arc<Engine>, Vec<Session>), String> {
    let mut engine = load_engine_with_vision(&args.model, args.mmproj.as_deref(), &args.session)?;
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
            .ok_or("the engine is shared before the template is set")?
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
    Ok((engine, sessions))
}

pub fn run(args: &Args) -> Result<(), String> {
    if args.parallel == 0 {
        return Err("--parallel must be at least 1".into());
    }
    let limits = args.limits()?;
    let timeout_request = secs("timeout-request", args.timeout_request)?;
    let (engine, sessions) = load(args)?;
    let speculative = args.speculative.options(&engine, &args.session)?;
    let n_ctx = sessions[0].n_ctx();
    let ipython = engine.chat_template().is_ok_and(openai::uses_ipython_role);
    let ctx = Arc::new(Ctx {
        pool: Arc::new(SessionPool::new(sessions, args.queue)),
        engine,
        model_id: args.model_id(),
        n_ctx,
        ipython,
        ignore_eos: args.ignore_eos,
        allow_image_urls: args.allow_image_urls,
        speculative,
        created: now_secs(),
        limits,
        timeout_request,
        metrics: Metrics::new(),
        metrics_enabled: args.metrics,
        requests: Arc::new(Requests::default()),
        connections: Default::default(),
    });
    // The HTTP side only does I/O: a few threads are plenty; the engine's
    // threads (blocking ones, one per request) do the work.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.clamp(1, 4))
        .thread_name("spinel-serve")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
    let result = rt.block_on(async {
        let signals = http::Signals::new()?;
        let listener = http::listen(&args.host, args.port, args.send_buffer)
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        eprintln!(
            "spinel serve: {} ({n_ctx}-token context, {} parallel, queue {}) listening on http://{addr}",
            ctx.model_id, args.parallel, args.queue
        );
        http::serve(listener, Arc::clone(&ctx), signals).await
    });
    // Engine threads still running (a generation that did not stop in
    // time) end with the process.
    rt.shutdown_timeout(Duration::from_millis(500));
    result
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
