//! The forward pass against references.
//!
//! * The tiny random Llama-family models of `../shared/testdata/models` (HF
//!   checkpoints with logits from HF transformers, f32): every prompt's
//!   last-position logits within 1e-4 with an f32 KV cache, the 16 greedy
//!   steps' logits within 1e-4 and their argmax equal to the reference
//!   wherever its top-1/top-2 margin is comfortable, the argmax at every
//!   prompt position, and the errors of an f16 KV cache, f16 weights and
//!   Q8_0 weights (printed, with loose bounds).
//! * The real SmolLM2-135M-Instruct Q4_1 file against what llama.cpp does
//!   with it (`../shared/testdata/smollm2/greedy.json`).
//! * Bad input: named errors, never panics.
//!
//! The HF checkpoints are turned into GGUF files by `spinel convert`
//! (`spinel_runtime::convert`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value as Json;
use spinel_runtime::convert::{ConvertOptions, OutType, convert};
use spinel_runtime::gguf::{GgufFile, GgufWriter, Value};
use spinel_runtime::model::{KvType, Model, ModelError, StateOptions};

const MODELS: [&str; 5] = [
    "a_llama1",
    "c_llama3",
    "d_llama3_1",
    "e_llama3_2_tied",
    "f_llama4_text",
];
const PROMPTS: [&str; 4] = ["len1", "len7", "len40", "len300"];

/// Greedy steps are compared only where the reference's top-1/top-2 margin
/// is above this (the f32 path agrees to ~1e-5, so 1e-3 is comfortable).
const COMFORTABLE_MARGIN: f32 = 1e-3;

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

fn floats(v: &Json) -> Vec<f32> {
    v.as_array()
        .expect("array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// Standard base64 (with padding) to bytes.
fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn f32s_b64(s: &str) -> Vec<f32> {
    base64(s)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(x: &[f32]) -> usize {
    // First index on ties, like torch.argmax.
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

fn top2_margin(x: &[f32]) -> f32 {
    let a = argmax(x);
    let second = x
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != a)
        .map(|(_, &v)| v)
        .fold(f32::NEG_INFINITY, f32::max);
    x[a] - second
}

/// The GGUF of model `name` made by `spinel convert --outtype outtype`,
/// converted once per test run.
fn gguf_path(name: &str, outtype: OutType) -> PathBuf {
    static DONE: Mutex<Vec<(String, OutType, PathBuf)>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, p)) = done.iter().find(|(n, t, _)| n == name && *t == outtype) {
        return p.clone();
    }
    let path =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("forward-{name}-{outtype}.gguf"));
    let opts = ConvertOptions {
        outtype,
        ..ConvertOptions::default()
    };
    convert(&testdata().join("models").join(name), &path, &opts)
        .unwrap_or_else(|e| panic!("converting {name} to {outtype}: {e}"));
    done.push((name.to_string(), outtype, path.clone()));
    path
}

fn opts(kv_type: KvType) -> StateOptions {
    StateOptions {
        n_ctx: Some(512),
        kv_type,
        ..StateOptions::default()
    }
}

/// The worst last-position logit error over all prompts of a model.
fn last_logit_error(model: &Model<'_>, reference: &Json, kv: KvType) -> f32 {
    let mut worst = 0.0f32;
    for p in PROMPTS {
        let r = &reference["prompts"][p];
        let mut state = model.new_state_with(&opts(kv)).unwrap();
        let logits = model.forward(&mut state, &ids(&r["prompt_ids"])).unwrap();
        worst = worst.max(max_abs_diff(logits, &floats(&r["last_logits"])));
    }
    worst
}

