//! Chat templates against references:
//!
//! * `shared/testdata/chat_template_renders.json`: templates rendered by
//!   transformers' `apply_chat_template` — reproduced exactly;
//! * the real model's own `tokenizer.chat_template` (SmolLM2-135M-Instruct
//!   GGUF) renders ChatML exactly as transformers does;
//! * `tests/chat_compat/`: harder templates (tools, `tojson`, Python string
//!   methods, macros, namespaces, `raise_exception`, `{% generation %}`)
//!   against `expected.json`, made by `chat_reference.py` with Jinja2 set up
//!   as transformers sets it up;
//! * the built-in fallbacks, fallback choice from GGUF metadata, and errors.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value as Json;
use spinel_runtime::chat::{
    BuiltinTemplate, ChatTemplate, ChatTemplateError, Message, TemplateOrigin,
};
use spinel_runtime::gguf::{Array, GgufFile, GgufWriter, MappedGguf, Value};

const RENDERS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/chat_template_renders.json"
);
const COMPAT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chat_compat");

fn read_json(path: impl AsRef<Path>) -> Json {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn messages(v: &Json) -> Vec<Message> {
    v.as_array()
        .expect("messages array")
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn s(v: &Json) -> &str {
    v.as_str().expect("a JSON string")
}

/// (template name, template, bos, eos, cases) of the transformers renders.
fn renders() -> Vec<(String, Json)> {
    let all = read_json(RENDERS);
    let renders = all["renders"].as_object().expect("renders object");
    assert!(
        renders.len() >= 3,
        "expected at least llama3, llama3_1, smollm2"
    );
    renders
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn transformers_renders_reproduced_exactly() {
    let mut checked = 0;
    for (name, r) in renders() {
        let t = ChatTemplate::new(
            s(&r["chat_template"]),
            s(&r["bos_token"]),
            s(&r["eos_token"]),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.origin(), TemplateOrigin::Jinja);
        for case in r["cases"].as_array().unwrap() {
            let agp = case["add_generation_prompt"].as_bool().unwrap();
            let want = s(&case["rendered"]);
            let label = format!("{name} / {} / agp={agp}", s(&case["conversation"]));
            let got = t
                .render(&messages(&case["messages"]), agp)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(got, want, "{label}");
            // The JSON entry point gives the same text.
            let got = t
                .render_json(&case["messages"], agp, &serde_json::Map::new())
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(got, want, "{label} (render_json)");
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} cases");
}

fn model_path() -> PathBuf {
    spinel_runtime::cache::test_model()
}

#[test]
fn smollm2_gguf_template_renders_chatml() {
    let path = model_path();
    assert!(
        path.is_file(),
        "the real model {} is missing: run scripts/fetch-model.sh (or set SPINEL_TEST_MODEL)",
        path.display()
    );
    // SAFETY: a model file in the test cache; nothing writes to it.
    let gguf =
        unsafe { MappedGguf::open(&path) }.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let t = ChatTemplate::from_gguf(gguf.file()).expect("chat template from the GGUF");
    assert_eq!(
        t.origin(),
        TemplateOrigin::Jinja,
        "the file has its own template"
    );
    assert_eq!(t.bos_token(), "<|im_start|>");
    assert_eq!(t.eos_token(), "<|im_end|>");

    // Transformers rendered this very template for the same conversations.
    let smollm2 = renders()
        .into_iter()
        .find(|(k, _)| k == "smollm2")
        .expect("smollm2 renders")
        .1;
    assert_eq!(
        t.source(),
        s(&smollm2["chat_template"]),
        "the GGUF holds the HF template"
    );
    for case in smollm2["cases"].as_array().unwrap() {
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&messages(&case["messages"]), agp).unwrap();
        assert_eq!(
            got,
            s(&case["rendered"]),
            "{} agp={agp}",
            s(&case["conversation"])
        );
    }

    // ChatML shape: every turn is <|im_start|>role\n…<|im_end|>\n, and the
    // default system prompt comes first when there is no system message.
    let got = t
        .render(&[Message::user("What is the capital of France?")], true)
        .unwrap();
    assert_eq!(
        got,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
}

fn pinned(mut t: ChatTemplate) -> ChatTemplate {
    // 2024-07-26 09:05:07 UTC, as chat_reference.py pins strftime_now.
    t.set_time(Some(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_721_952_000 + 9 * 3600 + 5 * 60 + 7),
    ));
    t
}

#[test]
fn compat_templates_match_jinja2() {
    let cases = read_json(format!("{COMPAT}/cases.json"));
    let expected = read_json(format!("{COMPAT}/expected.json"));
    let cases = cases.as_array().unwrap();
    let expected = expected["cases"].as_array().unwrap();
    assert_eq!(cases.len(), expected.len());
    let (mut renders, mut raises) = (0, 0);
    for (case, want) in cases.iter().zip(expected) {
        let name = s(&case["name"]);
        assert_eq!(name, s(&want["name"]));
        let src = std::fs::read_to_string(format!("{COMPAT}/{}", s(&case["template"]))).unwrap();
        let t =
            pinned(ChatTemplate::new(src, s(&case["bos_token"]), s(&case["eos_token"])).unwrap());
        let extra = case
            .get("extra")
            .and_then(Json::as_object)
            .cloned()
            .unwrap_or_default();
        let got = t.render_json(
            &case["messages"],
            case["add_generation_prompt"].as_bool().unwrap(),
            &extra,
        );
        match (got, want.get("rendered"), want.get("error")) {
            (Ok(text), Some(w), None) => {
                assert_eq!(text, s(w), "{name}");
                renders += 1;
            }
            (Err(ChatTemplateError::Raised { message }), None, Some(w)) => {
                assert_eq!(message, s(w), "{name}");
                raises += 1;
            }
            (got, _, _) => panic!("{name}: got {got:?}, want {want}"),
        }
    }
    assert!(
        renders >= 6 && raises >= 3,
        "{renders} renders, {raises} raises"
    );
}

/// Whole requests as JSON text: key order is kept, so `tojson` of the tool
/// schema lists keys as the request does (and as Python does).
#[test]
fn json_requests_match_jinja2_key_order_included() {
    let expected = read_json(format!("{COMPAT}/expected.json"));
    let requests = expected["requests"].as_array().unwrap();
    assert!(!requests.is_empty());
    for r in requests {
        let text = std::fs::read_to_string(format!("{COMPAT}/{}", s(&r["file"]))).unwrap();
        let src = std::fs::read_to_string(format!("{COMPAT}/{}", s(&r["template"]))).unwrap();
        // bos_token / eos_token come from the request.
        let t = pinned(ChatTemplate::new(src, "", "").unwrap());
        let got = t
            .render_json_text(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", s(&r["file"])));
        assert_eq!(got, s(&r["rendered"]), "{}", s(&r["file"]));
        assert!(got.contains("{\n    \"type\": \"function\",\n    \"function\""));
    }
}

#[test]
fn json_request_errors_are_named() {
    let t = ChatTemplate::builtin(BuiltinTemplate::ChatMl, "", "");
    assert_eq!(
        t.render_json_text(
            r#"{"messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": true}"#
        )
        .unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render_json_text(r#"{"messages": []}"#).unwrap(),
        "",
        "add_generation_prompt defaults to false"
    );
    for bad in [
        "not json",
        "[]",
        r#"{"tools": []}"#,
        r#"{"messages": {}}"#,
        r#"{"messages": ["user"]}"#,
        r#"{"messages": [], "add_generation_prompt": "yes"}"#,
        r#"{"messages": []} trailing"#,
    ] {
        match t.render_json_text(bad) {
            Err(e @ ChatTemplateError::InvalidInput { .. }) => {
                assert!(
                    e.to_string().starts_with("invalid chat template input"),
                    "{e}"
                )
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

fn conversation() -> Vec<Message> {
    vec![
        Message::system("You are a helpful assistant."),
        Message::user("Hello! What is 2+2?"),
        Message::assistant("2+2 = 4."),
        Message::user("  And 3+3?  \n"),
    ]
}

#[test]
fn builtin_llama3_is_metas_template() {
    let llama3_1 = renders()
        .into_iter()
        .find(|(k, _)| k == "llama3_1")
        .expect("llama3_1 renders")
        .1;
    let t = ChatTemplate::builtin(
        BuiltinTemplate::Llama3,
        s(&llama3_1["bos_token"]),
        s(&llama3_1["eos_token"]),
    );
    assert_eq!(t.origin(), TemplateOrigin::Builtin(BuiltinTemplate::Llama3));
    for case in llama3_1["cases"].as_array().unwrap() {
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&messages(&case["messages"]), agp).unwrap();
        assert_eq!(got, s(&case["rendered"]));
    }
}

#[test]
fn builtin_chatml() {
    let t = ChatTemplate::builtin(BuiltinTemplate::ChatMl, "", "<|im_end|>");
    assert_eq!(
        t.render(&conversation(), true).unwrap(),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHello! What is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n2+2 = 4.<|im_end|>\n\
         <|im_start|>user\n  And 3+3?  \n<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(&[Message::user("Hi")], false).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn builtin_llama2_inst() {
    // Expected text: Meta's Llama-2-chat template rendered by Jinja2.
    let t = ChatTemplate::builtin(BuiltinTemplate::Llama2, "<s>", "</s>");
    let want = "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello! What is 2+2? [/INST] \
                2+2 = 4. </s><s>[INST] And 3+3? [/INST]";
    assert_eq!(t.render(&conversation(), true).unwrap(), want);
    assert_eq!(
        t.render(&conversation(), false).unwrap(),
        want,
        "[/INST] is the prompt"
    );
    assert_eq!(
        t.render(&conversation()[1..], true).unwrap(),
        "<s>[INST] Hello! What is 2+2? [/INST] 2+2 = 4. </s><s>[INST] And 3+3? [/INST]"
    );
    // Roles must alternate.
    match t.render(&[Message::user("a"), Message::user("b")], true) {
        Err(ChatTemplateError::Raised { message }) => assert_eq!(
            message,
            "Conversation roles must alternate user/assistant/user/assistant/..."
        ),
        other => panic!("{other:?}"),
    }
}

/// A GGUF with a vocabulary, special ids and optionally a template.
fn gguf(
    model: &str,
    tokens: &[&str],
    bos: u32,
    eos: u32,
    template: Option<Value<'static>>,
) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama").unwrap();
    w.add_kv("tokenizer.ggml.model", model).unwrap();
    w.add_kv(
        "tokenizer.ggml.tokens",
        Array::from_strings(tokens.iter().copied()),
    )
    .unwrap();
    w.add_kv("tokenizer.ggml.bos_token_id", bos).unwrap();
    w.add_kv("tokenizer.ggml.eos_token_id", eos).unwrap();
    if let Some(t) = template {
        w.add_kv("tokenizer.chat_template", t).unwrap();
    }
    w.to_bytes()
}

/// (tokenizer model, tokens, bos id, eos id, expected fallback, its render)
type FallbackCase = (
    &'static str,
    &'static [&'static str],
    u32,
    u32,
    BuiltinTemplate,
    &'static str,
);

#[test]
fn gguf_without_template_gets_the_fallback_for_its_vocab() {
    let cases: [FallbackCase; 3] = [
        (
            "gpt2",
            &[
                "<|begin_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ],
            0,
            3,
            BuiltinTemplate::Llama3,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        (
            "gpt2",
            &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            1,
            2,
            BuiltinTemplate::ChatMl,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            "llama",
            &["<unk>", "<s>", "</s>"],
            1,
            2,
            BuiltinTemplate::Llama2,
            "<s>[INST] Hi [/INST]",
        ),
    ];
    for (model, tokens, bos, eos, which, want) in cases {
        let bytes = gguf(model, tokens, bos, eos, None);
        let file = GgufFile::parse(&bytes).unwrap();
        let t = ChatTemplate::from_gguf(&file).unwrap();
        assert_eq!(t.origin(), TemplateOrigin::Builtin(which));
        assert_eq!(
            (t.bos_token(), t.eos_token()),
            (tokens[bos as usize], tokens[eos as usize])
        );
        assert_eq!(
            t.render(&[Message::user("Hi")], true).unwrap(),
            want,
            "{which:?}"
        );
    }
}

#[test]
fn gguf_errors_are_named() {
    // A template stored as a number.
    let bytes = gguf("gpt2", &["a", "b"], 0, 1, Some(Value::U32(7)));
    let file = GgufFile::parse(&bytes).unwrap();
    assert!(matches!(
        ChatTemplate::from_gguf(&file),
        Err(ChatTemplateError::Gguf(_))
    ));
    // A special token id outside the vocabulary.
    let bytes = gguf("gpt2", &["a", "b"], 0, 5, None);
    let file = GgufFile::parse(&bytes).unwrap();
    match ChatTemplate::from_gguf(&file) {
        Err(
            e @ ChatTemplateError::SpecialTokenOutOfRange {
                id: 5,
                vocab_size: 2,
                ..
            },
        ) => {
            assert!(e.to_string().contains("tokenizer.ggml.eos_token_id"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // A template in the file that does not parse.
    let bytes = gguf(
        "gpt2",
        &["a", "b"],
        0,
        1,
        Some(Value::from("{% for m in messages %}")),
    );
    let file = GgufFile::parse(&bytes).unwrap();
    assert!(matches!(
        ChatTemplate::from_gguf(&file),
        Err(ChatTemplateError::Syntax { .. })
    ));
}

#[test]
fn template_errors_are_named_with_their_message() {
    match ChatTemplate::new("line one\n{% if messages %}\n{{ x ", "", "") {
        Err(e @ ChatTemplateError::Syntax { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("does not parse") && msg.contains(":3"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    let t = ChatTemplate::new(
        "{{ raise_exception('No system messages, please') }}",
        "",
        "",
    )
    .unwrap();
    match t.render(&[], true) {
        Err(ChatTemplateError::Raised { message }) => {
            assert_eq!(message, "No system messages, please")
        }
        other => panic!("{other:?}"),
    }
    let t = ChatTemplate::new("{{ messages | no_such_filter }}", "", "")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        t.render(&[], true),
        Err(ChatTemplateError::Render { .. })
    ));
    let t = ChatTemplate::new("{{ messages[0].content.no_such_method() }}", "", "").unwrap();
    assert!(matches!(
        t.render(&[Message::user("x")], true),
        Err(ChatTemplateError::Render { .. })
    ));
    // A runaway template runs out of fuel instead of hanging.
    let t = ChatTemplate::new(
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    match t.render(&[], true) {
        Err(ChatTemplateError::Render { message }) => {
            assert!(message.contains("fuel"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // render_json wants an array of objects.
    let t = ChatTemplate::builtin(BuiltinTemplate::ChatMl, "", "");
    for bad in [
        serde_json::json!({"role": "user"}),
        serde_json::json!(["user"]),
    ] {
        assert!(matches!(
            t.render_json(&bad, true, &serde_json::Map::new()),
            Err(ChatTemplateError::InvalidInput { .. })
        ));
    }
}

#[test]
fn extra_variables_override_defaults() {
    let t = ChatTemplate::new(
        "{{ bos_token }}|{{ tools }}|{{ documents is none }}|{{ custom }}",
        "<s>",
        "</s>",
    )
    .unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "<s>|None|True|");
    let mut extra = serde_json::Map::new();
    extra.insert("bos_token".into(), "<B>".into());
    extra.insert("custom".into(), serde_json::json!([1, "two"]));
    assert_eq!(
        t.render_json(&serde_json::json!([]), false, &extra)
            .unwrap(),
        // Printed as Python prints them.
        "<B>|None|True|[1, 'two']"
    );
}
