//! Continuous batching on the real model (SmolLM2-135M-Instruct, its Q4_1
//! file dequantized to f32):
//!
//! * [`Model::forward_multi`] steps several sequences, each at its own
//!   position over its own cache, and gives each the logits its own
//!   one-row step gives (up to the summation order of batched products);
//! * bad multi-sequence input is an error, not a panic, and leaves the
//!   states usable;
//! * batched sessions generating on several threads at once share decode
//!   steps (the batcher's mean batch size is above one) and produce the
//!   same greedy tokens as sessions running alone;
//! * a long prompt is chunked into the running sessions' decode steps.

use std::sync::{Arc, Barrier, OnceLock, mpsc};

use spinel_runtime::engine::{Engine, GenerateOptions, SessionOptions};
use spinel_runtime::model::{KvType, Model, ModelError, State};
use spinel_runtime::quantize::{FileType, quantize_file};
use spinel_runtime::sampling::SamplingParams;

/// The test model dequantized to f32: with no activation quantization a
/// batched product and a one-row product differ only in summation order
/// (~1e-5), so rows can be compared tightly. (With quantized weights the
/// activations are rounded to int8, and a rounding that flips moves the
/// logits by up to ~0.5 — the same difference as between a prompt batch
/// and one-row steps.)
fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| Arc::new(f32_engine("shared")))
        .clone()
}

/// A new engine (its own batcher) over the f32 copy of the test model.
fn f32_engine(tag: &str) -> Engine {
    {
        {
            let path = spinel_runtime::cache::test_model();
            assert!(
                path.is_file(),
                "the SmolLM2 test model is missing at {}: run scripts/fetch-model.sh",
                path.display()
            );
            let q = Model::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let f32_path = std::env::temp_dir().join(format!(
                "spinel-batch-{}-{tag}.f32.gguf",
                std::process::id()
            ));
            quantize_file(
                q.gguf(),
                &f32_path,
                FileType::from_name("f32").unwrap(),
                2,
                None,
                &mut |_| {},
            )
            .unwrap();
            let engine = Engine::load(&f32_path).unwrap();
            // The mapping stays valid after the name is gone.
            std::fs::remove_file(&f32_path).unwrap();
            engine
        }
    }
}

const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "One, two, three, four,",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
];

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).max_by(|&a, &b| x[a].total_cmp(&x[b])).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
#[allow(clippy::needless_range_loop)] // `step` indexes the reference and counts positions
fn forward_multi_matches_one_row_steps() {
    let engine = engine();
    let model = engine.model();
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| engine.tokenize_prompt(p).unwrap())
        .collect();
    let new_state = || model.new_state(Some(64), KvType::F32).unwrap();

    // Reference: each sequence alone, prompt then two one-token steps.
    let mut want = Vec::new();
    for p in &prompts {
        let mut s = new_state();
        let mut steps = Vec::new();
        let mut next = argmax(model.forward(&mut s, p).unwrap()) as u32;
        for _ in 0..2 {
            let logits = model.forward(&mut s, &[next]).unwrap().to_vec();
            next = argmax(&logits) as u32;
            steps.push(logits);
        }
        want.push(steps);
    }

    // Batched: the same prompts (of different lengths, so every row sits at
    // another position), then two steps of all four at once.
    let mut states: Vec<State> = prompts.iter().map(|_| new_state()).collect();
    let mut next: Vec<u32> = prompts
        .iter()
        .zip(&mut states)
        .map(|(p, s)| argmax(model.forward(s, p).unwrap()) as u32)
        .collect();
    let mut all = Vec::new();
    for step in 0..2 {
        let (first, rest) = states.split_first_mut().unwrap();
        let mut others: Vec<&mut State> = rest.iter_mut().collect();
        model
            .forward_multi(first, &mut others, &next, &mut all)
            .unwrap();
        let n_vocab = model.config().n_vocab;
        assert_eq!(all.len(), 4 * n_vocab);
        for (i, s) in states.iter().enumerate() {
            assert_eq!(s.n_past(), prompts[i].len() + step + 1);
            assert_eq!(s.logits(), &all[i * n_vocab..(i + 1) * n_vocab]);
            let d = max_abs_diff(s.logits(), &want[i][step]);
            assert!(
                d < 1e-3,
                "{:?} step {step}: logits differ by {d}",
                PROMPTS[i]
            );
            assert_eq!(
                argmax(s.logits()),
                argmax(&want[i][step]),
                "{:?}",
                PROMPTS[i]
            );
        }
        next = states.iter().map(|s| argmax(s.logits()) as u32).collect();
    }
}

