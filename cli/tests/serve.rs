//! `spinel serve` with SmolLM2-135M-Instruct Q4_1 (`$SPINEL_TEST_MODEL`, or
//! the cache `scripts/fetch-model.sh` fills), mostly through the official
//! `openai` Python client (`cli/tests/serve_openai.py`; `pip install
//! openai`, as `scripts/test.sh` does — a missing package fails the test).
//!
//! * `openai_client_against_the_real_model`: chat streamed and not, usage
//!   counts, prompt caching, seed determinism, stop strings, completions,
//!   /v1/models, error cases (the server keeps serving), clients that
//!   disconnect or stall.
//! * `openai_client_tool_call_round_trip`: the tool-call mapping through the
//!   API with a Llama 3.1-style tools template and real generation. SmolLM2
//!   does not call tools by itself, so each request carries a GBNF
//!   `grammar` that forces the answer into a Llama 3.1 JSON tool call
//!   (`{"name": "get_weather", "parameters": {"city": ...}}`); what this
//!   tests is the rendering of tools and tool messages, and the mapping of
//!   the generated call to `tool_calls`, streamed and not.
//! * `json_schema_answers_validate`: `response_format` with a JSON Schema
//!   (nested objects, arrays, enums, required fields), and `json_object`;
//!   every answer parses and is checked by the `jsonschema` crate.
//! * `speculative_decoding_serves_the_same_greedy_answer`: `--lookup-ngram`
//!   on serve: the same greedy answer as without it, drafts counted.

use std::path::Path;
use std::process::Command;

mod common;

use common::{Server, get, post, start, test_model};
use serde_json::{Value, json};

fn run_client(server: &Server, model_id: &str, mode: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_openai.py");
    let out = Command::new("python3")
        .arg(script)
        .args([&server.base, model_id, mode])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "serve_openai.py {mode} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains(&format!("ok {mode}")), "{stdout}");
}

#[test]
fn openai_client_against_the_real_model() {
    let (model, id) = test_model();
    let server = start(&[
        "-m",
        model.to_str().unwrap(),
        "-c",
        "1024",
        "--parallel",
        "2",
        "-t",
        "1",
    ]);
    run_client(&server, &id, "real");
}

/// Without `-c`, `--parallel` sessions split the memory budget's KV part
/// between them (each its own cache), instead of each taking all of it.
#[test]
fn parallel_sessions_share_the_kv_budget() {
    let (model, _) = test_model();
    let n_ctx = |parallel: &str| {
        let server = start(&[
            "-m",
            model.to_str().unwrap(),
            "--memory-budget",
            "160MiB",
            "--parallel",
            parallel,
            "-t",
            "1",
        ]);
        let (status, body) = get(&server, "/v1/models");
        assert!(status.contains(" 200 "), "{status}\n{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let meta = &v["data"][0]["meta"];
        assert_eq!(meta["parallel"].to_string(), parallel, "{v}");
        meta["n_ctx"].as_u64().unwrap_or_else(|| panic!("{v}"))
    };
    let one = n_ctx("1");
    let four = n_ctx("4");
    // 160 MiB leaves SmolLM2 (~100 MiB at Q4_1) less KV room than its
    // 8192-token training context needs, so the budget decides.
    assert!(one < 8192, "{one}");
    assert!(four <= one / 4 && four + 1 >= one / 4, "{one} vs {four}");
}

#[test]
fn openai_client_tool_call_round_trip() {
    let (model, id) = test_model();
    let template = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../runtime/tests/chat_compat/tools_header.jinja");
    let server = start(&[
        "-m",
        model.to_str().unwrap(),
        "-c",
        "1024",
        "-t",
        "1",
        "--chat-template-file",
        template.to_str().unwrap(),
    ]);
    run_client(&server, &id, "tools");
}

fn chat_json(server: &Server, body: Value) -> Value {
    let r = post(server, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

#[test]
fn json_schema_answers_validate() {
    let (model, _) = test_model();
    let server = start(&["-m", model.to_str().unwrap(), "-c", "1024", "-t", "2"]);
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer"},
            "role": {"enum": ["admin", "user", "guest"]},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 24},
                    "zip": {"type": "string", "minLength": 5, "maxLength": 5}
                },
                "required": ["city", "zip"]
            },
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 12},
                "minItems": 1,
                "maxItems": 3
            }
        },
        "required": ["name", "age", "role", "address", "tags"]
    });
    let validator = jsonschema::validator_for(&schema).unwrap();
    for (i, temperature) in [0.0, 1.0, 1.0].into_iter().enumerate() {
        let doc = chat_json(
            &server,
            json!({
                "messages": [{"role": "user", "content": "Describe a user of a web shop as JSON."}],
                "max_tokens": 400, "temperature": temperature, "seed": i,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "user", "schema": schema}},
            }),
        );
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{doc}: {errors:?}");
    }
    // Any JSON object, streamed: the concatenated deltas parse.
    let r = post(
        &server,
        "/v1/chat/completions",
        &json!({
            "messages": [{"role": "user", "content": "Describe a cat as JSON with its name and age."}],
            "max_tokens": 300, "temperature": 0, "stream": true,
            "response_format": {"type": "json_object"},
        }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let text: String = r
        .events()
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(doc.is_object(), "{doc}");
    let last: Value = serde_json::from_str(&r.events()[r.events().len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop", "{last}");
    // A schema that is no schema is the client's error.
    let r = post(
        &server,
        "/v1/chat/completions",
        &json!({
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}},
        }),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "response_format", "{}", r.body);
}

/// `--lookup-ngram` (prompt lookup) drafts tokens for every request; at
/// temperature 0 the answer is the plain server's, and `/metrics` counts the
/// drafts.
#[test]
fn speculative_decoding_serves_the_same_greedy_answer() {
    let (model, _) = test_model();
    let m = model.to_str().unwrap();
    let plain = start(&["-m", m, "-c", "1024", "-t", "2"]);
    let spec = start(&[
        "-m",
        m,
        "-c",
        "1024",
        "-t",
        "2",
        "--lookup-ngram",
        "3",
        "--draft-max",
        "8",
        "--metrics",
    ]);
    let body = json!({
        "messages": [{"role": "user", "content":
            "Repeat this text exactly: The old lighthouse keeper climbed the stairs every \
             evening, lit the lamp, and watched the ships pass by the rocky coast."}],
        "max_tokens": 48, "temperature": 0,
    });
    let answer = |server: &Server| {
        let r = post(server, "/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let want = answer(&plain);
    assert_eq!(answer(&spec), want);
    let metrics = common::http(&spec, "GET", "/metrics", None).body;
    let count = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {metrics}"))
    };
    let drafted = count("spinel_speculative_drafted_tokens_total");
    let accepted = count("spinel_speculative_accepted_tokens_total");
    assert!(
        drafted > 0.0 && accepted > 0.0 && accepted <= drafted,
        "{metrics}"
    );
}
