//! Speculative decoding with the real model: prompt lookup and a draft
//! model give exactly the tokens plain decoding gives — greedy, sampled
//! (the same random stream) and under a grammar — while drafts are
//! accepted and several tokens come out of one forward pass.

use std::sync::Arc;

use spinel_runtime::engine::{
    Engine, EngineError, GenerateOptions, Generation, SessionOptions, SpeculativeOptions,
};
use spinel_runtime::gguf::GgufFile;
use spinel_runtime::model::StateOptions;
use spinel_runtime::sampling::SamplingParams;
use spinel_runtime::synthetic::Spec;

mod common;

fn engine() -> Arc<Engine> {
    common::test_engine()
}

fn chat(question: &str, opts: &GenerateOptions) -> Generation {
    let mut s = engine()
        .session(&SessionOptions {
            n_ctx: Some(1024),
            n_threads: Some(2),
            ..SessionOptions::default()
        })
        .unwrap();
    s.chat(question, opts, |_| {}).unwrap()
}

const PROMPTS: [&str; 6] = [
    "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the river bank.",
    "Correct the spelling and write the text again: Teh cat sat on teh mat and loked at teh birds.",
    "Write a Python function that adds two numbers, then write it again with type hints.",
    "What is the capital of France?",
    "List the days of the week, then list them again in reverse order.",
    "Summarise: Paris is the capital of France. Paris has the Eiffel Tower. The Eiffel Tower is tall.",
];

fn plain(sampling: SamplingParams) -> GenerateOptions {
    GenerateOptions {
        sampling,
        max_tokens: Some(64),
        ..GenerateOptions::default()
    }
}

fn with(opts: &GenerateOptions, spec: SpeculativeOptions) -> GenerateOptions {
    GenerateOptions {
        speculative: Some(spec),
        ..opts.clone()
    }
}

#[test]
fn prompt_lookup_greedy_equals_plain_greedy() {
    let base = plain(SamplingParams::greedy());
    let spec = with(&base, SpeculativeOptions::prompt_lookup(3, 8).unwrap());
    let (mut drafted, mut accepted, mut tokens, mut passes) = (0, 0, 0, 0);
    for p in PROMPTS {
        let a = chat(p, &base);
        let b = chat(p, &spec);
        assert_eq!(
            a.generated_ids, b.generated_ids,
            "{p}: {:?} vs {:?}",
            a.text, b.text
        );
        assert_eq!(a.stop, b.stop, "{p}");
        assert_eq!(a.stats.decode_steps, a.stats.decode_tokens);
        assert!(b.stats.decode_steps <= a.stats.decode_steps);
        drafted += b.stats.drafted_tokens;
        accepted += b.stats.accepted_tokens;
        tokens += b.stats.decode_tokens;
        passes += b.stats.decode_steps;
    }
    eprintln!("prompt lookup: {accepted}/{drafted} accepted, {tokens} tokens in {passes} passes");
    assert!(drafted > 0 && accepted > 0, "{accepted}/{drafted}");
    assert!(tokens > passes, "{tokens} tokens in {passes} passes");
}

/// Drafts are one-hot, so sampling each position and comparing with the
/// draft is the accept/reject rule, and it draws the random stream as plain
/// decoding does: the same seed gives the same text.
#[test]
fn prompt_lookup_sampling_keeps_the_random_stream() {
    for seed in [1, 2, 3] {
        let base = plain(SamplingParams {
            temperature: 0.9,
            seed,
            ..SamplingParams::default()
        });
        let spec = with(&base, SpeculativeOptions::prompt_lookup(2, 6).unwrap());
        for p in &PROMPTS[..3] {
            let a = chat(p, &base);
            let b = chat(p, &spec);
            assert_eq!(a.generated_ids, b.generated_ids, "seed {seed}, {p}");
        }
    }
}

#[test]
fn draft_model_greedy_equals_plain_greedy() {
    let base = plain(SamplingParams::greedy());
    // The model drafts for itself: every draft should be accepted.
    let mut spec = SpeculativeOptions::draft_model(&engine(), engine(), 5).unwrap();
    spec.p_min = 0.0;
    let spec = with(&base, spec);
    for p in &PROMPTS[2..5] {
        let a = chat(p, &base);
        let b = chat(p, &spec);
        assert_eq!(a.generated_ids, b.generated_ids, "{p}");
        let s = &b.stats;
        assert!(s.drafted_tokens > 0, "{p}: {s:?}");
        // The same model guesses itself well (not always: it catches up on
        // accepted tokens in batches, whose float order differs).
        assert!(s.acceptance_rate() > 0.8, "{p}: {s:?}");
        assert!(s.tokens_per_pass() > 3.0, "{p}: {s:?}");
    }
}