fn check_model(name: &str) {
    let dir = testdata().join("models").join(name);
    let reference = read_json(&dir.join("reference.json"));
    let model = Model::load(gguf_path(name, OutType::F32)).unwrap();

    // RoPE frequencies after llama3 scaling, as HF applies them.
    let inv_freq = floats(&reference["rope"]["inv_freq"]);
    for (i, (&a, &b)) in model.rope_inv_freq().iter().zip(&inv_freq).enumerate() {
        assert!(
            (a - b).abs() <= 2e-7 * b.abs(),
            "{name}: inv_freq[{i}] {a} vs {b}"
        );
    }
    assert_eq!(model.rope_inv_freq().len(), inv_freq.len());

    let mut worst_last = 0.0f32;
    let mut worst_step = 0.0f32;
    let mut compared_steps = 0;
    let mut all = Vec::new();
    for p in PROMPTS {
        let r = &reference["prompts"][p];
        let prompt = ids(&r["prompt_ids"]);
        let greedy = ids(&r["greedy_cached"]);
        let margins = floats(&r["step_top1_minus_top2"]);
        let steps = f32s_b64(r["step_logits_b64"].as_str().unwrap());
        let n_vocab = model.config().n_vocab;
        assert_eq!(steps.len(), 16 * n_vocab);

        // Prompt in one batch, then 16 cached decoding steps fed the
        // reference's own tokens: every step's logits must match, and the
        // argmax must equal the reference token where the margin allows.
        let mut state = model.new_state_with(&opts(KvType::F32)).unwrap();
        let mut logits = model.forward(&mut state, &prompt).unwrap().to_vec();
        let err = max_abs_diff(&logits, &floats(&r["last_logits"]));
        assert!(err < 1e-4, "{name} {p}: last logits off by {err}");
        worst_last = worst_last.max(err);
        for step in 0..16 {
            let want = &steps[step * n_vocab..(step + 1) * n_vocab];
            let err = max_abs_diff(&logits, want);
            assert!(err < 1e-4, "{name} {p}: step {step} logits off by {err}");
            worst_step = worst_step.max(err);
            if margins[step] > COMFORTABLE_MARGIN {
                assert_eq!(
                    argmax(&logits) as u32,
                    greedy[step],
                    "{name} {p}: greedy step {step}"
                );
                compared_steps += 1;
            }
            if step < 15 {
                logits = model.forward(&mut state, &[greedy[step]]).unwrap().to_vec();
            }
        }
        assert_eq!(state.n_past(), prompt.len() + 15);

        // Free-running greedy decoding (our own tokens fed back) reproduces
        // the reference up to its first uncomfortable margin.
        let mut state = model.new_state_with(&opts(KvType::F32)).unwrap();
        let mut logits = model.forward(&mut state, &prompt).unwrap().to_vec();
        for step in 0..16 {
            if margins[step] <= COMFORTABLE_MARGIN {
                break;
            }
            let tok = argmax(&logits) as u32;
            assert_eq!(
                tok, greedy[step],
                "{name} {p}: free-running greedy step {step}"
            );
            logits = model.forward(&mut state, &[tok]).unwrap().to_vec();
        }

        // Every prompt position at once, in small batches: the argmax where
        // our own margin is clear, and the last row equal to the above.
        let mut state = model
            .new_state_with(&StateOptions {
                n_batch: 16,
                ..opts(KvType::F32)
            })
            .unwrap();
        model.forward_all(&mut state, &prompt, &mut all).unwrap();
        let prompt_argmax = ids(&r["prompt_argmax"]);
        for (t, row) in all.chunks_exact(n_vocab).enumerate() {
            if top2_margin(row) > COMFORTABLE_MARGIN {
                assert_eq!(
                    argmax(row) as u32,
                    prompt_argmax[t],
                    "{name} {p}: prompt position {t}"
                );
            }
        }
        let last = &all[(prompt.len() - 1) * n_vocab..];
        let err = max_abs_diff(last, &floats(&r["last_logits"]));
        assert!(
            err < 1e-4,
            "{name} {p}: last logits in batches of 16 off by {err}"
        );
    }
    assert!(
        compared_steps >= 40,
        "{name}: only {compared_steps} greedy steps compared"
    );

    // Lossy variants: report the error, assert it stays in the expected range.
    let f16_kv = last_logit_error(&model, &reference, KvType::F16);
    // Q8_0 needs heads of whole 32-blocks (only d_llama3_1 has them).
    let q8_kv = (model.config().head_dim % 32 == 0)
        .then(|| last_logit_error(&model, &reference, KvType::Q8_0));
    let q4_kv = (model.config().head_dim % 32 == 0)
        .then(|| last_logit_error(&model, &reference, KvType::Q4_0));
    let weights_error = |t: OutType| {
        last_logit_error(
            &Model::load(gguf_path(name, t)).unwrap(),
            &reference,
            KvType::F32,
        )
    };
    let (f16_w, bf16_w, q8_w) = (
        weights_error(OutType::F16),
        weights_error(OutType::BF16),
        weights_error(OutType::Q8_0),
    );
    let q8_kv_s = q8_kv.map_or("n/a".to_string(), |e| format!("{e:.2e}"));
    let q4_kv_s = q4_kv.map_or("n/a".to_string(), |e| format!("{e:.2e}"));
    println!(
        "{name}: max |Δlogit| f32 {worst_last:.2e} (16 steps {worst_step:.2e}); \
         f16 KV {f16_kv:.2e}; q8_0 KV {q8_kv_s}; q4_0 KV {q4_kv_s}; weights f16 {f16_w:.2e}, \
         bf16 {bf16_w:.2e}, q8_0 {q8_w:.2e}"
    );
    assert!(f16_kv < 2e-2, "{name}: f16 KV cache error {f16_kv}");
    assert!(
        q8_kv.is_none_or(|e| e < 0.2),
        "{name}: q8_0 KV cache error {q8_kv:?}"
    );
    assert!(
        q4_kv.is_none_or(|e| e < 2.5),
        "{name}: q4_0 KV cache error {q4_kv:?}"
    );
    assert!(f16_w < 2e-2, "{name}: f16 weights error {f16_w}");
    assert!(bf16_w < 0.15, "{name}: bf16 weights error {bf16_w}");
    assert!(q8_w < 0.4, "{name}: q8_0 weights error {q8_w}");
}

