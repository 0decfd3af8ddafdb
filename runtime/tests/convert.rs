//! `spinel convert` on the shared tiny models and on checkpoints made here:
//! metadata, tensor names, shapes and types, and tensor data checked against
//! the HF tensors (q/k un-permutation verified by re-permuting, Llama 4
//! experts by transposing back, `rope_freqs` against transformers' scaled
//! inverse frequencies); out types, shards, F16/BF16 inputs, tokenizers,
//! progress reports, and a clear error for each kind of bad input.
//!
//! The comparison with llama.cpp's own converter, and loading in llama.cpp,
//! are in `convert_llama_cpp.rs`.

#[path = "convert/common.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;
use safetensors::Dtype as StDtype;
use serde_json::{Value as Json, json};
use spinel_quant::{GgmlType, Isa, Kernels, bf16, f16};
use spinel_runtime::convert::{
    Conversion, ConvertError, ConvertOptions, OutType, ProgressEvent, convert,
};
use spinel_runtime::gguf::{GgufFile, TensorInfo, Value};
use spinel_runtime::tokenizer::Tokenizer;

fn opts(outtype: OutType) -> ConvertOptions {
    ConvertOptions {
        outtype,
        name: None,
    }
}

/// Converts `dir` into the scratch folder and returns the file's bytes.
fn convert_to_bytes(dir: &Path, outtype: OutType, tag: &str) -> Vec<u8> {
    let out = scratch(tag).join("out.gguf");
    convert(dir, &out, &opts(outtype)).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(
        !out.with_file_name("out.gguf.part").exists(),
        "the .part file must be renamed"
    );
    std::fs::read(&out).unwrap()
}

