//! Routing and the small endpoints: the web page, `/health`, `/metrics`,
//! `/v1/models`, `/tokenize`, `/detokenize`. Generations are
//! [`super::generate`]'s; their engine work, like tokenizing here, runs on
//! blocking threads.

use std::sync::Arc;
use std::time::Instant;

use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::http::{Msg, Out, Response, read_body};
use super::openai::{self, ApiError};
use super::requests::Abandon;
use super::{CHAT_PAGE, Ctx, generate};

/// Pieces buffered between a generation and its connection: enough to ride
/// out scheduling hiccups; a client that stops reading fills it and then
/// blocks its generation until the write timeout drops it.
const CHANNEL: usize = 64;

/// The routes, as `/metrics` labels them.
const ROUTES: [&str; 9] = [
    "/",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/tokenize",
    "/detokenize",
    "/v1/models/{model}",
];

fn endpoint(path: &str) -> &'static str {
    if path == "/index.html" {
        return "/";
    }
    if path.starts_with("/v1/models/") {
        return "/v1/models/{model}";
    }
    ROUTES
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("other")
}

/// Answers one request.
pub async fn handle(ctx: Arc<Ctx>, req: hyper::Request<Incoming>) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let response = route(&ctx, req, &method, &path).await;
    ctx.metrics
        .request(endpoint(&path), response.status().as_u16());
    response
}

async fn route(
    ctx: &Arc<Ctx>,
    req: hyper::Request<Incoming>,
    method: &Method,
    path: &str,
) -> Response {
    let result = match (method, path) {
        (&Method::GET, "/" | "/index.html") => {
            let mut r = Response::new(Out::full(CHAT_PAGE));
            set(&mut r, CONTENT_TYPE, "text/html; charset=utf-8");
            return r;
        }
        (&Method::GET, "/health") => Ok(health(ctx)),
        (&Method::GET, "/metrics") if ctx.metrics_enabled => {
            let mut r = Response::new(Out::full(ctx.metrics.render(&ctx.gauges())));
            set(
                &mut r,
                CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            );
            return r;
        }
        (&Method::GET, "/metrics") => Err(ApiError::status(
            501,
            "Metrics are off: start the server with --metrics",
            "not_supported",
        )),
        (&Method::GET, "/v1/models") => Ok(json!({
            "object": "list",
            "data": [model_json(ctx)],
        })),
        (&Method::GET, p) if p.strip_prefix("/v1/models/") == Some(ctx.model_id.as_str()) => {
            Ok(model_json(ctx))
        }
        (&Method::GET, p) if p.starts_with("/v1/models/") => Err(ApiError::not_found(
            format!("The model '{}' does not exist", &p["/v1/models/".len()..]),
            "model_not_found",
        )),
        (&Method::POST, "/tokenize" | "/detokenize") => {
            let tokenize = path == "/tokenize";
            match read_json(ctx, req).await {
                Ok(body) => {
                    blocking(ctx, move |ctx| match tokenize {
                        true => self::tokenize(ctx, &body),
                        false => detokenize(ctx, &body),
                    })
                    .await
                }
                Err(e) => Err(e),
            }
        }
        (&Method::POST, "/v1/chat/completions" | "/v1/completions") => {
            let chat = path == "/v1/chat/completions";
            return match read_body(req, ctx.limits.max_body, ctx.limits.body).await {
                Ok(body) => completion(ctx, body, chat).await,
                Err(e) => error(&e),
            };
        }
        (_, p) if ROUTES.contains(&p) || p.starts_with("/v1/models/") => Err(ApiError::status(
            405,
            format!("{method} is not allowed on {path}"),
            "method_not_allowed",
        )),
        _ => Err(ApiError::not_found(
            format!("Unknown route: {method} {path}"),
            "unknown_url",
        )),
    };
    match result {
        Ok(v) => json_response(200, v.to_string()),
        Err(e) => error(&e),
    }
}

/// A chat or text completion: the engine thread prepares the prompt, waits
/// for a session and generates; its first message says how to answer.
async fn completion(ctx: &Arc<Ctx>, body: Bytes, chat: bool) -> Response {
    let received = Instant::now();
    let ticket = ctx.requests.ticket();
    let abandon = Abandon(Arc::clone(&ticket));
    let (tx, mut rx) = mpsc::channel(CHANNEL);
    let worker_ctx = Arc::clone(ctx);
    tokio::task::spawn_blocking(move || {
        generate::work(&worker_ctx, &body, chat, &ticket, tx, received);
    });
    match rx.recv().await {
        Some(Msg::Full {
            status,
            body,
            retry_after,
        }) => {
            let mut r = json_response(status, body);
            if let Some(s) = retry_after {
                set(&mut r, RETRY_AFTER, &s.to_string());
            }
            r
        }
        Some(Msg::Stream) => {
            let mut r = Response::new(Out::stream(rx, abandon));
            set(&mut r, CONTENT_TYPE, "text/event-stream");
            set(&mut r, CACHE_CONTROL, "no-cache");
            r
        }
        Some(Msg::Chunk(_)) | None => {
            error(&ApiError::server("the generation ended without an answer"))
        }
    }
}

/// Runs `f` on a blocking thread (engine work: tokenizing, detokenizing).
async fn blocking(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&Ctx) -> Result<Value, ApiError> + Send + 'static,
) -> Result<Value, ApiError> {
    let ctx = Arc::clone(ctx);
    tokio::task::spawn_blocking(move || f(&ctx))
        .await
        .unwrap_or_else(|e| Err(ApiError::server(format!("the request failed: {e}"))))
}

fn set(r: &mut Response, name: hyper::header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

pub fn json_response(status: u16, body: impl Into<Bytes>) -> Response {
    let mut r = Response::new(Out::full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    set(&mut r, CONTENT_TYPE, "application/json");
    r
}

/// An error response: `Retry-After` on 503; the connection closed after a
/// body that was not (all) read.
pub fn error(e: &ApiError) -> Response {
    let mut r = json_response(e.status, e.body().to_string());
    match e.status {
        503 => set(&mut r, RETRY_AFTER, "1"),
        408 | 413 => set(&mut r, CONNECTION, "close"),
        _ => {}
    }
    r
}

fn health(ctx: &Ctx) -> Value {
    let batch = ctx.engine.batcher().stats();
    json!({
        "status": if ctx.pool.is_closed() { "shutting_down" } else { "ok" },
        "sessions": ctx.pool.size(),
        "busy": ctx.pool.busy(),
        "waiting": ctx.pool.waiting(),
        "batched_steps": batch.steps,
        "batched_rows": batch.rows,
    })
}

fn model_json(ctx: &Ctx) -> Value {
    json!({
        "id": ctx.model_id,
        "object": "model",
        "created": ctx.created,
        "owned_by": "spinel",
        "meta": {
            "n_ctx": ctx.n_ctx,
            "parallel": ctx.pool.size(),
            "vision": ctx.engine.vision().is_some(),
        },
    })
}

async fn read_json(
    ctx: &Ctx,
    req: hyper::Request<Incoming>,
) -> Result<Map<String, Value>, ApiError> {
    let bytes = read_body(req, ctx.limits.max_body, ctx.limits.body).await?;
    parse_object(&bytes)
}

/// A request body that must be a JSON object.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
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

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn metrics_labels_stay_few() {
        assert_eq!(endpoint("/v1/chat/completions"), "/v1/chat/completions");
        assert_eq!(endpoint("/index.html"), "/");
        assert_eq!(endpoint("/v1/models/anything"), "/v1/models/{model}");
        assert_eq!(endpoint("/wp-admin/../x"), "other");
    }
}