#[test]
fn a_llama1_matches_transformers() {
    check_model(MODELS[0]);
}

#[test]
fn c_llama3_matches_transformers() {
    check_model(MODELS[1]);
}

#[test]
fn d_llama3_1_matches_transformers() {
    check_model(MODELS[2]);
}

#[test]
fn e_llama3_2_tied_matches_transformers() {
    check_model(MODELS[3]);
}

#[test]
fn f_llama4_text_matches_transformers() {
    check_model(MODELS[4]);
}

#[test]
fn multi_turn_continues_from_the_cache() {
    let name = "f_llama4_text";
    let reference = read_json(&testdata().join("models").join(name).join("reference.json"));
    let model = Model::load(gguf_path(name, OutType::F32)).unwrap();
    let r = &reference["prompts"]["len40"];
    let prompt = ids(&r["prompt_ids"]);
    let mut state = model.new_state_with(&opts(KvType::F32)).unwrap();
    // Three "turns" of uneven length, crossing the 16-position chunks.
    model.forward(&mut state, &prompt[..5]).unwrap();
    model.forward(&mut state, &prompt[5..23]).unwrap();
    let logits = model.forward(&mut state, &prompt[23..]).unwrap();
    let err = max_abs_diff(logits, &floats(&r["last_logits"]));
    assert!(err < 1e-4, "turn-by-turn logits off by {err}");

    // Truncating back and replaying the end gives the same answer.
    state.truncate(30);
    let logits = model.forward(&mut state, &prompt[30..]).unwrap();
    assert!(max_abs_diff(logits, &floats(&r["last_logits"])) < 1e-4);
    state.reset();
    assert_eq!(state.n_past(), 0);
    let logits = model.forward(&mut state, &prompt).unwrap();
    assert!(max_abs_diff(logits, &floats(&r["last_logits"])) < 1e-4);
}

