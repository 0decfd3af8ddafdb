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
//! The HF checkpoints are turned into GGUF files here by a minimal
//! test-only converter (safetensors → GGUF with llama.cpp's tensor names,
//! un-permuted q/k, `rope_freqs`) until `spinel convert` lands.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use spinel_quant::{GgmlType, Kernels};
use spinel_runtime::gguf::{GgufWriter, Value};
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

/// A minimal safetensors → GGUF converter for the test checkpoints (f32
/// safetensors, `LlamaForCausalLM` and `Llama4ForCausalLM`), following
/// llama.cpp's `convert_hf_to_gguf.py`.
mod hf {
    use super::*;

    pub struct Checkpoint {
        pub config: Json,
        tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    }

    impl Checkpoint {
        pub fn read(dir: &Path) -> Checkpoint {
            let config = read_json(&dir.join("config.json"));
            let bytes = std::fs::read(dir.join("model.safetensors")).expect("model.safetensors");
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let header: Json = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
            let data = &bytes[8 + n..];
            let mut tensors = HashMap::new();
            for (name, info) in header.as_object().unwrap() {
                if name == "__metadata__" {
                    continue;
                }
                assert_eq!(info["dtype"], "F32", "{name}");
                let shape: Vec<usize> = info["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                let off = info["data_offsets"].as_array().unwrap();
                let (a, b) = (
                    off[0].as_u64().unwrap() as usize,
                    off[1].as_u64().unwrap() as usize,
                );
                let v: Vec<f32> = data[a..b]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                tensors.insert(name.clone(), (shape, v));
            }
            Checkpoint { config, tensors }
        }

        fn get(&self, name: &str) -> &(Vec<usize>, Vec<f32>) {
            self.tensors
                .get(name)
                .unwrap_or_else(|| panic!("no {name}"))
        }

        fn cfg(&self, key: &str) -> usize {
            self.config[key].as_u64().unwrap_or_else(|| panic!("{key}")) as usize
        }

        fn cfg_f(&self, key: &str) -> f64 {
            self.config[key].as_f64().unwrap_or_else(|| panic!("{key}"))
        }

        pub fn is_llama4(&self) -> bool {
            self.config["architectures"][0] == "Llama4ForCausalLM"
        }

        /// The GGUF file, weights of two or more dimensions stored as `wtype`
        /// where their rows are whole blocks (F32 otherwise), vectors F32.
        /// `skip` leaves one tensor out (for error tests).
        pub fn to_gguf(&self, wtype: GgmlType, skip: Option<&str>) -> Vec<u8> {
            let arch = if self.is_llama4() { "llama4" } else { "llama" };
            let k = |s: &str| format!("{arch}.{s}");
            let n_layer = self.cfg("num_hidden_layers");
            let n_head = self.cfg("num_attention_heads");
            let n_kv = self.cfg("num_key_value_heads");
            let head_dim = self.cfg("head_dim");
            let theta = self.cfg_f("rope_theta");

            let mut w = GgufWriter::new();
            let mut kv = |key: String, v: Value<'static>| {
                w.add_kv(key, v).unwrap();
            };
            kv("general.architecture".into(), Value::from(arch));
            kv(
                k("context_length"),
                Value::U32(self.cfg("max_position_embeddings") as u32),
            );
            kv(
                k("embedding_length"),
                Value::U32(self.cfg("hidden_size") as u32),
            );
            kv(k("block_count"), Value::U32(n_layer as u32));
            let ff = if self.is_llama4() {
                "intermediate_size_mlp"
            } else {
                "intermediate_size"
            };
            kv(k("feed_forward_length"), Value::U32(self.cfg(ff) as u32));
            kv(k("attention.head_count"), Value::U32(n_head as u32));
            kv(k("attention.head_count_kv"), Value::U32(n_kv as u32));
            kv(k("attention.key_length"), Value::U32(head_dim as u32));
            kv(k("attention.value_length"), Value::U32(head_dim as u32));
            kv(k("rope.dimension_count"), Value::U32(head_dim as u32));
            kv(k("rope.freq_base"), Value::F32(theta as f32));
            kv(
                k("attention.layer_norm_rms_epsilon"),
                Value::F32(self.cfg_f("rms_norm_eps") as f32),
            );
            kv(k("vocab_size"), Value::U32(self.cfg("vocab_size") as u32));
            if self.is_llama4() {
                let c = &self.config;
                kv(
                    k("expert_count"),
                    Value::U32(self.cfg("num_local_experts") as u32),
                );
                kv(
                    k("expert_used_count"),
                    Value::U32(self.cfg("num_experts_per_tok") as u32),
                );
                kv(
                    k("expert_feed_forward_length"),
                    Value::U32(self.cfg("intermediate_size") as u32),
                );
                kv(
                    k("interleave_moe_layer_step"),
                    Value::U32(self.cfg("interleave_moe_layer_step") as u32),
                );
                kv(
                    k("attention.chunk_size"),
                    Value::U32(self.cfg("attention_chunk_size") as u32),
                );
                kv(
                    k("no_rope_layer_step"),
                    Value::U32(self.cfg("no_rope_layer_interval") as u32),
                );
                kv(
                    k("use_qk_norm"),
                    Value::Bool(c["use_qk_norm"].as_bool().unwrap()),
                );
                kv(
                    k("attention.temperature_length"),
                    Value::U32(self.cfg("floor_scale") as u32),
                );
                let scale = if c["attn_temperature_tuning"].as_bool().unwrap() {
                    self.cfg_f("attn_scale") as f32
                } else {
                    0.0
                };
                kv(k("attention.temperature_scale"), Value::F32(scale));
            }

            let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
            let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| {
                tensors.push((name, shape, data));
            };
            let lin = |name: &str| self.get(&format!("{name}.weight")).clone();
            put(
                "token_embd.weight".into(),
                lin("model.embed_tokens").0,
                lin("model.embed_tokens").1,
            );
            put(
                "output_norm.weight".into(),
                lin("model.norm").0,
                lin("model.norm").1,
            );
            if self.tensors.contains_key("lm_head.weight") {
                let (s, d) = lin("lm_head");
                put("output.weight".into(), s, d);
            }
            if let Some(factors) = self.rope_factors(head_dim, theta) {
                put("rope_freqs.weight".into(), vec![factors.len()], factors);
            }
            for il in 0..n_layer {
                let hf = |s: &str| format!("model.layers.{il}.{s}");
                let gg = |s: &str| format!("blk.{il}.{s}.weight");
                let (s, d) = lin(&hf("input_layernorm"));
                put(gg("attn_norm"), s, d);
                let (s, d) = lin(&hf("post_attention_layernorm"));
                put(gg("ffn_norm"), s, d);
                let (sq, q) = lin(&hf("self_attn.q_proj"));
                let (sk, kk) = lin(&hf("self_attn.k_proj"));
                if self.is_llama4() {
                    put(gg("attn_q"), sq, q);
                    put(gg("attn_k"), sk, kk);
                } else {
                    put(gg("attn_q"), sq.clone(), unpermute(&q, &sq, n_head));
                    put(gg("attn_k"), sk.clone(), unpermute(&kk, &sk, n_kv));
                }
                let (s, d) = lin(&hf("self_attn.v_proj"));
                put(gg("attn_v"), s, d);
                let (s, d) = lin(&hf("self_attn.o_proj"));
                put(gg("attn_output"), s, d);
                let mlp = if self.is_llama4() {
                    "feed_forward"
                } else {
                    "mlp"
                };
                if self
                    .tensors
                    .contains_key(&hf(&format!("{mlp}.gate_proj.weight")))
                {
                    for (h, g) in [
                        ("gate_proj", "ffn_gate"),
                        ("up_proj", "ffn_up"),
                        ("down_proj", "ffn_down"),
                    ] {
                        let (s, d) = lin(&hf(&format!("{mlp}.{h}")));
                        put(gg(g), s, d);
                    }
                } else {
                    let (s, d) = lin(&hf("feed_forward.router"));
                    put(gg("ffn_gate_inp"), s, d);
                    for (h, g) in [
                        ("gate_proj", "ffn_gate_shexp"),
                        ("up_proj", "ffn_up_shexp"),
                        ("down_proj", "ffn_down_shexp"),
                    ] {
                        let (s, d) = lin(&hf(&format!("feed_forward.shared_expert.{h}")));
                        put(gg(g), s, d);
                    }
                    // gate_up_proj [E, H, 2I] (x @ W): gate = [.., :I], up = [.., I:].
                    let (s, d) = self.get(&hf("feed_forward.experts.gate_up_proj")).clone();
                    let (e, h, i2) = (s[0], s[1], s[2]);
                    let i = i2 / 2;
                    let mut gate = Vec::with_capacity(e * i * h);
                    let mut up = Vec::with_capacity(e * i * h);
                    for ex in 0..e {
                        for (half, out) in [(0, &mut gate), (i, &mut up)] {
                            for r in 0..i {
                                for c in 0..h {
                                    out.push(d[(ex * h + c) * i2 + half + r]);
                                }
                            }
                        }
                    }
                    put(gg("ffn_gate_exps"), vec![e, i, h], gate);
                    put(gg("ffn_up_exps"), vec![e, i, h], up);
                    // down_proj [E, I, H] (x @ W) → rows of I per output.
                    let (s, d) = self.get(&hf("feed_forward.experts.down_proj")).clone();
                    let (e, i, h) = (s[0], s[1], s[2]);
                    let mut down = Vec::with_capacity(e * i * h);
                    for ex in 0..e {
                        for r in 0..h {
                            for c in 0..i {
                                down.push(d[(ex * i + c) * h + r]);
                            }
                        }
                    }
                    put(gg("ffn_down_exps"), vec![e, h, i], down);
                }
            }

            let kern = Kernels::get();
            for (name, shape, data) in tensors {
                if Some(name.as_str()) == skip {
                    continue;
                }
                // PyTorch shapes are outermost first; GGUF dims innermost first.
                let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
                let cols = shape[shape.len() - 1];
                let ty = if shape.len() >= 2 && wtype.row_size(cols).is_some() {
                    wtype
                } else {
                    GgmlType::F32
                };
                let row = ty.row_size(cols).unwrap();
                let mut bytes = vec![0u8; row * (data.len() / cols)];
                // Quantize through an aligned buffer: block structs need it.
                let mut aligned = vec![0u32; row.div_ceil(4)];
                for (x, out) in data.chunks_exact(cols).zip(bytes.chunks_exact_mut(row)) {
                    let buf = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut aligned)[..row];
                    (kern.of(ty).from_float)(x, buf);
                    out.copy_from_slice(buf);
                }
                w.add_tensor(name, &dims, ty, bytes).unwrap();
            }
            w.to_bytes()
        }