fn f32s(t: &TensorInfo<'_>) -> Vec<f32> {
    assert_eq!(t.ggml_type(), GgmlType::F32, "{}", t.name());
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn cfg_u64(cfg: &Json, key: &str) -> Option<u64> {
    cfg.get(key).and_then(Json::as_u64)
}

/// The GGUF tensors (name → HF source and how) a config implies, written
/// out independently of the converter.
fn expected_tensors(cfg: &Json) -> BTreeMap<String, Vec<u64>> {
    let llama4 = cfg["architectures"][0] == "Llama4ForCausalLM";
    let h = cfg_u64(cfg, "hidden_size").unwrap();
    let heads = cfg_u64(cfg, "num_attention_heads").unwrap();
    let kv = cfg_u64(cfg, "num_key_value_heads").unwrap();
    let hd = cfg_u64(cfg, "head_dim").unwrap();
    let vocab = cfg_u64(cfg, "vocab_size").unwrap();
    let ff = if llama4 {
        cfg_u64(cfg, "intermediate_size_mlp").unwrap()
    } else {
        cfg_u64(cfg, "intermediate_size").unwrap()
    };
    let mut m = BTreeMap::new();
    m.insert("token_embd.weight".to_string(), vec![h, vocab]);
    m.insert("output_norm.weight".to_string(), vec![h]);
    if !cfg["tie_word_embeddings"].as_bool().unwrap() {
        m.insert("output.weight".to_string(), vec![h, vocab]);
    }
    let rope = &cfg["rope_parameters"];
    if rope["rope_type"] == "llama3" {
        m.insert("rope_freqs.weight".to_string(), vec![hd / 2]);
    }
    let moe: Vec<u64> = if llama4 {
        cfg["moe_layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    } else {
        vec![]
    };
    for i in 0..cfg_u64(cfg, "num_hidden_layers").unwrap() {
        let mut add = |n: &str, d: Vec<u64>| m.insert(format!("blk.{i}.{n}.weight"), d);
        add("attn_norm", vec![h]);
        add("ffn_norm", vec![h]);
        add("attn_q", vec![h, heads * hd]);
        add("attn_k", vec![h, kv * hd]);
        add("attn_v", vec![h, kv * hd]);
        add("attn_output", vec![heads * hd, h]);
        if moe.contains(&i) {
            let e = cfg_u64(cfg, "num_local_experts").unwrap();
            let fe = cfg_u64(cfg, "intermediate_size").unwrap();
            add("ffn_gate_inp", vec![h, e]);
            add("ffn_gate_exps", vec![h, fe, e]);
            add("ffn_up_exps", vec![h, fe, e]);
            add("ffn_down_exps", vec![fe, h, e]);
            add("ffn_gate_shexp", vec![h, fe]);
            add("ffn_up_shexp", vec![h, fe]);
            add("ffn_down_shexp", vec![fe, h]);
        } else {
            add("ffn_gate", vec![h, ff]);
            add("ffn_up", vec![h, ff]);
            add("ffn_down", vec![ff, h]);
        }
    }
    m
}

/// The HF tensor a GGUF tensor was made from, reconstructed from the GGUF
/// data: q/k re-permuted to HF's layout, experts transposed back. Returns
/// (HF name, values in HF layout).
fn reconstruct_hf(cfg: &Json, name: &str, dims: &[u64], values: &[f32]) -> Vec<(String, Vec<f32>)> {
    let llama4 = cfg["architectures"][0] == "Llama4ForCausalLM";
    let simple = |hf: &str| vec![(hf.to_string(), values.to_vec())];
    match name {
        "token_embd.weight" => return simple("model.embed_tokens.weight"),
        "output_norm.weight" => return simple("model.norm.weight"),
        "output.weight" => return simple("lm_head.weight"),
        _ => {}
    }
    let rest = name.strip_prefix("blk.").unwrap();
    let (i, what) = rest.split_once('.').unwrap();
    let what = what.strip_suffix(".weight").unwrap();
    let p = format!("model.layers.{i}.");
    let ffn = if llama4 { "feed_forward" } else { "mlp" };
    let hf = |s: &str| format!("{p}{s}");
    let one = |s: &str| vec![(hf(s), values.to_vec())];
    match what {
        "attn_norm" => one("input_layernorm.weight"),
        "ffn_norm" => one("post_attention_layernorm.weight"),
        "attn_v" => one("self_attn.v_proj.weight"),
        "attn_output" => one("self_attn.o_proj.weight"),
        "attn_q" | "attn_k" => {
            let src = if what == "attn_q" {
                "self_attn.q_proj.weight"
            } else {
                "self_attn.k_proj.weight"
            };
            if llama4 {
                return one(src);
            }
            // Re-permute: GGUF row h·d + 2i + t holds HF row h·d + t·d/2 + i.
            let (cols, rows) = (dims[0] as usize, dims[1] as usize);
            let d = cfg_u64(cfg, "head_dim").unwrap() as usize;
            let mut out = vec![0f32; values.len()];
            for h in 0..rows / d {
                for i in 0..d / 2 {
                    for t in 0..2 {
                        let g = h * d + 2 * i + t;
                        let s = h * d + t * (d / 2) + i;
                        out[s * cols..(s + 1) * cols]
                            .copy_from_slice(&values[g * cols..(g + 1) * cols]);
                    }
                }
            }
            vec![(hf(src), out)]
        }
        "ffn_gate" => one(&format!("{ffn}.gate_proj.weight")),
        "ffn_up" => one(&format!("{ffn}.up_proj.weight")),
        "ffn_down" => one(&format!("{ffn}.down_proj.weight")),
        "ffn_gate_inp" => one("feed_forward.router.weight"),
        "ffn_gate_shexp" => one("feed_forward.shared_expert.gate_proj.weight"),
        "ffn_up_shexp" => one("feed_forward.shared_expert.up_proj.weight"),
        "ffn_down_shexp" => one("feed_forward.shared_expert.down_proj.weight"),
        // Checked as a pair in `llama4_experts_are_transposed_back`.
        "ffn_gate_exps" | "ffn_up_exps" | "ffn_down_exps" => vec![],
        other => panic!("unexpected tensor kind {other}"),
    }
}

#[test]
fn every_test_model_converts_to_f32_with_hf_values() {
    for dir in test_models() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let cfg = read_json(&dir.join("config.json"));
        let hf = read_safetensors(&dir.join("model.safetensors"));
        let bytes = convert_to_bytes(&dir, OutType::F32, &format!("f32-{name}"));
        let f = GgufFile::parse(&bytes).unwrap();
        let md = f.metadata();
        let llama4 = cfg["architectures"][0] == "Llama4ForCausalLM";
        let a = if llama4 { "llama4" } else { "llama" };
        let k = |s: &str| format!("{a}.{s}");

        // Metadata, from the config.
        assert_eq!(md.get_str("general.architecture").unwrap(), a);
        assert_eq!(md.get_str("general.name").unwrap(), name);
        assert_eq!(md.get_u32("general.file_type").unwrap(), 0);
        assert_eq!(md.get_u32("general.quantization_version").unwrap(), 2);
        let u = |key: &str| u64::from(md.get_u32(&k(key)).unwrap());
        assert_eq!(
            u("block_count"),
            cfg_u64(&cfg, "num_hidden_layers").unwrap()
        );
        assert_eq!(
            u("context_length"),
            cfg_u64(&cfg, "max_position_embeddings").unwrap()
        );
        assert_eq!(u("embedding_length"), cfg_u64(&cfg, "hidden_size").unwrap());
        let ff_key = if llama4 {
            "intermediate_size_mlp"
        } else {
            "intermediate_size"
        };
        assert_eq!(u("feed_forward_length"), cfg_u64(&cfg, ff_key).unwrap());
        assert_eq!(
            u("attention.head_count"),
            cfg_u64(&cfg, "num_attention_heads").unwrap()
        );
        assert_eq!(
            u("attention.head_count_kv"),
            cfg_u64(&cfg, "num_key_value_heads").unwrap()
        );
        assert_eq!(
            u("attention.key_length"),
            cfg_u64(&cfg, "head_dim").unwrap()
        );
        assert_eq!(
            u("attention.value_length"),
            cfg_u64(&cfg, "head_dim").unwrap()
        );
        assert_eq!(
            u("rope.dimension_count"),
            cfg_u64(&cfg, "head_dim").unwrap()
        );
        assert_eq!(u("vocab_size"), cfg_u64(&cfg, "vocab_size").unwrap());
        assert_eq!(
            md.get_f32(&k("attention.layer_norm_rms_epsilon")).unwrap(),
            cfg["rms_norm_eps"].as_f64().unwrap() as f32
        );
        assert_eq!(
            md.get_f32(&k("rope.freq_base")).unwrap(),
            cfg["rope_theta"].as_f64().unwrap() as f32
        );
        assert!(!md.contains_key(&k("rope.scaling.type")));
        assert!(
            !md.keys().any(|k| k.starts_with("tokenizer.")),
            "no tokenizer files, so no tokenizer metadata"
        );
        if llama4 {
            assert_eq!(
                u("expert_count"),
                cfg_u64(&cfg, "num_local_experts").unwrap()
            );
            assert_eq!(
                u("expert_used_count"),
                cfg_u64(&cfg, "num_experts_per_tok").unwrap()
            );
            assert_eq!(
                u("expert_feed_forward_length"),
                cfg_u64(&cfg, "intermediate_size").unwrap()
            );
            assert_eq!(
                u("interleave_moe_layer_step"),
                cfg_u64(&cfg, "interleave_moe_layer_step").unwrap()
            );
            // Spinel's Llama 4 keys.
            assert_eq!(
                u("attention.chunk_size"),
                cfg_u64(&cfg, "attention_chunk_size").unwrap()
            );
            assert_eq!(
                u("no_rope_layer_step"),
                cfg_u64(&cfg, "no_rope_layer_interval").unwrap()
            );
            assert_eq!(
                u("attention.temperature_length"),
                cfg_u64(&cfg, "floor_scale").unwrap()
            );
            assert_eq!(
                md.get_f32(&k("attention.temperature_scale")).unwrap(),
                cfg["attn_scale"].as_f64().unwrap() as f32
            );
            assert!(md.get_bool(&k("use_qk_norm")).unwrap());
            assert!(!md.contains_key(&k("attention.sliding_window")));
        }

        // Tensor names and shapes, from the config.
        let expected = expected_tensors(&cfg);
        let got: BTreeMap<String, Vec<u64>> = f
            .tensors()
            .iter()
            .map(|t| (t.name().to_string(), t.dims().to_vec()))
            .collect();
        assert_eq!(got, expected, "{name}: tensor names and shapes");

        // Data: every HF tensor comes back exactly.
        let mut checked = BTreeSet::new();
        for t in f.tensors() {
            assert_eq!(t.ggml_type(), GgmlType::F32, "{name}: {}", t.name());
            if t.name() == "rope_freqs.weight" {
                continue;
            }
            let values = f32s(t);
            for (hf_name, v) in reconstruct_hf(&cfg, t.name(), t.dims(), &values) {
                let src = hf
                    .get(&hf_name)
                    .unwrap_or_else(|| panic!("{name}: no {hf_name}"));
                assert_eq!(src.values(), v, "{name}: {} vs {hf_name}", t.name());
                checked.insert(hf_name);
            }
        }
        if llama4 {
            llama4_experts_are_transposed_back(&f, &hf, &mut checked);
        }
        let all: BTreeSet<String> = hf
            .keys()
            .filter(|n| n.as_str() != "lm_head.weight" || got.contains_key("output.weight"))
            .cloned()
            .collect();
        assert_eq!(checked, all, "{name}: every HF tensor is in the file");
        if !got.contains_key("output.weight") {
            assert!(
                !hf.contains_key("lm_head.weight"),
                "{name}: untied model lost its lm_head"
            );
        }

        // rope_freqs: transformers' scaled inverse frequencies are the
        // unscaled ones divided by these factors.
        if let Some(t) = f.tensor("rope_freqs.weight") {
            let factors = f32s(t);
            let reference = read_json(&dir.join("reference.json"));
            let inv_freq = reference["rope"]["inv_freq"].as_array().unwrap();
            let theta = cfg["rope_theta"].as_f64().unwrap();
            let d = cfg_u64(&cfg, "head_dim").unwrap() as f64;
            assert_eq!(factors.len(), inv_freq.len());
            for (i, (f, r)) in factors.iter().zip(inv_freq).enumerate() {
                let base = 1.0 / theta.powf(2.0 * i as f64 / d);
                let scaled = base / *f as f64;
                let r = r.as_f64().unwrap();
                assert!(
                    (scaled - r).abs() <= 1e-6 * r.abs(),
                    "{name}: rope_freqs[{i}] = {f}: {scaled} vs transformers' {r}"
                );
            }
        }
    }
}

fn llama4_experts_are_transposed_back(
    f: &GgufFile<'_>,
    hf: &BTreeMap<String, common::HfTensor>,
    checked: &mut BTreeSet<String>,
) {
    for t in f
        .tensors()
        .iter()
        .filter(|t| t.name().ends_with("ffn_gate_exps.weight"))
    {
        let i: usize = t.name()[4..].split('.').next().unwrap().parse().unwrap();
        let p = format!("model.layers.{i}.feed_forward.experts.");
        let gate_up = &hf[&format!("{p}gate_up_proj")];
        let down = &hf[&format!("{p}down_proj")];
        let (e, h, two_i) = (gate_up.shape[0], gate_up.shape[1], gate_up.shape[2]);
        let fe = two_i / 2;
        let gu = gate_up.values();
        let dn = down.values();
        let gate = f32s(f.tensor(&format!("blk.{i}.ffn_gate_exps.weight")).unwrap());
        let up = f32s(f.tensor(&format!("blk.{i}.ffn_up_exps.weight")).unwrap());
        let dexp = f32s(f.tensor(&format!("blk.{i}.ffn_down_exps.weight")).unwrap());
        for x in 0..e {
            for r in 0..fe {
                for c in 0..h {
                    // GGUF [E][I][H] vs HF gate_up [E][H][2I], gate half first.
                    assert_eq!(gate[(x * fe + r) * h + c], gu[(x * h + c) * two_i + r]);
                    assert_eq!(up[(x * fe + r) * h + c], gu[(x * h + c) * two_i + fe + r]);
                    // GGUF down [E][H][I] vs HF down_proj [E][I][H].
                    assert_eq!(dexp[(x * h + c) * fe + r], dn[(x * fe + r) * h + c]);
                }
            }
        }
        checked.insert(format!("{p}gate_up_proj"));
        checked.insert(format!("{p}down_proj"));
    }
}

#[test]
fn out_types_follow_llama_cpp_rules_and_round_correctly() {
    let scalar = Kernels::for_isa(Isa::Scalar).unwrap();
    for dir in test_models() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let f32_bytes = convert_to_bytes(&dir, OutType::F32, &format!("ref-{name}"));
        let reference = GgufFile::parse(&f32_bytes).unwrap();
        for outtype in [OutType::F16, OutType::BF16, OutType::Q8_0] {
            let bytes = convert_to_bytes(&dir, outtype, &format!("{outtype}-{name}"));
            let f = GgufFile::parse(&bytes).unwrap();
            assert_eq!(
                f.metadata().get_u32("general.file_type").unwrap(),
                match outtype {
                    OutType::F16 => 1,
                    OutType::BF16 => 32,
                    OutType::Q8_0 => 7,
                    OutType::F32 => 0,
                }
            );
            assert_eq!(f.tensors().len(), reference.tensors().len());
            for (t, r) in f.tensors().iter().zip(reference.tensors()) {
                assert_eq!((t.name(), t.dims()), (r.name(), r.dims()));
                let n = t.name();
                let keep_f32 = t.dims().len() == 1
                    || n.ends_with("_norm.weight")
                    || n.ends_with("ffn_gate_inp.weight");
                let want = match outtype {
                    _ if keep_f32 => GgmlType::F32,
                    OutType::Q8_0 if t.dims()[0] % 32 != 0 => GgmlType::F16,
                    OutType::Q8_0 => GgmlType::Q8_0,
                    OutType::F16 => GgmlType::F16,
                    OutType::BF16 => GgmlType::BF16,
                    OutType::F32 => GgmlType::F32,
                };
                assert_eq!(t.ggml_type(), want, "{name} {outtype}: {n}");
                // The data is the f32 file's, converted by the reference
                // (scalar, ggml-exact) kernels row by row.
                let row = t.dims()[0] as usize;
                let rb = want.row_size(row).unwrap();
                let mut expect = vec![0u8; t.data().len()];
                for (src, dst) in f32s(r).chunks_exact(row).zip(expect.chunks_exact_mut(rb)) {
                    (scalar.of(want).from_float)(src, dst);
                }
                assert!(expect == t.data(), "{name} {outtype}: {n} data");
            }
        }
    }
    // And the conversions themselves are ggml's: round to nearest even.
    let x = [1.0f32 + f32::EPSILON, 65520.0, -3.3e-8, 1.0 + 1.0 / 256.0];
    let mut h = [0u8; 8];
    (scalar.of(GgmlType::F16).from_float)(&x, &mut h);
    let want: Vec<u8> = x
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect();
    assert_eq!(h.to_vec(), want);
    let mut b = [0u8; 8];
    (scalar.of(GgmlType::BF16).from_float)(&x, &mut b);
    let want: Vec<u8> = x
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect();
    assert_eq!(b.to_vec(), want);
}

