//! The OpenAI API's request settings and error object as the server speaks
//! them. The message mapping and tool calls are the runtime's
//! (`spinel_runtime::chat::openai`). Pure functions, no I/O.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use spinel_runtime::chat::openai::InvalidRequest;
pub use spinel_runtime::chat::openai::{
    assistant_message, chat_input, json_kind as kind, tool_calls_json, uses_ipython_role,
};
pub use spinel_runtime::chat::tools::parse_tool_calls;
use spinel_runtime::engine::GenerateOptions;
use spinel_runtime::grammar::Grammar;

/// An error answered as OpenAI's `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn not_found(message: impl Into<String>, code: &'static str) -> Self {
        ApiError {
            status: 404,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some(code),
        }
    }

    pub fn server(message: impl Into<String>) -> Self {
        ApiError {
            status: 500,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// 503: the server cannot take the request now (a full queue, a wait
    /// past the deadline, shutdown); answered with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, code: &'static str) -> Self {
        ApiError {
            status: 503,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some(code),
        }
    }

    /// Any other status, as an invalid request with a code (405, 408, 413).
    pub fn status(status: u16, message: impl Into<String>, code: &'static str) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some(code),
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl From<InvalidRequest> for ApiError {
    fn from(e: InvalidRequest) -> Self {
        ApiError {
            param: e.param,
            ..ApiError::invalid(e.message, None)
        }
    }
}

/// Sampling and length settings of a request, checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
    /// llama.cpp's server extension: generate past end-of-generation
    /// tokens (benchmarks, load tests).
    pub ignore_eos: bool,
    /// llama.cpp's server extension: the generated token ids go in the
    /// response (`"tokens"`, in the last chunk when streaming).
    pub return_tokens: bool,
}

fn number(body: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if (lo..=hi).contains(&x) {
                Ok(Some(x))
            } else {
                Err(ApiError::invalid(
                    format!("'{key}' must be between {lo} and {hi}, got {x}"),
                    Some(key),
                ))
            }
        }
        Some(v) => Err(ApiError::invalid(
            format!("'{key}' must be a number, not {}", kind(v)),
            Some(key),
        )),
    }
}

fn boolean(body: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::invalid(
            format!("'{key}' must be a boolean, not {}", kind(v)),
            Some(key),
        )),
    }
}

/// Reads the settings common to chat and completions.
pub fn settings(body: &Map<String, Value>) -> Result<Settings, ApiError> {
    let temperature = number(body, "temperature", 0.0, 2.0)?.map(|x| x as f32);
    let top_p = number(body, "top_p", 0.0, 1.0)?.map(|x| x as f32);
    let max_key = if body.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match body.get(max_key) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(m) if m >= 1 => Some(usize::try_from(m).unwrap_or(usize::MAX)),
            _ => {
                return Err(ApiError::invalid(
                    format!("'{max_key}' must be a positive integer, got {n}"),
                    Some(max_key),
                ));
            }
        },
        Some(v) => {
            return Err(ApiError::invalid(
                format!("'{max_key}' must be an integer, not {}", kind(v)),
                Some(max_key),
            ));
        }
    };
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            for s in list {
                match s {
                    Value::String(s) => out.push(s.clone()),
                    v => {
                        return Err(ApiError::invalid(
                            format!("'stop' entries must be strings, not {}", kind(v)),
                            Some("stop"),
                        ));
                    }
                }
            }
            if out.len() > 4 {
                return Err(ApiError::invalid(
                    "'stop' takes at most 4 sequences",
                    Some("stop"),
                ));
            }
            out
        }
        Some(v) => {
            return Err(ApiError::invalid(
                format!(
                    "'stop' must be a string or an array of strings, not {}",
                    kind(v)
                ),
                Some("stop"),
            ));
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "'stop' sequences must not be empty",
            Some("stop"),
        ));
    }
    let seed = match body.get("seed") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .or_else(|| n.as_i64().map(|i| i as u64))
                .ok_or_else(|| ApiError::invalid("'seed' must be an integer", Some("seed")))?,
        ),
        Some(v) => {
            return Err(ApiError::invalid(
                format!("'seed' must be an integer, not {}", kind(v)),
                Some("seed"),
            ));
        }
    };
    let stream = boolean(body, "stream")?;
    let ignore_eos = boolean(body, "ignore_eos")?;
    let return_tokens = boolean(body, "return_tokens")?;
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => boolean(o, "include_usage")?,
        Some(v) => {
            return Err(ApiError::invalid(
                format!("'stream_options' must be an object, not {}", kind(v)),
                Some("stream_options"),
            ));
        }
    };
    match body.get("n") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64() == Some(1) => {}
        Some(_) => return Err(ApiError::invalid("only 'n': 1 is supported", Some("n"))),
    }
    Ok(Settings {
        temperature,
        top_p,
        max_tokens,
        stop,
        seed,
        stream,
        include_usage,
        ignore_eos,
        return_tokens,
    })
}