#[test]
fn bad_input_gives_named_errors() {
    let name = "c_llama3";
    let model = Model::load(gguf_path(name, OutType::F32)).unwrap();
    let mut state = model.new_state(Some(8), KvType::F32).unwrap();
    assert_eq!(state.n_ctx(), 8);

    match model.forward(&mut state, &[]) {
        Err(ModelError::EmptyInput) => {}
        other => panic!("empty input: {other:?}"),
    }
    match model.forward(&mut state, &[1, 2, 512]) {
        Err(ModelError::TokenOutOfRange {
            token: 512,
            index: 2,
            n_vocab: 512,
        }) => {}
        other => panic!("token out of range: {other:?}"),
    }
    match model.forward(&mut state, &[1; 9]) {
        Err(
            e @ ModelError::ContextFull {
                n_past: 0,
                n_new: 9,
                n_ctx: 8,
            },
        ) => {
            assert!(e.to_string().contains("context"), "{e}");
        }
        other => panic!("prompt longer than the context: {other:?}"),
    }
    // Errors leave the state untouched; filling it exactly is fine.
    assert_eq!(state.n_past(), 0);
    model.forward(&mut state, &[1; 6]).unwrap();
    model.forward(&mut state, &[3, 4]).unwrap();
    match model.forward(&mut state, &[5]) {
        Err(ModelError::ContextFull {
            n_past: 8,
            n_new: 1,
            n_ctx: 8,
        }) => {}
        other => panic!("full context: {other:?}"),
    }

    // A state made for another model.
    let other = Model::load(gguf_path("a_llama1", OutType::F32)).unwrap();
    let mut foreign = other.new_state(Some(8), KvType::F32).unwrap();
    assert!(matches!(
        model.forward(&mut foreign, &[1]),
        Err(ModelError::StateMismatch)
    ));

    match model.new_state(Some(0), KvType::F32) {
        Err(ModelError::BadStateSize { .. }) => {}
        other => panic!("zero context: {other:?}"),
    }
    // Q8_0 and Q4_0 need heads that are whole blocks of 32 (this model has
    // 16), for keys and for values; the error names which and why.
    for (k, v, which) in [
        (KvType::Q8_0, KvType::Q8_0, "K"),
        (KvType::Q4_0, KvType::Q4_0, "K"),
        (KvType::F16, KvType::Q4_0, "V"),
        (KvType::Q8_0, KvType::F32, "K"),
    ] {
        let opts = StateOptions {
            n_ctx: Some(8),
            kv_type: k,
            kv_type_v: Some(v),
            ..StateOptions::default()
        };
        match model.new_state_with(&opts) {
            Err(e @ ModelError::KvCacheHeadSize { head_dim: 16, .. }) => {
                let msg = e.to_string();
                let ty = if which == "K" { k } else { v };
                let name = ty.ggml_type().name();
                assert!(
                    msg.contains(&format!("{name} {which} cache"))
                        && msg.contains("multiple of 32"),
                    "{msg}"
                );
            }
            other => panic!("{k:?}/{v:?} KV with head size 16: {other:?}"),
        }
    }
    assert_eq!(KvType::from_name("F16"), Some(KvType::F16));
    assert_eq!(KvType::from_name("q8_0"), Some(KvType::Q8_0));
    assert_eq!(KvType::from_name("Q4_0"), Some(KvType::Q4_0));
    assert_eq!(KvType::from_name("q4_1"), None);
}

#[test]
fn bad_files_give_named_errors() {
    let good = aligned(&std::fs::read(gguf_path("c_llama3", OutType::F32)).unwrap());
    let good = GgufFile::parse(good.as_slice()).unwrap();
    // `good` with metadata `key` replaced by `value` (removed if `None`) and
    // tensor `skip` left out.
    let edit = |key: &str, value: Option<Value<'static>>, skip: &str| -> Aligned {
        let mut w = GgufWriter::new();
        for (k, v) in good.metadata().iter() {
            match (k == key, &value) {
                (false, _) => w.add_kv(k, v.clone()).unwrap(),
                (true, Some(v)) => w.add_kv(k, v.clone()).unwrap(),
                (true, None) => continue,
            };
        }
        for t in good.tensors().iter().filter(|t| t.name() != skip) {
            w.add_tensor(t.name(), t.dims(), t.ggml_type(), t.data())
                .unwrap();
        }
        aligned(&w.to_bytes())
    };

    // Missing tensors.
    for name in [
        "blk.1.attn_v.weight",
        "output_norm.weight",
        "token_embd.weight",
    ] {
        let bytes = edit("", None, name);
        let file = GgufFile::parse(bytes.as_slice()).unwrap();
        match Model::from_gguf(&file) {
            Err(e @ ModelError::MissingTensor { .. }) => assert!(e.to_string().contains(name)),
            other => panic!("missing {name}: {other:?}"),
        }
    }

    // Metadata that disagrees with the tensors, an unknown architecture, a
    // missing hyperparameter.
    type Case = (
        &'static str,
        Option<Value<'static>>,
        fn(&ModelError) -> bool,
    );
    let cases: Vec<Case> = vec![
        (
            "llama.attention.head_count_kv",
            Some(Value::U32(2)),
            |e| matches!(e, ModelError::TensorShape { name, .. } if name == "blk.0.attn_k.weight"),
        ),
        ("llama.attention.head_count_kv", Some(Value::U32(3)), |e| {
            matches!(e, ModelError::BadHyperparameter { .. })
        }),
        ("llama.embedding_length", Some(Value::U32(0)), |e| {
            matches!(e, ModelError::BadHyperparameter { .. })
        }),
        (
            "general.architecture",
            Some(Value::from("gpt2")),
            |e| matches!(e, ModelError::UnsupportedArchitecture { arch } if arch == "gpt2"),
        ),
        ("llama.block_count", None, |e| {
            e.to_string().contains("llama.block_count")
        }),
        ("llama.rope.freq_base", Some(Value::from("fast")), |e| {
            matches!(e, ModelError::Gguf(_))
        }),
    ];
    for (key, value, ok) in cases {
        let bytes = edit(key, value.clone(), "");
        let file = GgufFile::parse(bytes.as_slice()).unwrap();
        match Model::from_gguf(&file) {
            Err(e) if ok(&e) => {}
            other => panic!("{key} = {value:?}: {other:?}"),
        }
    }

    // Unsupported RoPE scaling is refused, not ignored.
    let mut w = GgufWriter::from_file(&good).unwrap();
    w.add_kv("llama.rope.scaling.type", Value::from("yarn"))
        .unwrap();
    let bytes = aligned(&w.to_bytes());
    let file = GgufFile::parse(bytes.as_slice()).unwrap();
    assert!(matches!(
        Model::from_gguf(&file),
        Err(ModelError::Unsupported { .. })
    ));
}

