//! `spinel serve` against the official `openai` Python client
//! (`cli/tests/serve_openai.py`; `pip install openai`, as `scripts/test.sh`
//! does — a missing package fails the test).
//!
//! * `openai_client_against_the_real_model`: SmolLM2-135M-Instruct Q4_1
//!   (`$SPINEL_TEST_MODEL`, or the cache `scripts/fetch-model.sh` fills)
//!   generating: chat streamed and not, usage counts, prompt caching, seed
//!   determinism, stop strings, completions, /v1/models, error cases (the
//!   server keeps serving), a streaming client that disconnects.
//! * `openai_client_tool_call_round_trip`: the tool-call mapping through the
//!   API with a Llama 3.1-style tools template. SmolLM2 does not produce
//!   tool calls reliably, so the server runs with its hidden
//!   `--fake-output` hook: the answer text is a Llama 3.1 JSON tool call
//!   instead of a generated one. The request rendering (tools, tool
//!   messages) runs for real; what this tests is the mapping of that text
//!   to `tool_calls`, streamed and not, and the `tool` message going back.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{Server, get, start};

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

fn model() -> PathBuf {
    spinel_runtime::cache::test_model()
}

fn model_id(model: &Path) -> String {
    let name = model.file_name().unwrap().to_string_lossy().into_owned();
    name.strip_suffix(".gguf").unwrap_or(&name).to_string()
}

#[test]
fn openai_client_against_the_real_model() {
    let model = model();
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
    run_client(&server, &model_id(&model), "real");
}

/// Without `-c`, `--parallel` sessions split the memory budget's KV part
/// between them (each its own cache), instead of each taking all of it.
#[test]
fn parallel_sessions_share_the_kv_budget() {
    let model = model();
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
    let model = model();
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
        "--fake-output",
        "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
    ]);
    run_client(&server, &model_id(&model), "tools");
}
