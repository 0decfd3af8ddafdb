//! End-to-end tests of `spinel run`, `spinel chat` and `spinel tokenize` on
//! the real model, SmolLM2-135M-Instruct Q4_1 (`$SPINEL_TEST_MODEL`, or
//! `~/.cache/spinel/models/`, where `scripts/fetch-model.sh` puts it;
//! missing, the tests fail saying so).
//!
//! * `run --json`: the fields, and llama.cpp's greedy tokens
//!   (`../shared/testdata/smollm2/greedy.json`) up to its first close call;
//!   `run` without `--json` streams the text to stdout and stats to stderr.
//! * `tokenize --json`: Hugging Face's ids and tokens for every case of
//!   `../shared/testdata/tokenization/smollm2.json`.
//! * `chat` driven through stdin: two turns answered, `/exit`, exit code 0;
//!   without `-m` it finds the model in `$SPINEL_CACHE` and never fetches.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value as Json;

const SPINEL: &str = env!("CARGO_BIN_EXE_spinel");
const MODEL_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path() -> PathBuf {
    spinel_runtime::cache::test_model()
}

fn testdata() -> PathBuf {
    match std::env::var_os("SPINEL_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
    }
}

fn read_json(path: &Path) -> Json {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn spinel<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(SPINEL)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running spinel")
}

fn ok(out: &Output) -> (String, String) {
    let stdout = String::from_utf8(out.stdout.clone()).expect("UTF-8 stdout");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "spinel failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    (stdout, stderr)
}