/// The bytes in an 8-byte-aligned buffer (as a file mapping would be).
struct Aligned(Vec<u64>, usize);

impl Aligned {
    fn as_slice(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.0)[..self.1]
    }
}

fn aligned(bytes: &[u8]) -> Aligned {
    let mut v = vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut v)[..bytes.len()].copy_from_slice(bytes);
    Aligned(v, bytes.len())
}

/// The real model: SmolLM2-135M-Instruct Q4_1 against llama.cpp.
#[test]
fn smollm2_q4_1_tracks_llama_cpp() {
    let path = spinel_runtime::cache::test_model();
    let model = Model::load(&path).unwrap();
    let reference = read_json(&testdata().join("smollm2/greedy.json"));
    let mut worst_top20 = 0.0f32;
    let mut compared = 0;
    for case in reference["cases"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let want_ids = ids(&case["generated_ids"]);
        let margins = floats(&case["margins"]);
        let mut state = model.new_state(Some(1024), KvType::F16).unwrap();
        let mut logits = model.forward(&mut state, &prompt).unwrap().to_vec();
        let mut case_worst = 0.0f32;
        for pair in case["first_step_top20"].as_array().unwrap() {
            let id = pair[0].as_u64().unwrap() as usize;
            let want = pair[1].as_f64().unwrap() as f32;
            case_worst = case_worst.max((logits[id] - want).abs());
        }
        println!(
            "smollm2 {:?} ({} tokens): top-20 within {case_worst:.4}",
            case["prompt"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(30)
                .collect::<String>(),
            prompt.len()
        );
        worst_top20 = worst_top20.max(case_worst);
        for (step, &want) in want_ids.iter().enumerate() {
            if margins[step] < 0.3 {
                break;
            }
            let tok = argmax(&logits) as u32;
            assert_eq!(tok, want, "{:?}: greedy step {step}", case["prompt"]);
            compared += 1;
            logits = model.forward(&mut state, &[tok]).unwrap().to_vec();
        }
    }
    println!(
        "smollm2: first-step top-20 logits within {worst_top20:.3} of llama.cpp; {compared} greedy steps equal"
    );
    // SmolLM2 has massive activations (|x| ~ 2e4 in the residual stream from
    // layer 11 on) that make Q8 activation blocks coarse, so last-bit
    // differences in rounding move its logits by tenths: llama.cpp itself
    // moves the top-20 logits of these prompts by 0.29–0.88 when flash
    // attention is turned off or the KV cache made f32, and Spinel's scalar
    // and AVX-512 kernels differ from each other by 0.12–0.41. Spinel's
    // distance to llama.cpp (0.16–0.73 measured) is inside that spread.
    assert!(worst_top20 < 1.0, "first-step logits off by {worst_top20}");
    assert!(compared >= 45, "only {compared} greedy steps compared");
}