#[test]
fn forward_multi_rejects_bad_input() {
    let engine = engine();
    let model = engine.model();
    let mut a = model.new_state(Some(8), KvType::F16).unwrap();
    let mut b = model.new_state(Some(8), KvType::F16).unwrap();
    let mut logits = Vec::new();
    let err = model
        .forward_multi(&mut a, &mut [&mut b], &[1], &mut logits)
        .unwrap_err();
    assert!(matches!(err, ModelError::BatchMismatch { .. }), "{err}");
    let err = model
        .forward_multi(&mut a, &mut [&mut b], &[1, u32::MAX], &mut logits)
        .unwrap_err();
    assert!(matches!(err, ModelError::TokenOutOfRange { .. }), "{err}");
    let mut c = model.new_state(Some(8), KvType::F32).unwrap();
    let err = model
        .forward_multi(&mut a, &mut [&mut c], &[1, 2], &mut logits)
        .unwrap_err();
    assert!(matches!(err, ModelError::StateMismatch), "{err}");
    // A full context in any row is reported, and nothing moved.
    model.forward(&mut b, &[1; 8]).unwrap();
    let err = model
        .forward_multi(&mut a, &mut [&mut b], &[1, 2], &mut logits)
        .unwrap_err();
    assert!(matches!(err, ModelError::ContextFull { .. }), "{err}");
    assert_eq!((a.n_past(), b.n_past()), (0, 8));
    model.forward(&mut a, &[1]).unwrap();
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(max_tokens),
        ..GenerateOptions::default()
    }
}

#[test]
fn batched_sessions_share_steps_and_answer_as_alone() {
    let engine = engine();
    let opts = |batched| SessionOptions {
        n_ctx: Some(128),
        n_threads: Some(2),
        batched,
        ..SessionOptions::default()
    };
    const N: usize = 12;
    let alone: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| {
            let prompt = engine.tokenize_prompt(p).unwrap();
            let mut s = engine.session(&opts(false)).unwrap();
            s.complete(&prompt, &greedy(N), |_| {})
                .unwrap()
                .generated_ids
        })
        .collect();

    let before = engine.batcher().stats();
    let start = Arc::new(Barrier::new(PROMPTS.len()));
    let threads: Vec<_> = PROMPTS
        .iter()
        .map(|p| {
            let (engine, start) = (Arc::clone(&engine), Arc::clone(&start));
            let prompt = engine.tokenize_prompt(p).unwrap();
            let mut s = engine.session(&opts(true)).unwrap();
            std::thread::spawn(move || {
                start.wait();
                s.complete(&prompt, &greedy(N), |_| {})
                    .unwrap()
                    .generated_ids
            })
        })
        .collect();
    for (t, want) in threads.into_iter().zip(&alone) {
        assert_eq!(&t.join().unwrap(), want);
    }
    let after = engine.batcher().stats();
    let (steps, rows) = (after.steps - before.steps, after.rows - before.rows);
    // Every decode step after each first token went through the batcher.
    assert_eq!(rows, (PROMPTS.len() * (N - 1)) as u64);
    assert!(
        steps < rows,
        "{rows} rows in {steps} steps: the sessions never shared a step"
    );
}

/// Chunked prefill: a long prompt arriving while another session generates
/// goes through in chunks, each sharing a forward pass with the running
/// session's decode step, so the running stream keeps producing tokens
/// while the prompt is processed (seen by the batcher's prompt-row count
/// moving between its tokens); both answers are the sessions' own.
#[test]
fn long_prompts_are_chunked_into_the_decode_steps() {
    // Its own batcher: no other test's steps in its counts.
    let engine = Arc::new(f32_engine("chunked"));
    let opts = |batched| SessionOptions {
        n_ctx: Some(512),
        n_threads: Some(2),
        n_batch: 32,
        batched,
        ..SessionOptions::default()
    };
    let long: String = (0..40).map(|i| format!("Item {i} is a number. ")).collect();
    let long = engine.tokenize_prompt(&long).unwrap();
    assert!(long.len() > 200, "{} tokens", long.len());
    let short = engine.tokenize_prompt(PROMPTS[1]).unwrap();
    let alone = |prompt: &[u32], n| {
        let mut s = engine.session(&opts(false)).unwrap();
        s.complete(prompt, &greedy(n), |_| {})
            .unwrap()
            .generated_ids
    };
    let (want_short, want_long) = (alone(&short, 60), alone(&long, 4));

    let before = engine.batcher().stats();
    let (started_tx, started_rx) = mpsc::channel();
    let n_short = short.len() as u64;
    let runner = {
        let engine = Arc::clone(&engine);
        let mut s = engine.session(&opts(true)).unwrap();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let g = s
                .complete(&short, &greedy(60), |_| {
                    seen.push(engine.batcher().stats().prompt_rows);
                    if seen.len() == 3 {
                        started_tx.send(()).unwrap();
                    }
                })
                .unwrap();
            (g.generated_ids, seen)
        })
    };
    started_rx.recv().unwrap();
    let mut s = engine.session(&opts(true)).unwrap();
    let got_long = s.complete(&long, &greedy(4), |_| {}).unwrap().generated_ids;
    let (got_short, seen) = runner.join().unwrap();
    assert_eq!(got_short, want_short);
    assert_eq!(got_long, want_long);

    let after = engine.batcher().stats();
    assert!(after.prompt_rows - before.prompt_rows >= long.len() as u64);
    assert!(
        after.mixed_steps > before.mixed_steps,
        "{before:?} -> {after:?}"
    );
    // The running stream saw the long prompt partly processed: tokens came
    // between its chunks, not after all of them.
    let start = before.prompt_rows + n_short;
    let partly = seen
        .iter()
        .filter(|&&r| r > start && r < start + long.len() as u64)
        .count();
    assert!(
        partly >= 2,
        "prompt rows seen by the running stream: {seen:?}"
    );
}