#[test]
fn speculation_under_a_grammar_equals_the_grammar_alone() {
    let gbnf = "root ::= \"Days: \" day (\", \" day)* \".\"\n\
                day ::= \"Monday\" | \"Tuesday\" | \"Wednesday\" | \"Thursday\" | \"Friday\" | \"Saturday\" | \"Sunday\"";
    let base = plain(SamplingParams::greedy()).gbnf(gbnf).unwrap();
    let spec = with(&base, SpeculativeOptions::prompt_lookup(2, 8).unwrap());
    let q = "List the days of the week, then list them again.";
    let a = chat(q, &base);
    let b = chat(q, &spec);
    assert_eq!(
        a.generated_ids, b.generated_ids,
        "{:?} vs {:?}",
        a.text, b.text
    );
    assert!(a.text.starts_with("Days: "), "{}", a.text);
}

#[test]
fn unusable_settings_are_named_errors() {
    let e = SpeculativeOptions::prompt_lookup(0, 4).unwrap_err();
    assert!(matches!(e, EngineError::Speculative { .. }), "{e}");
    let e = SpeculativeOptions::prompt_lookup(2, 0).unwrap_err();
    assert!(e.to_string().contains("draft_max"), "{e}");
    // A model whose output is larger than the vocabulary cannot draft.
    let padded = synthetic_draft("padded", 49152 + 64);
    let e = SpeculativeOptions::draft_model(&engine(), padded, 4).unwrap_err();
    assert!(matches!(e, EngineError::Speculative { .. }), "{e}");
}

/// A small random model with SmolLM2's tokenizer.
fn synthetic_draft(name: &'static str, n_vocab: usize) -> Arc<Engine> {
    let dir = std::env::temp_dir().join(format!("spinel-speculative-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.gguf"));
    let bytes = std::fs::read(spinel_runtime::cache::test_model()).unwrap();
    let smollm = GgufFile::parse(&bytes).unwrap();
    let spec = Spec {
        name,
        n_vocab,
        dim: 64,
        n_layer: 2,
        n_head: 2,
        n_head_kv: 1,
        n_ff: 128,
        moe: None,
        seed: 3,
    };
    spec.write(&path, Some(&smollm)).unwrap();
    let engine = Engine::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    Arc::new(engine)
}

/// A draft model that guesses badly costs speed, never correctness.
#[test]
fn a_random_draft_model_changes_nothing() {
    let draft = synthetic_draft("random", 49152);
    let base = plain(SamplingParams::greedy());
    let mut spec = SpeculativeOptions::draft_model(&engine(), draft, 4).unwrap();
    spec.p_min = 0.0;
    let spec = with(&base, spec);
    for p in &PROMPTS[..2] {
        let a = chat(p, &base);
        let b = chat(p, &spec);
        assert_eq!(a.generated_ids, b.generated_ids, "{p}");
        assert!(b.stats.drafted_tokens > 0);
    }
}

/// Verification computes each row as a one-token pass would, bit for bit:
/// that is what makes speculative output exactly plain decoding's.
#[test]
fn verification_rows_equal_one_token_steps_bit_for_bit() {
    let e = engine();
    let text = "The quick brown fox jumps over the lazy dog, and then it runs away.";
    let toks = e.tokenize_prompt(text).unwrap();
    let state = || {
        e.model()
            .new_state_with(&StateOptions {
                n_ctx: Some(256),
                n_threads: Some(2),
                ..StateOptions::default()
            })
            .unwrap()
    };
    let n_vocab = e.model().config().n_vocab;
    for n0 in [1, 4] {
        let (mut steps, mut batch) = (state(), state());
        e.model().forward(&mut steps, &toks[..n0]).unwrap();
        e.model().forward(&mut batch, &toks[..n0]).unwrap();
        let mut rows = Vec::new();
        e.model()
            .forward_verify(&mut batch, &toks[n0..], &mut rows)
            .unwrap();
        assert_eq!(rows.len(), (toks.len() - n0) * n_vocab);
        for (i, &t) in toks[n0..].iter().enumerate() {
            let one = e.model().forward(&mut steps, &[t]).unwrap();
            let row = &rows[i * n_vocab..(i + 1) * n_vocab];
            let same = one.iter().zip(row).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "position {}: the verification row differs", n0 + i);
        }
        assert_eq!(batch.n_past(), steps.n_past());
        assert_eq!(batch.logits(), steps.logits());
    }
}