/// A fresh empty folder under the system temp folder.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spinel-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `spinel chat ARGS` with `input` on stdin.
fn chat(args: &[&str], input: &str, env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut cmd = Command::new(SPINEL);
    cmd.arg("chat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("running spinel chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn run_json_reproduces_llama_cpp_greedy() {
    let model = model_path();
    let reference = read_json(&testdata().join("smollm2/greedy.json"));
    let cases = reference["cases"].as_array().unwrap();
    // Two cases: a plain prompt and the chat-formatted one (special tokens
    // in the text).
    for case in [&cases[0], &cases[4]] {
        let prompt = case["prompt"].as_str().unwrap();
        let want_prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["generated_ids"]);
        let n = case["margins"]
            .as_array()
            .unwrap()
            .iter()
            .position(|m| m.as_f64().unwrap() < 0.3)
            .unwrap_or(want.len())
            .min(8);
        let n_arg = n.to_string();
        let out = spinel(&[
            "run".as_ref(),
            "-m".as_ref(),
            model.as_os_str(),
            "--prompt".as_ref(),
            prompt.as_ref(),
            "--temp".as_ref(),
            "0".as_ref(),
            "-n".as_ref(),
            n_arg.as_ref(),
            "-c".as_ref(),
            "256".as_ref(),
            "-t".as_ref(),
            "2".as_ref(),
            "--json".as_ref(),
        ]);
        let (stdout, _) = ok(&out);
        assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
        let doc: Json = serde_json::from_str(&stdout).unwrap();
        assert_eq!(ids(&doc["prompt_ids"]), want_prompt, "{prompt:?}");
        assert_eq!(ids(&doc["generated_ids"]), want[..n], "{prompt:?}");
        let text = doc["text"].as_str().unwrap();
        assert!(
            case["text"].as_str().unwrap().starts_with(text) && !text.is_empty(),
            "{prompt:?}: {text:?}"
        );
        assert_eq!(doc["stop"]["reason"], "max_tokens");
        assert!(doc["seed"].is_u64());
        assert_eq!(doc["n_ctx"], 256);
        let stats = &doc["stats"];
        assert_eq!(stats["prompt_tokens"], want_prompt.len());
        assert_eq!(stats["generated_tokens"], n);
        assert_eq!(stats["cached_tokens"], 0);
        assert_eq!(stats["threads"], 2);
        for key in [
            "prompt_tokens_per_sec",
            "generation_tokens_per_sec",
            "time_to_first_token_secs",
            "prompt_secs",
            "generation_secs",
            "total_secs",
        ] {
            assert!(
                stats[key].as_f64().is_some_and(|v| v > 0.0),
                "{key}: {}",
                stats[key]
            );
        }

        // --prompt-ids gives the same tokens.
        let id_list: Vec<String> = want_prompt.iter().map(u32::to_string).collect();
        let id_arg = id_list.join(",");
        let out = spinel(&[
            "run".as_ref(),
            "-m".as_ref(),
            model.as_os_str(),
            "--prompt-ids".as_ref(),
            id_arg.as_ref(),
            "--temp".as_ref(),
            "0".as_ref(),
            "-n".as_ref(),
            n_arg.as_ref(),
            "-c".as_ref(),
            "256".as_ref(),
            "--json".as_ref(),
        ]);
        let doc: Json = serde_json::from_str(&ok(&out).0).unwrap();
        assert_eq!(ids(&doc["generated_ids"]), want[..n], "{prompt:?} by ids");
    }
}

#[test]
fn run_streams_text_and_stops_at_stop_strings() {
    let model = model_path();
    let out = spinel(&[
        "run".as_ref(),
        "-m".as_ref(),
        model.as_os_str(),
        "-p".as_ref(),
        "The capital of France is".as_ref(),
        "--temp".as_ref(),
        "0".as_ref(),
        "-n".as_ref(),
        "6".as_ref(),
        "-c".as_ref(),
        "64".as_ref(),
        "--stop".as_ref(),
        "\n\n".as_ref(),
    ]);
    let (stdout, stderr) = ok(&out);
    assert_eq!(stdout, " Paris.\n");
    assert!(stderr.contains("stop: stop_string"), "{stderr}");
    assert!(stderr.contains("tok/s"), "{stderr}");

    // Clear errors for a prompt longer than the context and for bad flags.
    let out = spinel(&[
        "run".as_ref(),
        "-m".as_ref(),
        model.as_os_str(),
        "-p".as_ref(),
        "1, 1, 2, 3, 5, 8, 13,".as_ref(),
        "-c".as_ref(),
        "8".as_ref(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("21 tokens long") && stderr.contains("only 8"),
        "{stderr}"
    );
    let out = spinel(&["run", "-m", "x.gguf"]);
    assert!(!out.status.success(), "a prompt is required");
}

#[test]
fn tokenize_json_matches_hf_for_smollm2() {
    let model = model_path();
    let data = read_json(&testdata().join("tokenization/smollm2.json"));
    let mut checked = 0;
    for case in data["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        if text.contains('\0') {
            // A NUL cannot be passed in a command-line argument; the
            // runtime's tokenizer tests cover it.
            continue;
        }
        let with_bos = spinel(&[
            "tokenize".as_ref(),
            "-m".as_ref(),
            model.as_os_str(),
            "--text".as_ref(),
            text.as_ref(),
            "--json".as_ref(),
        ]);
        let doc: Json = serde_json::from_str(&ok(&with_bos).0).unwrap();
        assert_eq!(ids(&doc["ids"]), ids(&case["ids_with_special"]), "{text:?}");
        assert_eq!(doc["tokens"], case["tokens"], "{text:?}");

        let no_bos = spinel(&[
            "tokenize".as_ref(),
            "-m".as_ref(),
            model.as_os_str(),
            "--text".as_ref(),
            text.as_ref(),
            "--json".as_ref(),
            "--no-bos".as_ref(),
        ]);
        let doc: Json = serde_json::from_str(&ok(&no_bos).0).unwrap();
        assert_eq!(ids(&doc["ids"]), ids(&case["ids"]), "{text:?} --no-bos");
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} cases");
}

#[test]
fn chat_through_stdin_answers_each_line() {
    let model = model_path();
    let model = model.to_str().unwrap();
    let out = chat(
        &[
            "-m", model, "--temp", "0", "-n", "24", "-c", "512", "-t", "2", "--stats",
        ],
        "What is the tallest mountain in the world?\n\nWhat is 2+2?\n",
        &[],
    );
    let (stdout, stderr) = ok(&out);
    // One stats line per answered turn; the empty line is no turn.
    let turns: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("[prompt:"))
        .collect();
    assert_eq!(turns.len(), 2, "{stderr}");
    // The second turn reuses the first's cache.
    assert!(turns[1].contains("cached)"), "{}", turns[1]);
    // llama.cpp's greedy answer (shared/testdata/smollm2/greedy.json) has
    // no close call in its first 16 tokens.
    assert!(
        stdout.starts_with("The tallest mountain in the world is Mount Everest"),
        "{stdout}"
    );
    assert!(stdout.trim().lines().count() >= 2, "{stdout}");
    assert!(!stdout.contains("<|im_end|>"), "{stdout}");

    // /exit ends the conversation; what follows is not read.
    let out = chat(
        &[
            "-m", model, "--temp", "0", "-n", "2", "-c", "256", "--stats",
        ],
        "Hi\n/exit\nAre you still there?\n",
        &[],
    );
    let (_, stderr) = ok(&out);
    assert_eq!(stderr.matches("[prompt:").count(), 1, "{stderr}");
}

#[test]
fn chat_without_model_uses_the_cached_demo_model() {
    let cache = temp_dir("cache");
    std::fs::create_dir_all(cache.join("models")).unwrap();
    std::os::unix::fs::symlink(model_path(), cache.join("models").join(MODEL_NAME)).unwrap();
    // An empty PATH: were it to fetch, there would be no python3 to run.
    let no_path = temp_dir("no-path");
    let out = chat(
        &["--temp", "0", "-n", "12", "-c", "256", "--stats"],
        "What is the tallest mountain in the world?\n",
        &[
            ("SPINEL_CACHE", cache.as_os_str()),
            ("PATH", no_path.as_os_str()),
        ],
    );
    let (stdout, stderr) = ok(&out);
    assert!(stdout.contains("Mount Everest"), "{stdout}");
    assert!(!stderr.contains("fetching"), "{stderr}");
    std::fs::remove_dir_all(&cache).unwrap();

    // With nothing in the cache it tries to fetch, and says how it failed.
    let empty = temp_dir("empty-cache");
    let out = chat(
        &[],
        "Hi\n",
        &[
            ("SPINEL_CACHE", empty.as_os_str()),
            ("PATH", no_path.as_os_str()),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fetching") && stderr.contains("python3"),
        "{stderr}"
    );
    assert!(!empty.join("models").join(MODEL_NAME).exists());
    std::fs::remove_dir_all(&empty).unwrap();
    std::fs::remove_dir_all(&no_path).unwrap();
}

/// `chat --session FILE`: a second process goes on from the saved
/// conversation and cache, processing only the new turn, and answers as one
/// process holding both turns does; a file that is not a session is refused.
#[test]
fn chat_session_file_saves_and_restores_the_conversation() {
    let model = model_path();
    let model = model.to_str().unwrap();
    let dir = temp_dir("chat-session");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("talk.session");
    let file_arg = file.to_str().unwrap();
    let args = [
        "-m",
        model,
        "--temp",
        "0",
        "-n",
        "12",
        "-c",
        "512",
        "-t",
        "2",
        "--stats",
        "--session",
        file_arg,
    ];
    let (first, _) = ok(&chat(
        &args,
        "What is the tallest mountain in the world?\n",
        &[],
    ));
    assert!(file.is_file());
    let out = chat(&args, "How high is it?\n", &[]);
    let (second, stderr) = ok(&out);
    let stats = stderr
        .lines()
        .find(|l| l.starts_with("[prompt:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let cached: usize = stats
        .split(" cached)")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cached count in {stats}"));
    assert!(cached > 20, "{stats}");

    let (both, _) = ok(&chat(
        &[
            "-m", model, "--temp", "0", "-n", "12", "-c", "512", "-t", "2",
        ],
        "What is the tallest mountain in the world?\nHow high is it?\n",
        &[],
    ));
    assert_eq!(both, format!("{first}{second}"));

    std::fs::write(&file, b"not a session").unwrap();
    let out = chat(&args, "Hi\n", &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a Spinel session file"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