/// The grammar a request constrains its answer to: OpenAI's
/// `response_format` (`{"type": "json_object"}`, `{"type": "json_schema",
/// "json_schema": {"schema": {...}}}`) or llama.cpp's `grammar` (GBNF) and
/// `json_schema` extensions. At most one of them.
pub fn constraint(body: &Map<String, Value>) -> Result<Option<Arc<Grammar>>, ApiError> {
    let present = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
    let given: Vec<&str> = ["response_format", "grammar", "json_schema"]
        .into_iter()
        .filter(|k| present(k))
        .collect();
    if given.len() > 1 {
        return Err(ApiError::invalid(
            format!("give at most one of {}", given.join(", ")),
            Some(given[1]),
        ));
    }
    let grammar_error = |param: &str| {
        let param = param.to_owned();
        move |e: spinel_runtime::engine::EngineError| ApiError::invalid(e.to_string(), Some(&param))
    };
    let opts = GenerateOptions::default();
    let opts = match given.first().copied() {
        None => return Ok(None),
        Some("grammar") => match &body["grammar"] {
            Value::String(g) => opts.gbnf(g).map_err(grammar_error("grammar"))?,
            v => {
                return Err(ApiError::invalid(
                    format!("'grammar' must be a string (GBNF), not {}", kind(v)),
                    Some("grammar"),
                ));
            }
        },
        Some("json_schema") => opts
            .json_schema(&body["json_schema"])
            .map_err(grammar_error("json_schema"))?,
        _ => match response_format(&body["response_format"])? {
            None => return Ok(None),
            Some(None) => opts.json_object(),
            Some(Some(schema)) => opts
                .json_schema(schema)
                .map_err(grammar_error("response_format"))?,
        },
    };
    Ok(opts.grammar)
}

/// `response_format`: `None` for text, `Some(None)` for any JSON object,
/// `Some(Some(schema))` for a schema.
fn response_format(v: &Value) -> Result<Option<Option<&Value>>, ApiError> {
    let param = Some("response_format");
    let Value::Object(rf) = v else {
        return Err(ApiError::invalid(
            format!("'response_format' must be an object, not {}", kind(v)),
            param,
        ));
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => match rf.get("schema") {
            // llama.cpp's server also takes a schema here.
            Some(schema) if !schema.is_null() => Ok(Some(Some(schema))),
            _ => Ok(Some(None)),
        },
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .or_else(|| rf.get("schema"));
            match schema {
                Some(schema) if !schema.is_null() => Ok(Some(Some(schema))),
                _ => Err(ApiError::invalid(
                    "'response_format' of type json_schema needs 'json_schema': {\"schema\": {...}}",
                    param,
                )),
            }
        }
        _ => Err(ApiError::invalid(
            "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"",
            param,
        )),
    }
}

/// Checks the request's `model` against the served one (absent: fine).
pub fn check_model(body: &Map<String, Value>, served: &str) -> Result<(), ApiError> {
    match body.get("model") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(m)) if m == served => Ok(()),
        Some(Value::String(m)) => Err(ApiError::not_found(
            format!("The model '{m}' does not exist; this server serves '{served}'"),
            "model_not_found",
        )),
        Some(v) => Err(ApiError::invalid(
            format!("'model' must be a string, not {}", kind(v)),
            Some("model"),
        )),
    }
}

/// OpenAI's `finish_reason` for an engine stop reason name.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "context_full" => "length",
        _ => "stop",
    }
}

/// The `usage` object.
pub fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn settings_read_and_check_types() {
        let s = settings(&obj(json!({
            "temperature": 0.5, "top_p": 0.9, "max_tokens": 7,
            "stop": ["a", "b"], "seed": 42, "stream": true,
            "stream_options": {"include_usage": true}
        })))
        .unwrap();
        assert_eq!(s.temperature, Some(0.5));
        assert_eq!(s.top_p, Some(0.9));
        assert_eq!(s.max_tokens, Some(7));
        assert_eq!(s.stop, vec!["a", "b"]);
        assert_eq!(s.seed, Some(42));
        assert!(s.stream && s.include_usage);
        assert_eq!(
            settings(&obj(json!({"stop": "x"}))).unwrap().stop,
            vec!["x"]
        );
        for (bad, param) in [
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"temperature": 3}), "temperature"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_tokens": 1.5}), "max_tokens"),
            (json!({"stop": 3}), "stop"),
            (json!({"stop": [""]}), "stop"),
            (json!({"seed": "x"}), "seed"),
            (json!({"stream": "yes"}), "stream"),
        ] {
            let e = settings(&obj(bad)).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.param.as_deref(), Some(param));
        }
    }

    #[test]
    fn error_shape() {
        let e = ApiError::not_found("no such model", "model_not_found");
        assert_eq!(
            e.body(),
            json!({"error": {"message": "no such model", "type": "invalid_request_error",
                             "param": null, "code": "model_not_found"}})
        );
        assert!(check_model(&obj(json!({"model": "m"})), "m").is_ok());
        assert_eq!(
            check_model(&obj(json!({"model": "x"})), "m")
                .unwrap_err()
                .status,
            404
        );
    }
}
