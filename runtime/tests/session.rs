//! The streaming engine end to end on the real model,
//! SmolLM2-135M-Instruct Q4_1 (`scripts/fetch-model.sh` puts it in the
//! cache; `SPINEL_TEST_MODEL` points elsewhere):
//!
//! * greedy generation through a session reproduces llama.cpp's greedy
//!   tokens (`../shared/testdata/smollm2/greedy.json`) up to the first step
//!   where llama.cpp's top-1/top-2 margin is too small to call;
//! * the same seed gives the same output, in a fresh session or reusing the
//!   cache;
//! * a cancel from another thread stops a generation promptly;
//! * stop strings cut the text, end-of-generation and context limits end it;
//! * a second chat turn processes only the new tokens and answers as a fresh
//!   session given the whole conversation does;
//! * a prompt longer than the context is a clear error;
//! * one engine serves sessions on several threads at once.
//!
//! The test profile builds the runtime at opt-level 1, so every generation
//! here is a few tokens long.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use spinel_runtime::chat::Message;
use spinel_runtime::engine::{
    Engine, EngineError, GenerateOptions, Piece, SessionOptions, StopReason,
};
use spinel_runtime::sampling::SamplingParams;

/// llama.cpp's greedy choice is only reproducible where its top-1/top-2
/// logit margin is above the arithmetic differences between
/// implementations (see shared/testdata/smollm2/README.md and
/// tests/forward.rs).
const SAFE_MARGIN: f64 = 0.3;

fn model_path() -> PathBuf {
    spinel_runtime::cache::test_model()
}

mod common;

fn engine() -> Arc<Engine> {
    common::test_engine()
}

fn testdata() -> PathBuf {
    match std::env::var_os("SPINEL_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
    }
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn session(n_ctx: usize) -> spinel_runtime::engine::Session {
    engine()
        .session(&SessionOptions {
            n_ctx: Some(n_ctx),
            n_threads: Some(2),
            ..SessionOptions::default()
        })
        .unwrap()
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(max_tokens),
        ..GenerateOptions::default()
    }
}