        /// llama.cpp's `rope_freqs` for llama3 RoPE scaling: per frequency,
        /// the factor it is divided by.
        fn rope_factors(&self, head_dim: usize, theta: f64) -> Option<Vec<f32>> {
            let rs = &self.config["rope_scaling"];
            if rs.is_null() || rs["rope_type"] != "llama3" {
                return None;
            }
            let factor = rs["factor"].as_f64().unwrap();
            let low = rs["low_freq_factor"].as_f64().unwrap();
            let high = rs["high_freq_factor"].as_f64().unwrap();
            let old = rs["original_max_position_embeddings"].as_f64().unwrap();
            let (low_wl, high_wl) = (old / low, old / high);
            Some(
                (0..head_dim / 2)
                    .map(|i| {
                        let freq =
                            (1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)) as f64;
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_wl {
                            1.0
                        } else if wavelen > low_wl {
                            factor as f32
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                        }
                    })
                    .collect(),
            )
        }
    }

    /// Undoes HF's rotate-half permutation of q/k rows (llama.cpp's
    /// `LlamaModel.permute`): row `h·d + 2i + j` ← row `h·d + j·d/2 + i`.
    fn unpermute(w: &[f32], shape: &[usize], n_head: usize) -> Vec<f32> {
        let (rows, cols) = (shape[0], shape[1]);
        let d = rows / n_head;
        let mut out = vec![0.0; w.len()];
        for h in 0..n_head {
            for i in 0..d / 2 {
                for j in 0..2 {
                    let dst = h * d + 2 * i + j;
                    let src = h * d + j * (d / 2) + i;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }
}

/// Writes the GGUF of model `name` with weights of `wtype` once per test
/// binary run and returns its path.
fn gguf_path(name: &str, wtype: GgmlType) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("forward-{name}-{wtype}.gguf"));
    let ck = hf::Checkpoint::read(&testdata().join("models").join(name));
    let bytes = ck.to_gguf(wtype, None);
    // Each test writes its own file under a unique temporary name, then
    // renames it into place, so concurrent tests never read a partial file.
    let tmp = path
        .with_extension(format!("{:?}.tmp", std::thread::current().id()).replace(['(', ')'], ""));
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
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
    let model = Model::load(gguf_path(name, GgmlType::F32)).unwrap();

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
    let f16_w = last_logit_error(
        &Model::load(gguf_path(name, GgmlType::F16)).unwrap(),
        &reference,
        KvType::F32,
    );
    let q8_w = last_logit_error(
        &Model::load(gguf_path(name, GgmlType::Q8_0)).unwrap(),
        &reference,
        KvType::F32,
    );
    let q8_kv_s = q8_kv.map_or("n/a".to_string(), |e| format!("{e:.2e}"));
    println!(
        "{name}: max |Δlogit| f32 {worst_last:.2e} (16 steps {worst_step:.2e}); \
         f16 KV {f16_kv:.2e}; q8_0 KV {q8_kv_s}; f16 weights {f16_w:.2e}; q8_0 weights {q8_w:.2e}"
    );
    assert!(f16_kv < 2e-2, "{name}: f16 KV cache error {f16_kv}");
    assert!(
        q8_kv.is_none_or(|e| e < 0.2),
        "{name}: q8_0 KV cache error {q8_kv:?}"
    );
    assert!(f16_w < 2e-2, "{name}: f16 weights error {f16_w}");
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
    let model = Model::load(gguf_path(name, GgmlType::F32)).unwrap();
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
    let model = Model::load(gguf_path(name, GgmlType::F32)).unwrap();
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
    let other = Model::load(gguf_path("a_llama1", GgmlType::F32)).unwrap();
    let mut foreign = other.new_state(Some(8), KvType::F32).unwrap();
    assert!(matches!(
        model.forward(&mut foreign, &[1]),
        Err(ModelError::StateMismatch)
    ));

    match model.new_state(Some(0), KvType::F32) {
        Err(ModelError::BadStateSize { .. }) => {}
        other => panic!("zero context: {other:?}"),
    }
    // Q8_0 needs heads that are whole blocks of 32 (this model has 16).
    match model.new_state(Some(8), KvType::Q8_0) {
        Err(ModelError::BadStateSize { .. }) => {}
        other => panic!("q8_0 KV with head size 16: {other:?}"),
    }
    assert_eq!(KvType::from_name("F16"), Some(KvType::F16));
    assert_eq!(KvType::from_name("q8_0"), Some(KvType::Q8_0));
    assert_eq!(KvType::from_name("q4_0"), None);
}

