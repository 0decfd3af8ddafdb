//! spinel-ffi's API from Rust, against the real demo model (and the shared
//! test data's tiny vision models for images): what the foreign bindings
//! call, minus the foreign side (ffi/tests/run-bindings-tests.sh runs
//! Python, Kotlin and Swift over the generated bindings).

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use spinel_ffi::{
    GenerationListener, GenerationParams, GenerationStats, LoadOptions, Model, SpinelError,
    StopReason,
};

fn model() -> Arc<Model> {
    let path = spinel_runtime::cache::test_model();
    let options = LoadOptions {
        threads: Some(2),
        context_length: Some(512),
        ..LoadOptions::default()
    };
    Model::load(path.to_str().unwrap().to_string(), options, None).unwrap()
}

/// Collects the tokens; sends the end (stats or error) down a channel.
struct Collector {
    tokens: Mutex<Vec<String>>,
    end: Mutex<mpsc::Sender<Result<GenerationStats, SpinelError>>>,
    /// Panics in `on_token` (a foreign listener that throws).
    throw: bool,
}

impl Collector {
    fn new(
        throw: bool,
    ) -> (
        Arc<Self>,
        mpsc::Receiver<Result<GenerationStats, SpinelError>>,
    ) {
        let (tx, rx) = mpsc::channel();
        let c = Collector {
            tokens: Mutex::new(Vec::new()),
            end: Mutex::new(tx),
            throw,
        };
        (Arc::new(c), rx)
    }

    fn text(&self) -> String {
        self.tokens.lock().unwrap().concat()
    }
}

impl GenerationListener for Collector {
    fn on_token(&self, text: String) {
        assert!(!self.throw, "listener bug");
        self.tokens.lock().unwrap().push(text);
    }
    fn on_complete(&self, stats: GenerationStats) {
        self.end.lock().unwrap().send(Ok(stats)).unwrap();
    }
    fn on_error(&self, error: SpinelError) {
        self.end.lock().unwrap().send(Err(error)).unwrap();
    }
}

fn greedy(max_tokens: u32) -> GenerationParams {
    GenerationParams {
        temperature: 0.0,
        max_tokens: Some(max_tokens),
        ..GenerationParams::default()
    }
}

#[test]
fn chat_streams_and_reports_stats() {
    let model = model();
    let info = model.info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.quantization, "Q4_1");
    assert_eq!(info.context_length, 512);
    assert!(info.chat_template.unwrap().contains("<|im_start|>"));
    assert!(!info.supports_images);

    let chat = model
        .chat_session(Some("You are a helpful assistant.".into()))
        .unwrap();
    let (listener, end) = Collector::new(false);
    let handle = chat
        .send(
            "What is the capital of France?".into(),
            greedy(24),
            listener.clone(),
            Vec::new(),
        )
        .unwrap();
    let stats = end.recv_timeout(Duration::from_secs(120)).unwrap().unwrap();
    handle.wait_for_completion();
    assert!(handle.is_finished());
    // The text itself is the model's business (runtime and cli tests check
    // it against llama.cpp); here: it arrived, and as the history says.
    assert!(!listener.text().trim().is_empty());
    assert!((1..=24).contains(&stats.generated_tokens));
    assert!(stats.tokens_per_second > 0.0);
    assert!(stats.time_to_first_token_seconds.unwrap() <= stats.total_seconds);
    assert_eq!(stats.image_encode_seconds, 0.0);
    let history = chat.history();
    assert_eq!(history.len(), 3);
    assert_eq!(history[2].content, listener.text());
}

#[test]
fn cancel_stops_the_answer() {
    let model = model();
    let chat = model.chat_session(None).unwrap();
    let (listener, end) = Collector::new(false);
    let handle = chat
        .send(
            "Write a long story about a dragon.".into(),
            greedy(400),
            listener.clone(),
            Vec::new(),
        )
        .unwrap();
    while listener.tokens.lock().unwrap().is_empty() && !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let canceller = Arc::clone(&handle);
    std::thread::spawn(move || canceller.cancel())
        .join()
        .unwrap();
    let stats = end.recv_timeout(Duration::from_secs(120)).unwrap().unwrap();
    assert_eq!(stats.stop_reason, StopReason::Cancelled);
    assert!(stats.generated_tokens < 400);
}