#[test]
fn q8_0_output_stays_close_to_the_weights() {
    let dir = testdata().join("models/c_llama3");
    let hf = read_safetensors(&dir.join("model.safetensors"));
    let bytes = convert_to_bytes(&dir, OutType::Q8_0, "q8-close");
    let f = GgufFile::parse(&bytes).unwrap();
    let t = f.tensor("token_embd.weight").unwrap();
    assert_eq!(t.ggml_type(), GgmlType::Q8_0);
    let mut deq = vec![0f32; t.n_elements() as usize];
    (Kernels::get().of(GgmlType::Q8_0).to_float)(t.data(), &mut deq);
    let src = hf["model.embed_tokens.weight"].values();
    for (block, (d, s)) in deq.chunks(32).zip(src.chunks(32)).enumerate() {
        let amax = s.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in d.iter().zip(s) {
            // Half a quantization step, plus the f16 rounding of the scale.
            assert!(
                (a - b).abs() <= amax / 127.0 * 0.5 + amax * 1e-3,
                "block {block}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn sharded_checkpoint_converts_like_the_single_file() {
    let src = testdata().join("models/d_llama3_1");
    let dir = scratch("sharded");
    copy_configs(&src, &dir);
    let tensors = read_safetensors(&src.join("model.safetensors"));
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    let mut weight_map = serde_json::Map::new();
    for (i, (n, t)) in tensors.into_iter().enumerate() {
        let file = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        weight_map.insert(n.clone(), json!(file));
        if i % 2 == 0 {
            a.insert(n, t)
        } else {
            b.insert(n, t)
        };
    }
    write_safetensors(&dir.join("model-00001-of-00002.safetensors"), &a);
    write_safetensors(&dir.join("model-00002-of-00002.safetensors"), &b);
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let named = |outtype| ConvertOptions {
        outtype,
        name: Some("same".into()),
    };
    for outtype in [OutType::F32, OutType::Q8_0] {
        let out1 = scratch(&format!("sharded-out-{outtype}")).join("a.gguf");
        let out2 = out1.with_file_name("b.gguf");
        convert(&dir, &out1, &named(outtype)).unwrap();
        convert(&src, &out2, &named(outtype)).unwrap();
        assert!(
            std::fs::read(&out1).unwrap() == std::fs::read(&out2).unwrap(),
            "{outtype}: sharded and single-file checkpoints give different files"
        );
    }

    // The index must agree with the shards.
    let mut bad = index.clone();
    bad["weight_map"]["model.norm.weight"] = json!("model-00002-of-00002.safetensors");
    let moved_from_first = a.contains_key("model.norm.weight");
    std::fs::write(dir.join("model.safetensors.index.json"), bad.to_string()).unwrap();
    let e = Conversion::plan(&dir, &opts(OutType::F32));
    if moved_from_first {
        assert!(
            matches!(e, Err(ConvertError::IndexMismatch { .. })),
            "{:?}",
            e.err()
        );
    }
    bad["weight_map"]["model.layers.9.nothing"] = json!("model-00001-of-00002.safetensors");
    std::fs::write(dir.join("model.safetensors.index.json"), bad.to_string()).unwrap();
    match Conversion::plan(&dir, &opts(OutType::F32)) {
        Err(e @ ConvertError::IndexMismatch { .. }) => {
            assert!(e.to_string().contains("model.layers.9.nothing"), "{e}")
        }
        other => panic!("expected an index mismatch, got {:?}", other.err()),
    }
    // A missing shard.
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    match Conversion::plan(&dir, &opts(OutType::F32)) {
        Err(e @ ConvertError::MissingFile { .. }) => {
            assert!(
                e.to_string().contains("model-00002-of-00002.safetensors"),
                "{e}"
            )
        }
        other => panic!("expected a missing shard, got {:?}", other.err()),
    }
}

/// The tiny Llama 3 model with its weights stored as `dtype`.
fn checkpoint_as(dtype: StDtype, tag: &str) -> (std::path::PathBuf, BTreeMap<String, HfTensor>) {
    let src = testdata().join("models/c_llama3");
    let dir = scratch(tag);
    copy_configs(&src, &dir);
    let mut t = read_safetensors(&src.join("model.safetensors"));
    for v in t.values_mut() {
        let vals = v.values();
        v.bytes = match dtype {
            StDtype::F16 => vals
                .iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect(),
            StDtype::BF16 => vals
                .iter()
                .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                .collect(),
            _ => unreachable!(),
        };
        v.dtype = dtype;
    }
    write_safetensors(&dir.join("model.safetensors"), &t);
    (dir, t)
}

#[test]
fn f16_and_bf16_checkpoints_convert_losslessly() {
    for (dtype, outtype, ggml) in [
        (StDtype::F16, OutType::F16, GgmlType::F16),
        (StDtype::BF16, OutType::BF16, GgmlType::BF16),
    ] {
        let (dir, hf) = checkpoint_as(dtype, &format!("in-{outtype}"));
        let bytes = convert_to_bytes(&dir, outtype, &format!("in-{outtype}-out"));
        let f = GgufFile::parse(&bytes).unwrap();
        let t = f.tensor("blk.0.attn_v.weight").unwrap();
        assert_eq!(t.ggml_type(), ggml);
        assert_eq!(
            t.data(),
            &hf["model.layers.0.self_attn.v_proj.weight"].bytes[..]
        );
        // Norms widen exactly to f32.
        let n = f.tensor("blk.1.ffn_norm.weight").unwrap();
        let widened: Vec<f32> = hf["model.layers.1.post_attention_layernorm.weight"]
            .bytes
            .chunks_exact(2)
            .map(|c| {
                let bits = u16::from_le_bytes([c[0], c[1]]);
                if dtype == StDtype::F16 {
                    f16::from_bits(bits).to_f32()
                } else {
                    bf16::from_bits(bits).to_f32()
                }
            })
            .collect();
        assert_eq!(f32s(n), widened);
    }
}

#[test]
fn progress_reports_every_tensor_and_every_byte() {
    let dir = testdata().join("models/f_llama4_text");
    let conv = Conversion::plan(&dir, &opts(OutType::Q8_0)).unwrap();
    let out = scratch("progress").join("p.gguf");
    let mut starts = Vec::new();
    let mut last = 0u64;
    let total = conv.data_bytes();
    let size = conv
        .write(&out, &mut |p| {
            assert!(p.bytes_done >= last, "progress went backwards");
            assert_eq!(p.bytes_total, total);
            last = p.bytes_done;
            if p.event == ProgressEvent::Tensor {
                starts.push(p.name.to_string());
            }
        })
        .unwrap();
    assert_eq!(last, total);
    let names: Vec<String> = conv.tensors().into_iter().map(|t| t.name).collect();
    assert_eq!(starts, names);
    assert_eq!(size, std::fs::metadata(&out).unwrap().len());
    assert!(
        conv.notes().iter().any(|n| n.contains("no tokenizer.json")),
        "{:?}",
        conv.notes()
    );
    assert_eq!(conv.hf_architecture(), "Llama4ForCausalLM");
}

/// A scratch copy of a tiny model whose config has `edit` applied and
/// whose tensors have `edit_tensors` applied.
fn altered(
    model: &str,
    tag: &str,
    edit: impl FnOnce(&mut Json),
    edit_tensors: impl FnOnce(&mut BTreeMap<String, HfTensor>),
) -> std::path::PathBuf {
    let src = testdata().join("models").join(model);
    let dir = scratch(tag);
    copy_configs(&src, &dir);
    let mut cfg = read_json(&src.join("config.json"));
    edit(&mut cfg);
    write_config(&dir, &cfg);
    let mut t = read_safetensors(&src.join("model.safetensors"));
    edit_tensors(&mut t);
    write_safetensors(&dir.join("model.safetensors"), &t);
    dir
}

fn plan_err(dir: &Path) -> ConvertError {
    match Conversion::plan(dir, &opts(OutType::F16)) {
        Ok(_) => panic!("{}: expected an error", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn bad_input_gets_a_named_error() {
    let e = plan_err(&altered(
        "c_llama3",
        "arch",
        |c| c["architectures"] = json!(["MistralForCausalLM"]),
        |_| {},
    ));
    assert!(
        matches!(e, ConvertError::UnsupportedArchitecture { .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("MistralForCausalLM") && e.to_string().contains("LlamaForCausalLM"),
        "{e}"
    );

    let e = plan_err(&altered(
        "c_llama3",
        "missing",
        |_| {},
        |t| {
            t.remove("model.layers.1.mlp.up_proj.weight");
        },
    ));
    assert!(
        matches!(&e, ConvertError::MissingTensor { tensor } if tensor == "model.layers.1.mlp.up_proj.weight"),
        "{e:?}"
    );

    let e = plan_err(&altered(
        "c_llama3",
        "shape",
        |c| c["intermediate_size"] = json!(96),
        |_| {},
    ));
    match &e {
        ConvertError::ShapeMismatch {
            tensor,
            expected,
            found,
        } => {
            assert_eq!(tensor, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!(
                (expected.clone(), found.clone()),
                (vec![96, 64], vec![192, 64])
            );
        }
        _ => panic!("{e:?}"),
    }

    let e = plan_err(&altered(
        "c_llama3",
        "extra",
        |_| {},
        |t| {
            t.insert(
                "model.layers.0.mlp.extra.weight".into(),
                HfTensor::f32(vec![2], &[1.0, 2.0]),
            );
        },
    ));
    assert!(
        matches!(&e, ConvertError::UnexpectedTensor { tensor } if tensor == "model.layers.0.mlp.extra.weight"),
        "{e:?}"
    );

    // Untied but no lm_head.
    let e = plan_err(&altered(
        "c_llama3",
        "nohead",
        |_| {},
        |t| {
            t.remove("lm_head.weight");
        },
    ));
    assert!(
        matches!(&e, ConvertError::MissingTensor { tensor } if tensor == "lm_head.weight"),
        "{e:?}"
    );

    let e = plan_err(&altered(
        "c_llama3",
        "dtype",
        |_| {},
        |t| {
            t.insert(
                "model.layers.0.mlp.up_proj.weight".into(),
                HfTensor {
                    dtype: StDtype::I64,
                    shape: vec![192, 64],
                    bytes: vec![0; 192 * 64 * 8],
                },
            );
        },
    ));
    assert!(
        matches!(&e, ConvertError::UnsupportedDtype { tensor, .. } if tensor == "model.layers.0.mlp.up_proj.weight"),
        "{e:?}"
    );

    let e = plan_err(&altered(
        "d_llama3_1",
        "yarn",
        |c| {
            c["rope_parameters"]["rope_type"] = json!("yarn");
        },
        |_| {},
    ));
    assert!(
        matches!(e, ConvertError::Unsupported { .. }) && e.to_string().contains("yarn"),
        "{e:?}"
    );

    let e = plan_err(&altered(
        "c_llama3",
        "act",
        |c| c["hidden_act"] = json!("gelu"),
        |_| {},
    ));
    assert!(matches!(e, ConvertError::Unsupported { .. }), "{e:?}");

    let e = plan_err(&altered(
        "c_llama3",
        "heads",
        |c| c["num_key_value_heads"] = json!(3),
        |_| {},
    ));
    assert!(
        matches!(&e, ConvertError::BadConfig { field, .. } if field == "num_key_value_heads"),
        "{e:?}"
    );

    let e = plan_err(&altered(
        "c_llama3",
        "nolayers",
        |c| {
            c.as_object_mut().unwrap().remove("num_hidden_layers");
        },
        |_| {},
    ));
    assert!(
        matches!(&e, ConvertError::BadConfig { field, .. } if field == "num_hidden_layers"),
        "{e:?}"
    );

    let e = plan_err(&altered(
        "f_llama4_text",
        "moe",
        |c| c["moe_layers"] = json!([0, 3]),
        |_| {},
    ));
    assert!(
        matches!(e, ConvertError::Unsupported { .. }) && e.to_string().contains("moe_layers"),
        "{e:?}"
    );

    let e = plan_err(&altered(
        "f_llama4_text",
        "nope",
        |c| c["no_rope_layers"] = json!([1, 0, 1, 0]),
        |_| {},
    ));
    assert!(matches!(e, ConvertError::Unsupported { .. }), "{e:?}");

    // Files.
    let dir = altered("c_llama3", "noconfig", |_| {}, |_| {});
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(matches!(plan_err(&dir), ConvertError::MissingFile { .. }));

    let dir = altered("c_llama3", "badjson", |_| {}, |_| {});
    std::fs::write(dir.join("config.json"), "{\"architectures\": [").unwrap();
    assert!(matches!(plan_err(&dir), ConvertError::BadJson { .. }));

    let dir = altered("c_llama3", "badgen", |_| {}, |_| {});
    std::fs::write(dir.join("generation_config.json"), "[1, 2]").unwrap();
    let e = plan_err(&dir);
    assert!(
        matches!(&e, ConvertError::BadJson { path, .. } if path.ends_with("generation_config.json")),
        "{e:?}"
    );

    let dir = altered("c_llama3", "noweights", |_| {}, |_| {});
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(matches!(plan_err(&dir), ConvertError::MissingFile { .. }));

    let dir = altered("c_llama3", "truncated", |_| {}, |_| {});
    let st = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &st[..st.len() - 100]).unwrap();
    assert!(matches!(
        plan_err(&dir),
        ConvertError::BadSafetensors { .. }
    ));

    let dir = altered("c_llama3", "badtok", |_| {}, |_| {});
    std::fs::write(dir.join("tokenizer.json"), "this is not json").unwrap();
    let e = plan_err(&dir);
    assert!(
        matches!(&e, ConvertError::Tokenizer { path, .. } if path.ends_with("tokenizer.json")),
        "{e:?}"
    );

    let dir = altered("c_llama3", "spmonly", |_| {}, |_| {});
    std::fs::write(dir.join("tokenizer.model"), b"\x0a\x00").unwrap();
    assert!(matches!(plan_err(&dir), ConvertError::Tokenizer { .. }));

    assert!(matches!(
        plan_err(Path::new("/nonexistent/model")),
        ConvertError::MissingFile { .. }
    ));

    // A failed write leaves nothing behind.
    let conv = Conversion::plan(&testdata().join("models/a_llama1"), &opts(OutType::F32)).unwrap();
    let out = scratch("nodir").join("missing-dir/out.gguf");
    assert!(matches!(
        conv.write(&out, &mut |_| {}),
        Err(ConvertError::Io { .. })
    ));
    assert!(!out.exists());
}

#[test]
fn tied_checkpoint_with_an_lm_head_writes_no_output() {
    let dir = altered(
        "e_llama3_2_tied",
        "tied-head",
        |_| {},
        |t| {
            let emb = t["model.embed_tokens.weight"].clone();
            t.insert("lm_head.weight".into(), emb);
        },
    );
    let conv = Conversion::plan(&dir, &opts(OutType::F32)).unwrap();
    assert!(!conv.tensors().iter().any(|t| t.name == "output.weight"));
    assert!(
        conv.notes().iter().any(|n| n.contains("lm_head")),
        "{:?}",
        conv.notes()
    );
}

#[test]
fn multimodal_llama4_checkpoint_gives_its_text_model() {
    // Llama4ForConditionalGeneration: text under `language_model.`, the
    // text config under `text_config`, vision tensors beside.
    let src = testdata().join("models/f_llama4_text");
    let dir = scratch("llama4-mm");
    let text_cfg = read_json(&src.join("config.json"));
    let cfg = json!({
        "architectures": ["Llama4ForConditionalGeneration"],
        "model_type": "llama4",
        "text_config": text_cfg,
        "vision_config": {"hidden_size": 8},
    });
    write_config(&dir, &cfg);
    let mut t: BTreeMap<String, HfTensor> = read_safetensors(&src.join("model.safetensors"))
        .into_iter()
        .map(|(n, v)| (format!("language_model.{n}"), v))
        .collect();
    t.insert(
        "vision_model.patch_embedding.weight".into(),
        HfTensor::f32(vec![2, 2], &[0.0; 4]),
    );
    t.insert(
        "multi_modal_projector.linear_1.weight".into(),
        HfTensor::f32(vec![2], &[0.0; 2]),
    );
    write_safetensors(&dir.join("model.safetensors"), &t);

    let named = |outtype| ConvertOptions {
        outtype,
        name: Some("x".into()),
    };
    let a = scratch("llama4-mm-out").join("a.gguf");
    let b = a.with_file_name("b.gguf");
    let conv = Conversion::plan(&dir, &named(OutType::F32)).unwrap();
    assert!(
        conv.notes().iter().any(|n| n.contains("vision")),
        "{:?}",
        conv.notes()
    );
    conv.write(&a, &mut |_| {}).unwrap();
    convert(&src, &b, &named(OutType::F32)).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
}

#[test]
fn shared_tokenizers_become_working_gguf_tokenizers() {
    for (name, chat) in [
        ("llama2", false),
        ("llama3", true),
        ("llama3_1", true),
        ("smollm2", true),
    ] {
        let dir = scratch(&format!("tok-{name}"));
        copy_tokenizer(name, &dir);
        let n_vocab = tokenizer_size(&dir);
        write_random_llama(&dir, n_vocab, 7);
        let bytes = convert_to_bytes(&dir, OutType::F16, &format!("tok-{name}-out"));
        let f = GgufFile::parse(&bytes).unwrap();
        let md = f.metadata();
        let model = md.get_str("tokenizer.ggml.model").unwrap();
        assert_eq!(
            model,
            if name == "llama2" { "llama" } else { "gpt2" },
            "{name}"
        );
        assert_eq!(
            md.get_array("tokenizer.ggml.tokens").unwrap().len(),
            n_vocab,
            "{name}"
        );
        assert_eq!(md.contains_key("tokenizer.chat_template"), chat, "{name}");
        if let Some(Value::String(t)) = md.get("tokenizer.chat_template") {
            let cfg = read_json(&dir.join("tokenizer_config.json"));
            assert_eq!(t.as_ref(), cfg["chat_template"].as_str().unwrap(), "{name}");
        }
        // The converted tokenizer reproduces HF's ids.
        let tok = Tokenizer::from_gguf(&f).unwrap();
        let cases = read_json(&testdata().join(format!("tokenization/{name}.json")));
        for case in cases["cases"].as_array().unwrap().iter().take(20) {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids_with_special"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(
                tok.encode(text, true, true).unwrap(),
                want,
                "{name}: {text:?}"
            );
        }
    }
}

#[test]
fn chat_template_jinja_file_is_used() {
    let dir = scratch("jinja");
    copy_tokenizer("llama3_1", &dir);
    let mut tc = read_json(&dir.join("tokenizer_config.json"));
    tc.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{{ messages[0]['content'] }}",
    )
    .unwrap();
    write_random_llama(&dir, tokenizer_size(&dir), 3);
    // generation_config's EOS list as Llama 3.1 Instruct has it.
    std::fs::write(
        dir.join("generation_config.json"),
        json!({"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}).to_string(),
    )
    .unwrap();
    let conv = Conversion::plan(&dir, &opts(OutType::F16)).unwrap();
    let md: BTreeMap<&str, &Value<'_>> = conv
        .metadata()
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    match md["tokenizer.chat_template"] {
        Value::String(s) => assert_eq!(s.as_ref(), "{{ messages[0]['content'] }}"),
        v => panic!("{v:?}"),
    }
    // <|end_of_text|>, <|eom_id|> and <|eot_id|> all end generation, so
    // nothing is reported as lost.
    assert!(
        !conv.notes().iter().any(|n| n.contains("generation_config")),
        "{:?}",
        conv.notes()
    );
}

#[test]
fn head_size_keys_are_written_even_without_head_dim() {
    // As llama.cpp, which reads the config through transformers (where
    // LlamaConfig.head_dim defaults to hidden_size / heads).
    let dir = altered(
        "c_llama3",
        "no-head-dim",
        |c| {
            c.as_object_mut().unwrap().remove("head_dim");
        },
        |_| {},
    );
    let bytes = convert_to_bytes(&dir, OutType::F32, "no-head-dim-out");
    let f = GgufFile::parse(&bytes).unwrap();
    let with = convert_to_bytes(
        &testdata().join("models/c_llama3"),
        OutType::F32,
        "head-dim-out",
    );
    let g = GgufFile::parse(&with).unwrap();
    for key in [
        "llama.attention.key_length",
        "llama.attention.value_length",
        "llama.rope.dimension_count",
    ] {
        assert_eq!(f.metadata().get_u32(key).unwrap(), 16, "{key}");
    }
    for t in g.tensors() {
        assert!(
            f.tensor(t.name()).unwrap().data() == t.data(),
            "{}",
            t.name()
        );
    }
}

#[test]
fn llama4_nope_layers_become_a_layer_step() {
    let step_of = |tag: &str, rope: Json, types: Json| -> Result<u32, ConvertError> {
        let dir = altered(
            "f_llama4_text",
            tag,
            |c| {
                c["no_rope_layers"] = rope;
                c["layer_types"] = types;
            },
            |_| {},
        );
        let conv = Conversion::plan(&dir, &opts(OutType::F32))?;
        let v = conv
            .metadata()
            .iter()
            .find(|(k, _)| k == "llama4.no_rope_layer_step")
            .map(|(_, v)| v.clone())
            .unwrap();
        Ok(v.as_uint().unwrap() as u32)
    };
    let c = "chunked_attention";
    let f = "full_attention";
    assert_eq!(
        step_of("step4", json!([1, 1, 1, 0]), json!([c, c, c, f])).unwrap(),
        4
    );
    assert_eq!(
        step_of("step2", json!([1, 0, 1, 0]), json!([c, f, c, f])).unwrap(),
        2
    );
    // No NoPE layer at all: a step past the last layer.
    assert_eq!(
        step_of("none", json!([1, 1, 1, 1]), json!([c, c, c, c])).unwrap(),
        5
    );
    // Chunked layers must be the RoPE layers.
    let e = step_of("mixed", json!([1, 1, 1, 0]), json!([c, f, c, f])).unwrap_err();
    assert!(matches!(e, ConvertError::Unsupported { .. }), "{e:?}");
    // No chunking anywhere: sliding_window = 0, as llama.cpp writes.
    let dir = altered(
        "f_llama4_text",
        "allfull",
        |c| {
            c["no_rope_layers"] = json!([1, 1, 1, 1]);
            c["layer_types"] = json!([f, f, f, f]);
        },
        |_| {},
    );
    let conv = Conversion::plan(&dir, &opts(OutType::F32)).unwrap();
    let md: BTreeMap<&str, &Value<'_>> = conv
        .metadata()
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    assert_eq!(md["llama4.attention.sliding_window"].as_uint(), Some(0));
    assert!(!md.contains_key("llama4.attention.chunk_size"));
    // Temperature tuning off: scale 0.
    let dir = altered(
        "f_llama4_text",
        "notemp",
        |c| c["attn_temperature_tuning"] = json!(false),
        |_| {},
    );
    let conv = Conversion::plan(&dir, &opts(OutType::F32)).unwrap();
    let scale = conv
        .metadata()
        .iter()
        .find(|(k, _)| k == "llama4.attention.temperature_scale")
        .map(|(_, v)| v.as_scalar::<f32>().unwrap());
    assert_eq!(scale, Some(0.0));
}