#[test]
fn bad_files_give_named_errors() {
    use spinel_runtime::gguf::GgufFile;
    let ck = hf::Checkpoint::read(&testdata().join("models").join("c_llama3"));

    // A missing tensor.
    let bytes = aligned(&ck.to_gguf(GgmlType::F32, Some("blk.1.attn_v.weight")));
    let file = GgufFile::parse(bytes.as_slice()).unwrap();
    match Model::from_gguf(&file) {
        Err(e @ ModelError::MissingTensor { .. }) => {
            assert!(e.to_string().contains("blk.1.attn_v.weight"))
        }
        other => panic!("missing tensor: {other:?}"),
    }
    // No output norm either.
    let bytes = aligned(&ck.to_gguf(GgmlType::F32, Some("output_norm.weight")));
    let file = GgufFile::parse(bytes.as_slice()).unwrap();
    assert!(matches!(
        Model::from_gguf(&file),
        Err(ModelError::MissingTensor { .. })
    ));

    // Metadata that disagrees with the tensors, an unknown architecture, a
    // missing hyperparameter.
    let good = aligned(&ck.to_gguf(GgmlType::F32, None));
    let good = GgufFile::parse(good.as_slice()).unwrap();
    let edit = |key: &str, value: Option<Value<'static>>| -> Aligned {
        let mut w = GgufWriter::new();
        for (k, v) in good.metadata().iter() {
            if k == key {
                if let Some(v) = &value {
                    w.add_kv(k, v.clone()).unwrap();
                }
            } else {
                w.add_kv(k, v.clone()).unwrap();
            }
        }
        for t in good.tensors() {
            w.add_tensor(t.name(), t.dims(), t.ggml_type(), t.data())
                .unwrap();
        }
        aligned(&w.to_bytes())
    };
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
        let bytes = edit(key, value.clone());
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
    let path = match std::env::var_os("SPINEL_TEST_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is not set");
            Path::new(&home).join(".cache/spinel/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    assert!(
        path.is_file(),
        "the SmolLM2 test model is missing at {}: run scripts/fetch-model.sh \
         (or set SPINEL_TEST_MODEL)",
        path.display()
    );
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