#[test]
fn a_panicking_listener_is_an_error_not_a_crash() {
    let model = model();
    let chat = model.chat_session(None).unwrap();
    let (listener, end) = Collector::new(true);
    chat.send("Hi".into(), greedy(8), listener, Vec::new())
        .unwrap();
    let result = end.recv_timeout(Duration::from_secs(120)).unwrap();
    assert!(
        matches!(result, Err(SpinelError::Internal { .. })),
        "{result:?}"
    );
    // The session is still usable.
    let (listener, end) = Collector::new(false);
    chat.send("Hi".into(), greedy(4), listener, Vec::new())
        .unwrap();
    end.recv_timeout(Duration::from_secs(120)).unwrap().unwrap();
}

#[test]
fn errors_are_typed() {
    let err = Model::load(
        "/nonexistent/model.gguf".into(),
        LoadOptions::default(),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, SpinelError::Io { .. }), "{err:?}");
    let not_a_model = env!("CARGO_MANIFEST_DIR").to_string() + "/Cargo.toml";
    let err = Model::load(not_a_model, LoadOptions::default(), None).unwrap_err();
    assert!(matches!(err, SpinelError::InvalidModel { .. }), "{err:?}");

    let model = model();
    let chat = model.chat_session(None).unwrap();
    let (listener, end) = Collector::new(false);
    let params = GenerationParams {
        stop: vec![String::new()],
        ..greedy(4)
    };
    chat.send("Hi".into(), params, listener, Vec::new())
        .unwrap();
    let result = end.recv_timeout(Duration::from_secs(120)).unwrap();
    assert!(
        matches!(result, Err(SpinelError::InvalidArgument { .. })),
        "{result:?}"
    );
    assert!(matches!(
        model.detokenize(vec![u32::MAX]),
        Err(SpinelError::Tokenizer { .. })
    ));
    // Tools must be a JSON array of declarations.
    let (listener, _) = Collector::new(false);
    for tools in ["not json", "{\"name\": \"f\"}"] {
        let params = GenerationParams {
            tools: Some(tools.into()),
            ..greedy(4)
        };
        let err = chat
            .send("Hi".into(), params, listener.clone(), Vec::new())
            .unwrap_err();
        assert!(
            matches!(err, SpinelError::InvalidArgument { .. }),
            "{err:?}"
        );
    }
}

#[test]
fn tokenize_round_trips() {
    let model = model();
    let ids = model.tokenize("Hello, world!".into(), false).unwrap();
    assert!(ids.len() > 1);
    assert_eq!(model.detokenize(ids).unwrap(), "Hello, world!");
}

#[test]
fn kv_cache_types_size_the_context_and_chat() {
    use spinel_ffi::KvCacheType;
    let path = spinel_runtime::cache::test_model();
    // SmolLM2: 30 layers × 3 KV heads of 64; a position takes 68 bytes per
    // head as Q8_0 keys, 36 as Q4_0 values, 128 as f16. The sessions'
    // context is what fits in the KV cache's share of the memory budget
    // (half of what the ~90 MiB of weights leave of it: the same bytes
    // whatever the types, below the 8192 tokens the model was trained for
    // with a 160 MiB budget).
    let load = |k: Option<KvCacheType>, v: Option<KvCacheType>| {
        let options = LoadOptions {
            threads: Some(2),
            memory_budget: Some(160 << 20),
            kv_cache_type: k,
            kv_cache_type_v: v,
            ..LoadOptions::default()
        };
        Model::load(path.to_str().unwrap().to_string(), options, None).unwrap()
    };
    let mixed = load(Some(KvCacheType::Q8_0), Some(KvCacheType::Q4_0));
    let sized = |m: &Model, per_head: u64| {
        let n = u64::from(m.info().context_length);
        assert!(n < 8192, "{n}");
        (n, n * 30 * 3 * per_head)
    };
    let (n_mixed, bytes) = sized(&mixed, 68 + 36);
    let (n_f16, bytes_f16) = sized(&load(None, None), 128 + 128);
    let (n_q4, bytes_q4) = sized(&load(Some(KvCacheType::Q4_0), None), 36 + 36);
    assert!(
        n_f16 < n_mixed && n_mixed < n_q4,
        "{n_f16} {n_mixed} {n_q4}"
    );
    // Each fills the same bytes, to within one position.
    for b in [bytes_f16, bytes_q4] {
        assert!(b.abs_diff(bytes) < 30 * 3 * 256, "{b} vs {bytes}");
    }

    let chat = mixed.chat_session(None).unwrap();
    let (listener, end) = Collector::new(false);
    chat.send("Hi".into(), greedy(8), listener.clone(), Vec::new())
        .unwrap();
    let stats = end.recv_timeout(Duration::from_secs(120)).unwrap().unwrap();
    assert!(stats.generated_tokens >= 1);
    assert!(!listener.text().is_empty());
}