#[test]
fn greedy_generation_reproduces_llama_cpp() {
    let path = testdata().join("smollm2/greedy.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reference: Json = serde_json::from_str(&text).unwrap();
    let engine = engine();
    let mut compared = 0;
    for case in reference["cases"].as_array().unwrap() {
        let prompt_text = case["prompt"].as_str().unwrap();
        let want_prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["generated_ids"]);
        let margins: Vec<f64> = case["margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        // Tokens before the first close call are llama.cpp's for sure.
        let n = margins
            .iter()
            .position(|&m| m < SAFE_MARGIN)
            .unwrap_or(want.len());
        let prompt = engine.tokenize_prompt(prompt_text).unwrap();
        assert_eq!(prompt, want_prompt, "{prompt_text:?}: prompt ids");

        let mut s = session(512);
        let mut streamed = String::new();
        let mut streamed_ids = Vec::new();
        let g = s
            .complete(&prompt, &greedy(n), |p: &Piece| {
                streamed.push_str(&p.text);
                streamed_ids.extend(p.token);
            })
            .unwrap();
        assert_eq!(g.generated_ids, want[..n], "{prompt_text:?}: greedy ids");
        assert_eq!(streamed_ids, g.generated_ids);
        assert_eq!(streamed, g.text, "{prompt_text:?}: streamed text");
        let decoded = engine.tokenizer().decode(&want[..n], true).unwrap();
        assert_eq!(g.text, decoded, "{prompt_text:?}: text");
        let ref_text = case["text"].as_str().unwrap();
        assert!(
            ref_text.starts_with(&g.text),
            "{prompt_text:?}: {:?}",
            g.text
        );
        assert_eq!(g.stop, StopReason::MaxTokens);
        assert_eq!(g.stats.prompt_tokens, prompt.len());
        assert_eq!(g.stats.cached_tokens, 0);
        assert_eq!(g.stats.generated_tokens, n);
        compared += n;
    }
    assert!(compared >= 40, "only {compared} greedy tokens compared");
}

#[test]
fn same_seed_same_output() {
    let engine = engine();
    let prompt = engine
        .tokenize_prompt("Once upon a time, in a small village by the sea,")
        .unwrap();
    let opts = |seed| GenerateOptions {
        sampling: SamplingParams {
            temperature: 1.0,
            seed,
            ..SamplingParams::default()
        },
        max_tokens: Some(12),
        ignore_eog: true,
        ..GenerateOptions::default()
    };
    let a = session(128).complete(&prompt, &opts(7), |_| {}).unwrap();
    assert_eq!(a.generated_ids.len(), 12);

    // A fresh session computes exactly what the first one did.
    let mut s = session(128);
    let b = s.complete(&prompt, &opts(7), |_| {}).unwrap();
    assert_eq!(a.generated_ids, b.generated_ids);
    assert_eq!(a.text, b.text);
    // The same session again: the whole prompt is in its cache but one
    // token, so only that one is processed. That is a one-row product where
    // the fresh prompt was a batched one (other summation order), so at T = 1
    // a draw near a boundary may go the other way; repeating the cached run
    // must give the same tokens again.
    let c = s.complete(&prompt, &opts(7), |_| {}).unwrap();
    let d = s.complete(&prompt, &opts(7), |_| {}).unwrap();
    assert_eq!(c.generated_ids, d.generated_ids);
    assert_eq!(c.text, d.text);
    assert_eq!(c.stats.cached_tokens, prompt.len() - 1);
    assert_eq!(c.stats.processed_prompt_tokens(), 1);

    // Other seeds take other paths (at T = 1 over 12 tokens, at least one
    // of three differs).
    let others: Vec<_> = [8, 9, 10]
        .iter()
        .map(|&seed| {
            s.complete(&prompt, &opts(seed), |_| {})
                .unwrap()
                .generated_ids
        })
        .collect();
    assert!(others.iter().any(|o| *o != a.generated_ids));
}

#[test]
fn cancel_from_another_thread_stops_promptly() {
    let engine = engine();
    let prompt = engine.tokenize_prompt("1, 1, 2, 3, 5, 8, 13,").unwrap();
    let mut s = session(4096);
    let cancel = s.cancel_handle();
    let (tx, rx) = mpsc::channel::<()>();
    let canceller = std::thread::spawn(move || {
        rx.recv().unwrap();
        let at = Instant::now();
        cancel.cancel();
        at
    });
    let opts = GenerateOptions {
        sampling: SamplingParams::greedy(),
        max_tokens: None,
        ignore_eog: true,
        ..GenerateOptions::default()
    };
    let mut n = 0;
    let mut tx = Some(tx);
    let g = s
        .complete(&prompt, &opts, |p| {
            n += usize::from(p.token.is_some());
            if n == 3 {
                tx.take().unwrap().send(()).unwrap();
            }
        })
        .unwrap();
    let ended = Instant::now();
    let cancelled_at = canceller.join().unwrap();
    assert_eq!(g.stop, StopReason::Cancelled);
    // The cancel lands within a step or two of being sent.
    assert!(
        g.generated_ids.len() < 3 + 20,
        "{} tokens",
        g.generated_ids.len()
    );
    let lag = ended.duration_since(cancelled_at);
    assert!(
        lag < Duration::from_secs(5),
        "stopped {lag:?} after the cancel"
    );
    // The cache holds exactly what was processed: the next generation
    // starts clean (the flag was cleared) and reuses it.
    assert_eq!(
        s.cached_tokens().len(),
        prompt.len() + g.generated_ids.len() - 1
    );
    let again = s.complete(&prompt, &greedy(2), |_| {}).unwrap();
    assert_eq!(again.stop, StopReason::MaxTokens);
    assert_eq!(again.generated_ids, g.generated_ids[..2]);

    // A cancel that comes before the first step stops the generation
    // before it processes anything.
    let handle = s.cancel_handle();
    let mut stream = s.stream(&prompt, &opts).unwrap();
    handle.cancel();
    assert!(stream.next().is_none());
    let g = stream.finish().unwrap();
    assert_eq!(g.stop, StopReason::Cancelled);
    assert!(g.generated_ids.is_empty());
}

#[test]
fn stop_strings_cut_the_text() {
    let engine = engine();
    let prompt = engine.tokenize_prompt("The capital of France is").unwrap();
    let mut s = session(128);
    // llama.cpp: " Paris" "." "\n" "\n" "The" …; "\n\n" spans two tokens.
    let opts = GenerateOptions {
        stop: vec!["\n\n".into()],
        ..greedy(5)
    };
    let mut streamed = String::new();
    let g = s
        .complete(&prompt, &opts, |p| streamed.push_str(&p.text))
        .unwrap();
    assert_eq!(g.text, " Paris.");
    assert_eq!(streamed, " Paris.");
    assert_eq!(g.stop, StopReason::StopString("\n\n".into()));
    assert_eq!(g.generated_ids, [7042, 30, 198, 198]);

    // A stop string inside one token's text cuts within the token.
    let opts = GenerateOptions {
        stop: vec!["ris".into()],
        ..greedy(5)
    };
    let g = s.complete(&prompt, &opts, |_| {}).unwrap();
    assert_eq!(g.text, " Pa");
    assert_eq!(g.generated_ids, [7042]);

    // An empty stop string is refused.
    let opts = GenerateOptions {
        stop: vec![String::new()],
        ..greedy(5)
    };
    assert!(matches!(
        s.complete(&prompt, &opts, |_| {}),
        Err(EngineError::EmptyStopString)
    ));
}

#[test]
fn chat_second_turn_processes_only_new_tokens() {
    let engine = engine();
    let mut s = session(1024);
    let mut streamed = String::new();
    // A short answer that ends with <|im_end|>: every answer token went
    // through the model (the last one to sample the end-of-turn token).
    let t1 = s
        .chat("Say hi.", &greedy(64), |p| streamed.push_str(&p.text))
        .unwrap();
    assert!(matches!(t1.stop, StopReason::EndOfGeneration(_)), "{t1:?}");
    assert!(!t1.text.is_empty());
    assert_eq!(streamed, t1.text);
    assert_eq!(t1.stats.cached_tokens, 0);
    assert_eq!(s.messages().len(), 2);
    assert_eq!(s.messages()[1], Message::assistant(t1.text.clone()));
    let turn1_len = t1.prompt_ids.len() + t1.generated_ids.len();
    assert_eq!(s.cached_tokens().len(), turn1_len);

    let t2 = s
        .chat("What is the capital of France?", &greedy(10), |_| {})
        .unwrap();
    assert!(!t2.text.is_empty());
    assert_eq!(s.messages().len(), 4);
    // Turn 1 (its prompt and answer) stays in the cache; the new tokens are
    // the end of the answer, the new user message and the assistant header.
    assert!(t2.prompt_ids.starts_with(&t1.prompt_ids));
    assert_eq!(
        t2.prompt_ids[t1.prompt_ids.len()..turn1_len],
        t1.generated_ids,
        "the answer re-tokenizes to the generated tokens"
    );
    assert_eq!(t2.stats.cached_tokens, turn1_len);
    let new = t2.prompt_ids.len() - turn1_len;
    assert_eq!(t2.stats.processed_prompt_tokens(), new);
    let tail = engine
        .tokenizer()
        .decode(&t2.prompt_ids[turn1_len..], false)
        .unwrap();
    assert_eq!(
        tail,
        "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\n"
    );

    // The same conversation in a fresh session gives the same answer.
    let mut fresh = session(1024);
    let g = fresh.complete(&t2.prompt_ids, &greedy(10), |_| {}).unwrap();
    assert_eq!(g.generated_ids, t2.generated_ids);
    assert_eq!(g.stats.cached_tokens, 0);

    // An answer cut by max_tokens: its last token was sampled but never
    // run, so the next turn runs it with the new tokens.
    let t3 = s
        .chat("Tell me a long story about a dragon.", &greedy(3), |_| {})
        .unwrap();
    assert_eq!(t3.stop, StopReason::MaxTokens);
    let turn3_len = t3.prompt_ids.len() + t3.generated_ids.len();
    let t4 = s.chat("Thanks!", &greedy(2), |_| {}).unwrap();
    assert!(t4.prompt_ids.starts_with(&t3.prompt_ids));
    assert_eq!(t4.stats.cached_tokens, turn3_len - 1);

    // A system message changes the start: the cache is reused only up to
    // where the conversations differ.
    s.set_system("You are terse.");
    let t5 = s.chat("Hi", &greedy(2), |_| {}).unwrap();
    assert!(t5.stats.cached_tokens < 10, "{}", t5.stats.cached_tokens);
}

#[test]
fn chat_turn_cancelled_before_any_text_is_forgotten() {
    let mut s = session(512);
    s.chat("Hello", &greedy(2), |_| {}).unwrap();
    assert_eq!(s.messages().len(), 2);
    let handle = s.cancel_handle();
    let mut stream = s.chat_stream("Tell me a story", &greedy(5)).unwrap();
    handle.cancel();
    assert!(stream.next().is_none());
    drop(stream);
    assert_eq!(s.messages().len(), 2);
}

#[test]
fn over_long_prompts_and_full_contexts() {
    let engine = engine();
    let prompt = engine.tokenize_prompt("1, 1, 2, 3, 5, 8, 13,").unwrap();
    assert_eq!(prompt.len(), 21);
    let mut s = session(16);
    let err = s.complete(&prompt, &greedy(1), |_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::PromptTooLong {
                prompt_tokens: 21,
                n_ctx: 16
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("21") && msg.contains("16") && msg.contains("context"),
        "{msg}"
    );

    // A chat turn that does not fit leaves the conversation as it was.
    let err = s.chat(&"word ".repeat(40), &greedy(1), |_| {}).unwrap_err();
    assert!(matches!(err, EngineError::PromptTooLong { .. }), "{err:?}");
    assert!(s.messages().is_empty());

    // Generation that fills the context stops there.
    let opts = GenerateOptions {
        ignore_eog: true,
        ..greedy(100)
    };
    let g = s.complete(&prompt[..12], &opts, |_| {}).unwrap();
    assert_eq!(g.stop, StopReason::ContextFull);
    assert_eq!(g.generated_ids.len(), 16 - 12 + 1);
    assert_eq!(s.cached_tokens().len(), 16);

    assert!(matches!(
        s.complete(&[], &greedy(1), |_| {}),
        Err(EngineError::EmptyPrompt)
    ));
    assert!(s.complete(&[1 << 30], &greedy(1), |_| {}).is_err());
}

#[test]
fn end_of_generation_token_ends_a_chat_answer() {
    let engine = engine();
    let mut s = session(512);
    let g = s.chat("Say hi.", &greedy(64), |_| {}).unwrap();
    // SmolLM2 answers a greeting briefly and ends its turn with <|im_end|>.
    let im_end = engine.tokenizer().token_id("<|im_end|>").unwrap();
    assert_eq!(g.stop, StopReason::EndOfGeneration(im_end), "{:?}", g.text);
    assert!(!g.generated_ids.contains(&im_end));
    assert!(!g.text.contains("<|im_end|>"));
    let st = &g.stats;
    assert!(st.time_to_first_token_secs.is_some());
    assert!(st.prompt_tokens_per_sec() > 0.0);
    assert!(st.generation_tokens_per_sec() > 0.0);
    assert_eq!(st.decode_steps, g.generated_ids.len());
    assert!(st.total_secs >= st.prompt_secs + st.generation_secs - 1e-3);
}

#[test]
fn one_engine_many_threads() {
    let engine = engine();
    let prompt = engine
        .tokenize_prompt("The three primary colors are")
        .unwrap();
    let serial = session(64).complete(&prompt, &greedy(4), |_| {}).unwrap();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let engine = Arc::clone(&engine);
            let prompt = prompt.clone();
            std::thread::spawn(move || {
                let mut s = engine
                    .session(&SessionOptions {
                        n_ctx: Some(64),
                        n_threads: Some(1),
                        ..SessionOptions::default()
                    })
                    .unwrap();
                s.complete(&prompt, &greedy(4), |_| {})
                    .unwrap()
                    .generated_ids
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), serial.generated_ids);
    }
}

#[test]
fn default_context_is_the_files_capped_by_the_budget() {
    let engine = engine();
    let train = engine.model().config().n_ctx_train;
    let opts = SessionOptions::default();
    assert_eq!(engine.context_length(&opts).unwrap(), train.min(8192));
    let per = engine.kv_bytes_per_position(&opts);
    let small = SessionOptions {
        kv_budget: per * 300 + 5,
        ..SessionOptions::default()
    };
    assert_eq!(engine.context_length(&small).unwrap(), 300);
    let s = engine.session(&small).unwrap();
    assert_eq!(s.n_ctx(), 300);
    let none = SessionOptions {
        kv_budget: per - 1,
        ..SessionOptions::default()
    };
    assert!(matches!(
        engine.context_length(&none),
        Err(EngineError::KvBudget { .. })
    ));
}

/// A tiny random Llama with a SentencePiece vocabulary: the test model
/// `a_llama1` converted, plus 512 tokens: `<unk> <s> </s>`, the pieces
/// `▁ w ▁w 0 … 9`, and the words `▁w0 … ▁w495`.
fn spm_engine() -> Arc<Engine> {
    use spinel_runtime::convert::{ConvertOptions, OutType, convert};
    use spinel_runtime::gguf::{GgufWriter, MappedGguf};
    use spinel_runtime::tokenizer::{TokenType, Vocab};

    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let base = tmp.join("session-a_llama1-f32.gguf");
    let opts = ConvertOptions {
        outtype: OutType::F32,
        ..ConvertOptions::default()
    };
    convert(&testdata().join("models/a_llama1"), &base, &opts).unwrap();
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>", "\u{2581}", "w", "\u{2581}w"]
        .map(String::from)
        .to_vec();
    tokens.extend((0..10).map(|d| d.to_string()));
    let words = 512 - tokens.len();
    tokens.extend((0..words).map(|k| format!("\u{2581}w{k}")));
    let mut types = vec![TokenType::Normal; 512];
    types[0] = TokenType::Unknown;
    types[1] = TokenType::Control;
    types[2] = TokenType::Control;
    let vocab = Vocab {
        model: "llama".into(),
        scores: Some((0..512).map(|i| -(i as f32)).collect()),
        tokens,
        token_types: Some(types),
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        unknown_token_id: Some(0),
        add_bos_token: Some(true),
        ..Vocab::default()
    };
    // SAFETY: a file this test just wrote; nothing changes it while mapped.
    let mapped = unsafe { MappedGguf::open(&base) }.unwrap();
    let mut w = GgufWriter::from_file(mapped.file()).unwrap();
    vocab.write_gguf(&mut w).unwrap();
    let path = tmp.join("session-a_llama1-spm.gguf");
    w.write_file(&path).unwrap();
    Arc::new(Engine::load(&path).unwrap())
}

#[test]
fn sentencepiece_continuations_keep_their_leading_space() {
    let engine = spm_engine();
    let tok = engine.tokenizer();
    let prompt = engine.tokenize_prompt("w5 w17").unwrap();
    let id = |t: &str| tok.token_id(t).unwrap();
    assert_eq!(prompt, [1, id("\u{2581}w5"), id("\u{2581}w17")]);
    let mut s = engine
        .session(&SessionOptions {
            n_ctx: Some(64),
            ..SessionOptions::default()
        })
        .unwrap();
    let opts = GenerateOptions {
        ignore_eog: true,
        ..greedy(12)
    };
    let g = s.complete(&prompt, &opts, |_| {}).unwrap();
    assert_eq!(g.generated_ids.len(), 12);
    // The continuation is the whole text less the prompt's: the space
    // before the first generated word is kept (the detokenizer drops the
    // SentencePiece prefix space only at the start of a text).
    let mut all = prompt.clone();
    all.extend(&g.generated_ids);
    let whole = tok.decode(&all, true).unwrap();
    let head = tok.decode(&prompt, true).unwrap();
    assert_eq!(head, "w5 w17");
    assert_eq!(whole.strip_prefix(&head), Some(g.text.as_str()));
    assert!(g.text.starts_with(" w"), "{:?}", g.text);

    // A chat answer is a text of its own: no leading space. This vocabulary
    // has no chat markers, so the built-in Llama 2 template applies.
    let mut s = engine
        .session(&SessionOptions {
            n_ctx: Some(128),
            ..SessionOptions::default()
        })
        .unwrap();
    let g = s.chat("w9", &opts, |_| {}).unwrap();
    assert!(g.text.starts_with('w'), "{:?}", g.text);
}

/// Tools offered to a chat turn reach the chat template as `tools` (the
/// prompt grows by their rendering), and an ordinary answer has no tool
/// calls (the parser itself is tested in `chat::tools`).
#[test]
fn tools_reach_the_template_and_plain_answers_have_no_calls() {
    use spinel_runtime::chat::ChatTemplate;
    let mut engine = Engine::load(model_path()).unwrap();
    let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n\
        {% if loop.first and tools %}Tools: {% for t in tools %}{{ t.function.name }} {% endfor %}\n{% endif %}\
        {{ m.content }}<|im_end|>\n{% endfor %}\
        {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    engine.set_chat_template(ChatTemplate::new(template, "", "<|im_end|>").unwrap());
    let engine = Arc::new(engine);
    let tools = serde_json::json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    ]);
    let rendered = engine
        .render_chat_with_tools(&[Message::user("Hi")], &tools)
        .unwrap();
    assert!(rendered.contains("Tools: get_weather"), "{rendered}");

    let run = |tools: Option<Json>| {
        let mut s = engine
            .session(&SessionOptions {
                n_ctx: Some(256),
                ..SessionOptions::default()
            })
            .unwrap();
        let opts = GenerateOptions { tools, ..greedy(8) };
        s.chat("What is 2+2?", &opts, |_| {}).unwrap()
    };
    let plain = run(None);
    let offered = run(Some(tools));
    assert!(
        offered.stats.prompt_tokens > plain.stats.prompt_tokens,
        "{} vs {}",
        offered.stats.prompt_tokens,
        plain.stats.prompt_tokens
    );
    assert!(plain.tool_calls.is_empty() && offered.tool_calls.is_empty());
}