/// One greedy turn, waited for: (answer, stats).
fn turn(chat: &spinel_ffi::ChatSession, message: &str) -> (String, GenerationStats) {
    let (listener, end) = Collector::new(false);
    chat.send(message.into(), greedy(16), listener.clone(), Vec::new())
        .unwrap();
    let stats = end.recv_timeout(Duration::from_secs(120)).unwrap().unwrap();
    (listener.text(), stats)
}

/// A chat saved to a file and restored (the app killed in between) holds
/// its conversation and KV cache: its next turn processes only the new
/// message and answers as the original session does. Files of another KV
/// type, truncated or corrupted files are `SessionFile` errors.
#[test]
fn saved_chats_restore_and_bad_files_are_refused() {
    let model = model();
    let dir = std::env::temp_dir().join(format!("spinel-ffi-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("chat.session");
    let path = file.to_str().unwrap().to_string();

    let chat = model.chat_session(Some("Answer briefly.".into())).unwrap();
    turn(&chat, "Name a colour.");
    chat.save(path.clone()).unwrap();
    assert!(
        !dir.join("chat.session.part").exists(),
        "the temporary file stays"
    );
    let restored = model.restore_session(path.clone()).unwrap();
    assert_eq!(restored.history(), chat.history());

    let (want, want_stats) = turn(&chat, "And a fruit?");
    let (got, got_stats) = turn(&restored, "And a fruit?");
    assert_eq!(got, want);
    assert_eq!(got_stats.cached_tokens, want_stats.cached_tokens);
    assert!(got_stats.cached_tokens > 0 && got_stats.cached_tokens < got_stats.prompt_tokens);

    let bytes = std::fs::read(&file).unwrap();
    let bad = |name: &str, content: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        let err = model
            .restore_session(p.to_str().unwrap().to_string())
            .unwrap_err();
        assert!(
            matches!(err, SpinelError::SessionFile { .. }),
            "{name}: {err:?}"
        );
        err.to_string()
    };
    assert!(bad("truncated", &bytes[..bytes.len() / 2]).contains("truncated"));
    let mut flipped = bytes.clone();
    let mid = flipped.len() - 100;
    flipped[mid] ^= 1;
    assert!(bad("corrupted", &flipped).contains("corrupted"));
    assert!(bad("not-a-session", b"# notes, not a saved chat").contains("not a Spinel session"));

    // Another KV type: a model loaded with Q8_0 keys refuses an F16 file.
    let q8 = Model::load(
        spinel_runtime::cache::test_model()
            .to_str()
            .unwrap()
            .to_string(),
        LoadOptions {
            threads: Some(2),
            context_length: Some(512),
            kv_cache_type: Some(spinel_ffi::KvCacheType::Q8_0),
            ..LoadOptions::default()
        },
        None,
    )
    .unwrap();
    let err = q8.restore_session(path).unwrap_err();
    assert!(matches!(err, SpinelError::SessionFile { .. }), "{err:?}");
    assert!(err.to_string().contains("cache type"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `trim_memory` gives back an idle session's KV cache and buffers
/// (memory use drops), saving it first where asked; the session still
/// answers, its conversation processed again, as a new session given the
/// same messages does.
#[test]
fn trimming_memory_frees_idle_sessions_which_still_answer() {
    use spinel_ffi::TrimLevel;
    let model = model();
    let dir = std::env::temp_dir().join(format!("spinel-ffi-trim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("trimmed.session");

    let chat = model.chat_session(Some("Answer briefly.".into())).unwrap();
    let twin = model.chat_session(Some("Answer briefly.".into())).unwrap();
    for c in [&chat, &twin] {
        turn(c, "Name a colour.");
    }
    let before = model.memory_usage();
    assert!(before.weights_resident_bytes > 0, "{before:?}");
    assert!(
        before.kv_cache_bytes > 0 && before.scratch_bytes > 0,
        "{before:?}"
    );

    chat.set_save_on_trim(Some(saved.to_str().unwrap().to_string()));
    let freed = model.trim_memory(TrimLevel::Background).unwrap();
    let after = model.memory_usage();
    assert!(freed > 0, "nothing freed");
    // Both sessions were idle: both caches are gone.
    assert_eq!(after.kv_cache_bytes, 0, "{after:?}");
    assert!(
        after.scratch_bytes < before.scratch_bytes,
        "{before:?} → {after:?}"
    );
    assert!(saved.exists(), "not saved before trimming");

    // The trimmed session processes its whole conversation again, as a new
    // session given the same messages does.
    let (want, _) = {
        let fresh = model.chat_session(None).unwrap();
        for m in chat.history() {
            fresh.add_message(m);
        }
        turn(&fresh, "And a fruit?")
    };
    let (got, stats) = turn(&chat, "And a fruit?");
    assert_eq!(got, want);
    assert_eq!(stats.cached_tokens, 0, "the cache was given back");
    assert!(model.memory_usage().kv_cache_bytes > 0);

    // Critical also drops streamed weights (none here); the session was
    // saved again first, with its second turn.
    model.trim_memory(TrimLevel::Critical).unwrap();
    let restored = model
        .restore_session(saved.to_str().unwrap().to_string())
        .unwrap();
    assert_eq!(restored.history().len(), 5);
    assert_eq!(restored.history(), chat.history());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn answer(
    chat: &spinel_ffi::ChatSession,
    message: &str,
    params: GenerationParams,
) -> (String, GenerationStats) {
    let (listener, end) = Collector::new(false);
    chat.send(message.into(), params, listener.clone(), Vec::new())
        .unwrap();
    let stats = end.recv_timeout(Duration::from_secs(120)).unwrap().unwrap();
    (listener.text(), stats)
}

/// `json_schema` makes the answer one JSON document of the schema (checked
/// by an independent validator); `grammar` takes GBNF; bad ones are
/// `InvalidArgument` before anything runs.
#[test]
fn json_schema_and_grammar_constrain_the_answer() {
    let model = model();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "country": {"type": "string", "maxLength": 20},
            "population": {"type": "integer", "minimum": 0}
        },
        "required": ["city", "country", "population"]
    });
    let chat = model.chat_session(None).unwrap();
    let params = GenerationParams {
        json_schema: Some(schema.to_string()),
        max_tokens: Some(120),
        ..greedy(120)
    };
    let (text, stats) = answer(&chat, "Tell me about Paris as JSON.", params);
    assert_eq!(stats.stop_reason, StopReason::EndOfGeneration, "{text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(validator.is_valid(&doc), "{doc}");

    let params = GenerationParams {
        grammar: Some("root ::= (\"yes\" | \"no\") \".\"".into()),
        ..greedy(8)
    };
    let (text, _) = answer(&chat, "Is water wet?", params);
    assert!(text == "yes." || text == "no.", "{text:?}");

    for params in [
        GenerationParams {
            json_schema: Some("{not json".into()),
            ..greedy(8)
        },
        GenerationParams {
            json_schema: Some(
                r#"{"type": "object", "pattern": "x", "properties": {"a": {"not": {}}}}"#.into(),
            ),
            ..greedy(8)
        },
        GenerationParams {
            grammar: Some("root ::= missing".into()),
            ..greedy(8)
        },
        GenerationParams {
            grammar: Some("root ::= \"a\"".into()),
            json_schema: Some("{}".into()),
            ..greedy(8)
        },
    ] {
        let (listener, _end) = Collector::new(false);
        let e = chat
            .send("hi".into(), params, listener, Vec::new())
            .unwrap_err();
        assert!(matches!(e, SpinelError::InvalidArgument { .. }), "{e:?}");
    }
}

/// Prompt lookup and a draft model leave the greedy answer as it is and
/// report their drafts.
#[test]
fn speculative_decoding_keeps_the_answer() {
    let model = model();
    let question = "Repeat exactly: the cat sat on the mat, the cat sat on the mat.";
    let plain = answer(&model.chat_session(None).unwrap(), question, greedy(40));
    let lookup = GenerationParams {
        lookup_ngram: Some(2),
        draft_max: 8,
        ..greedy(40)
    };
    let fast = answer(&model.chat_session(None).unwrap(), question, lookup);
    assert_eq!(plain.0, fast.0);
    assert!(
        fast.1.drafted_tokens > 0 && fast.1.accepted_tokens > 0,
        "{:?}",
        fast.1
    );

    let chat = model.chat_session(None).unwrap();
    chat.set_draft_model(Some(model.clone())).unwrap();
    let drafted = answer(&chat, question, greedy(40));
    assert_eq!(plain.0, drafted.0);
    assert!(drafted.1.drafted_tokens > 0, "{:?}", drafted.1);
    chat.set_draft_model(None).unwrap();
    let again = answer(&model.chat_session(None).unwrap(), question, greedy(40));
    assert_eq!(again.1.drafted_tokens, 0);
}

const WEATHER_TOOLS: &str = r#"[{"type": "function", "function": {"name": "get_weather",
    "description": "The weather in a city", "parameters": {"type": "object",
    "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]"#;

/// A Llama 3.1 JSON tool call (forced by a grammar: SmolLM2 does not call
/// tools by itself) comes back parsed in the stats.
const TOOL_CALL_GBNF: &str = r#"root ::= "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"" [A-Za-z ]{1,20} "\"}}""#;

#[test]
fn tool_calls_come_back_parsed() {
    let model = model();
    let chat = model.chat_session(None).unwrap();
    let params = GenerationParams {
        tools: Some(WEATHER_TOOLS.into()),
        grammar: Some(TOOL_CALL_GBNF.into()),
        ..greedy(40)
    };
    let (text, stats) = answer(&chat, "What is the weather in Paris?", params);
    assert_eq!(stats.tool_calls.len(), 1, "{text}");
    let call = &stats.tool_calls[0];
    assert_eq!(call.name, "get_weather");
    let args: serde_json::Value = serde_json::from_str(&call.arguments_json).unwrap();
    assert!(args["city"].is_string(), "{args}");
}

/// The shared test data (`../shared/testdata`, or `SPINEL_TESTDATA`).
fn testdata() -> std::path::PathBuf {
    match std::env::var_os("SPINEL_TESTDATA") {
        Some(p) => p.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
    }
}

fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(testdata().join("vision/images").join(name)).unwrap()
}

/// A tiny vision dev model of the shared test data (`mllama`: Llama 3.2
/// Vision, `llama4_vision`: Llama 4), converted to F32 once per test run
/// into cargo's scratch folder for tests: (text GGUF, mmproj GGUF). Each
/// file is written beside its name and renamed into place, so a run beside
/// this one never maps a half-written file.
fn vision_files(name: &str) -> (String, String) {
    use spinel_runtime::convert::{Conversion, ConvertOptions, OutType};
    use std::collections::HashMap;
    static FILES: Mutex<Option<HashMap<String, (String, String)>>> = Mutex::new(None);
    let mut files = FILES.lock().unwrap();
    let files = files.get_or_insert_with(HashMap::new);
    if let Some(f) = files.get(name) {
        return f.clone();
    }
    let opts = ConvertOptions {
        outtype: OutType::F32,
        name: None,
    };
    let conv = Conversion::plan(&testdata().join("vision/dev").join(name), &opts).unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ffi-vision");
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join(format!("{name}.gguf"));
    let mmproj = dir.join(format!("{name}.mmproj.gguf"));
    let part = |p: &std::path::Path| p.with_extension(format!("part{}", std::process::id()));
    conv.write(&part(&text), &mut |_| {}).unwrap();
    conv.write_mmproj(&part(&mmproj), &mut |_| {})
        .unwrap()
        .expect("an mmproj");
    for p in [&text, &mmproj] {
        std::fs::rename(part(p), p).unwrap();
    }
    let path = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
    let f = (path(text), path(mmproj));
    files.insert(name.to_string(), f.clone());
    f
}

fn vision_options(mmproj: Option<&str>) -> LoadOptions {
    LoadOptions {
        threads: Some(2),
        context_length: Some(512),
        mmproj_path: mmproj.map(str::to_string),
        ..LoadOptions::default()
    }
}

fn send_images(
    chat: &spinel_ffi::ChatSession,
    message: &str,
    images: Vec<Vec<u8>>,
) -> (String, Result<GenerationStats, SpinelError>) {
    let (listener, end) = Collector::new(false);
    chat.send(message.into(), greedy(8), listener.clone(), images)
        .unwrap();
    let result = end.recv_timeout(Duration::from_secs(120)).unwrap();
    (listener.text(), result)
}

/// The greedy answer (8 tokens) of the runtime's own
/// `Session::chat_with_images` to `question` with the image `png`, on a
/// session sized as the SDK's: (text, generated tokens, prompt tokens).
fn runtime_answer(text: &str, mmproj: &str, question: &str, png: &[u8]) -> (String, usize, usize) {
    use spinel_runtime::engine::{Engine, GenerateOptions, SessionOptions};
    use spinel_runtime::model::KvType;
    use spinel_runtime::sampling::SamplingParams;
    let mut engine = Engine::load(text).unwrap();
    engine.load_mmproj(mmproj).unwrap();
    let engine = Arc::new(engine);
    let session_options = SessionOptions {
        n_ctx: Some(512),
        kv_type: KvType::F16,
        n_threads: Some(2),
        ..SessionOptions::default()
    };
    let mut session = engine.session(&session_options).unwrap();
    let opts = GenerateOptions {
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_tokens: Some(8),
        ..GenerateOptions::default()
    };
    let image = spinel_runtime::vision::decode_image(png).unwrap();
    let g = session
        .chat_with_images(question, vec![image], &opts, |_| {})
        .unwrap();
    (g.text, g.generated_ids.len(), g.prompt_ids.len())
}

/// An image sent with a message reaches the vision tower, for Llama 3.2
/// Vision and Llama 4: the greedy answer is the runtime's own
/// `Session::chat_with_images` answer for the same bytes.
#[test]
fn images_give_the_runtimes_answer() {
    let question = "What is in this image?";
    for (name, image, arch) in [
        ("mllama", "landscape_300x200.png", "mllama"),
        ("llama4_vision", "portrait_160x400.png", "llama4"),
    ] {
        let (text, mmproj) = vision_files(name);
        let png = image_bytes(image);
        let model = Model::load(text.clone(), vision_options(Some(&mmproj)), None).unwrap();
        let info = model.info();
        assert!(
            info.supports_images && info.architecture == arch,
            "{info:?}"
        );
        let chat = model.chat_session(None).unwrap();
        let (answer, stats) = send_images(&chat, question, vec![png.clone()]);
        let stats = stats.unwrap();
        assert!(stats.image_encode_seconds > 0.0, "{name}: {stats:?}");
        assert!(!answer.is_empty(), "{name}: {stats:?}");
        let want = runtime_answer(&text, &mmproj, question, &png);
        assert_eq!(
            (
                answer,
                stats.generated_tokens as usize,
                stats.prompt_tokens as usize
            ),
            want,
            "{name}"
        );
    }
}

/// The conversation keeps its images: the rendered prompt holds the
/// image's marker (a chat without one has none and encodes nothing), the
/// next turn (text only) sees it through the cache it continues (the image
/// is not encoded again), and the chat cannot be saved.
#[test]
fn chats_keep_their_images() {
    let (text, mmproj) = vision_files("mllama");
    let png = image_bytes("landscape_300x200.png");
    let question = "What is in this image?";
    let model = Model::load(text, vision_options(Some(&mmproj)), None).unwrap();
    let chat = model.chat_session(None).unwrap();
    let (_, stats) = send_images(&chat, question, vec![png]);
    let stats = stats.unwrap();
    assert!(
        chat.render_prompt()
            .unwrap()
            .contains("<|image|>What is in")
    );
    let plain = model.chat_session(None).unwrap();
    let (_, no_image) = send_images(&plain, question, Vec::new());
    assert_eq!(no_image.unwrap().image_encode_seconds, 0.0);
    assert!(!plain.render_prompt().unwrap().contains("<|image|>"));

    let (_, next) = send_images(&chat, "And?", Vec::new());
    let next = next.unwrap();
    assert_eq!(next.image_encode_seconds, 0.0, "{next:?}");
    assert!(next.prompt_tokens > stats.prompt_tokens);
    assert_eq!(chat.history().len(), 4);
    // A chat with images is not saved (the file would lack them).
    let saved = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ffi-vision-chat.session");
    let err = chat.save(saved.to_str().unwrap().to_string()).unwrap_err();
    assert!(matches!(err, SpinelError::SessionFile { .. }), "{err:?}");
}

/// Corrupt, truncated, unknown and oversized images, and images sent to a
/// model without a vision tower, end the turn with `InvalidArgument`
/// carrying the runtime's message and leave the history as it was; an
/// mmproj that does not fit the model fails the load with `InvalidModel`.
#[test]
fn bad_images_and_text_only_models_are_refused() {
    let (text, mmproj) = vision_files("mllama");
    let (text, mmproj) = (&text, &mmproj);
    let png = image_bytes("landscape_300x200.png");
    let jpg = image_bytes("small_64x48.jpg");
    // A JPEG whose frame header claims 65535×65535: over the pixel cap.
    let mut bomb = jpg.clone();
    let sof = (0..bomb.len() - 1)
        .find(|&i| bomb[i] == 0xFF && (bomb[i + 1] == 0xC0 || bomb[i + 1] == 0xC2))
        .expect("a SOF marker");
    bomb[sof + 5..sof + 9].copy_from_slice(&[0xFF; 4]);

    let model = Model::load(text.clone(), vision_options(Some(mmproj)), None).unwrap();
    let chat = model.chat_session(None).unwrap();
    for (images, says) in [
        (vec![png[..png.len() / 2].to_vec()], "corrupt or truncated"),
        (
            vec![png.clone(), jpg[..40].to_vec()],
            "corrupt or truncated",
        ),
        (vec![b"GIF89a....".to_vec()], "not a PNG or JPEG"),
        (vec![bomb], "over the cap"),
    ] {
        let (answer, result) = send_images(&chat, "What is this?", images);
        match result {
            Err(SpinelError::InvalidArgument { reason }) => {
                assert!(reason.contains(says), "{reason}")
            }
            other => panic!("expected InvalidArgument ({says}), got {other:?}"),
        }
        assert!(answer.is_empty());
        assert!(chat.history().is_empty(), "{:?}", chat.history());
    }

    // The same model without its mmproj, and the text-only demo model.
    let demo = spinel_runtime::cache::test_model();
    for path in [text.clone(), demo.to_str().unwrap().to_string()] {
        let model = Model::load(path, vision_options(None), None).unwrap();
        assert!(!model.info().supports_images);
        let chat = model.chat_session(None).unwrap();
        let (_, result) = send_images(&chat, "What is this?", vec![png.clone()]);
        match result {
            Err(SpinelError::InvalidArgument { reason }) => {
                assert!(reason.contains("images need a vision model"), "{reason}")
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        assert!(chat.history().is_empty());
    }

    // An mmproj on a text-only model, a model file given as an mmproj, a
    // missing mmproj.
    let demo = demo.to_str().unwrap().to_string();
    let missing = format!("{mmproj}.missing");
    for (model, mmproj) in [(&demo, mmproj), (text, text), (text, &missing)] {
        let err = Model::load(model.clone(), vision_options(Some(mmproj)), None).unwrap_err();
        assert!(
            matches!(err, SpinelError::InvalidModel { .. }),
            "{model} + {mmproj}: {err:?}"
        );
        if *model == demo {
            assert!(err.to_string().contains("text-only"), "{err}");
        }
    }
}
