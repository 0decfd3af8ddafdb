//! Helpers shared by the `spinel convert` tests: the shared tiny models,
//! reading HF tensors independently of the converter, and writing
//! checkpoints (whole, sharded, altered) to scratch folders.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value as Json, json};

/// `$SPINEL_TESTDATA`, else `../shared/testdata` (beside the repository).
pub fn testdata() -> PathBuf {
    match std::env::var_os("SPINEL_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
    }
}

/// Runs a set-up script (llama.cpp's build, its converter's Python
/// environment) and returns what it prints; a failure fails the test,
/// saying what it needs.
pub fn run_script(script: &Path) -> String {
    let out = std::process::Command::new("bash")
        .arg(script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}); this test needs llama.cpp and its converter's Python packages:\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The tiny HF models of the shared test data.
pub fn test_models() -> Vec<PathBuf> {
    let dir = testdata().join("models");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    v.sort();
    assert_eq!(
        v.len(),
        5,
        "expected the five tiny models in {}",
        dir.display()
    );
    v
}

/// A fresh, empty scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("spinel-convert-tests")
        .join(format!("{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn read_json(path: &Path) -> Json {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap()
}

/// One checkpoint tensor, decoded.
#[derive(Clone, Debug)]
pub struct HfTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl HfTensor {
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> HfTensor {
        HfTensor {
            dtype: Dtype::F32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values as f32 (F32 tensors only).
    pub fn values(&self) -> Vec<f32> {
        assert_eq!(self.dtype, Dtype::F32);
        self.bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

/// All tensors of a `model.safetensors`.
pub fn read_safetensors(path: &Path) -> BTreeMap<String, HfTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                HfTensor {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    bytes: v.data().to_vec(),
                },
            )
        })
        .collect()
}

/// Writes tensors as one safetensors file.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, HfTensor>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Copies a model folder's config files into `dst` (not the weights).
pub fn copy_configs(src: &Path, dst: &Path) {
    for f in ["config.json", "generation_config.json"] {
        if src.join(f).is_file() {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
    }
}

/// Writes `config` as `dir/config.json`.
pub fn write_config(dir: &Path, config: &Json) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
}

/// A deterministic pseudo-random stream (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Roughly N(0, 1).
    pub fn normal(&mut self) -> f32 {
        let s: f64 = (0..4)
            .map(|_| (self.next() >> 11) as f64 / (1u64 << 53) as f64)
            .sum();
        ((s - 2.0) * 1.7320508) as f32
    }
}

/// A small random Llama checkpoint (tied embeddings) with `n_vocab` tokens,
/// for pairing with a real tokenizer.
pub fn write_random_llama(dir: &Path, n_vocab: usize, seed: u64) {
    let (h, ff, heads, kv, hd) = (16usize, 32usize, 2usize, 1usize, 8usize);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": ff,
        "num_hidden_layers": 1,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": hd,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "vocab_size": n_vocab,
        "tie_word_embeddings": true,
        "hidden_act": "silu",
    });
    write_config(dir, &config);
    let mut rng = Rng(seed);
    let mut t = BTreeMap::new();
    let mut rand = |shape: Vec<usize>| {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() * 0.1).collect();
        HfTensor::f32(shape, &v)
    };
    t.insert("model.embed_tokens.weight".into(), rand(vec![n_vocab, h]));
    t.insert("model.norm.weight".into(), rand(vec![h]));
    let p = "model.layers.0.";
    for (name, shape) in [
        ("input_layernorm.weight", vec![h]),
        ("post_attention_layernorm.weight", vec![h]),
        ("self_attn.q_proj.weight", vec![heads * hd, h]),
        ("self_attn.k_proj.weight", vec![kv * hd, h]),
        ("self_attn.v_proj.weight", vec![kv * hd, h]),
        ("self_attn.o_proj.weight", vec![h, heads * hd]),
        ("mlp.gate_proj.weight", vec![ff, h]),
        ("mlp.up_proj.weight", vec![ff, h]),
        ("mlp.down_proj.weight", vec![h, ff]),
    ] {
        t.insert(format!("{p}{name}"), rand(shape));
    }
    write_safetensors(&dir.join("model.safetensors"), &t);
}

/// Copies a shared tokenizer folder (gunzipping `*.gz`) into `dst`.
pub fn copy_tokenizer(name: &str, dst: &Path) {
    let src = testdata().join("tokenizers").join(name);
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let file = p.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(plain) = file.strip_suffix(".gz") {
            let mut d = flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap());
            let mut out = std::fs::File::create(dst.join(plain)).unwrap();
            std::io::copy(&mut d, &mut out).unwrap();
        } else {
            std::fs::copy(&p, dst.join(&file)).unwrap();
        }
    }
}

/// The number of tokens of a tokenizer.json (model vocab and added tokens).
pub fn tokenizer_size(dir: &Path) -> usize {
    let tj = read_json(&dir.join("tokenizer.json"));
    let mut max = 0usize;
    for id in tj["model"]["vocab"].as_object().unwrap().values() {
        max = max.max(id.as_u64().unwrap() as usize + 1);
    }
    for t in tj["added_tokens"].as_array().into_iter().flatten() {
        max = max.max(t["id"].as_u64().unwrap() as usize + 1);
    }
    max
}

/// Llama 3's pre-tokenizer regex, as its tokenizer.json writes it.
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Writes a minimal Llama-3-style byte-level BPE tokenizer with exactly
/// `n_vocab` tokens into `dir`: `<|pad|>`, `<|begin_of_text|>` (1, added as
/// BOS) and `<|end_of_text|>` (2, EOS) — the ids the tiny models' configs
/// use —, the 256 byte tokens, then merges of common letter pairs. The tiny
/// models ship no tokenizer, and llama.cpp refuses a GGUF without one.
pub fn write_tiny_tokenizer(dir: &Path, n_vocab: usize) {
    use spinel_runtime::tokenizer::byte_level_char;
    let specials = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>"];
    let mut vocab = serde_json::Map::new();
    let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    for b in 0..=255u8 {
        tokens.push(byte_level_char(b).to_string());
    }
    let letters = " etaoinshrdlucmfwygpbvk";
    let mut merges = Vec::new();
    'outer: for a in letters.bytes() {
        for b in letters.bytes().filter(|&b| b != b' ') {
            if tokens.len() >= n_vocab {
                break 'outer;
            }
            let (l, r) = (
                byte_level_char(a).to_string(),
                byte_level_char(b).to_string(),
            );
            merges.push(json!([l, r]));
            tokens.push(format!("{l}{r}"));
        }
    }
    assert_eq!(
        tokens.len(),
        n_vocab,
        "not enough merges for {n_vocab} tokens"
    );
    for (id, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), json!(id));
    }
    let added: Vec<Json> = specials
        .iter()
        .enumerate()
        .map(|(id, s)| {
            json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tj = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [1], "tokens": ["<|begin_of_text|>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": true, "vocab": vocab, "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    let tc = json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
}

/// A scratch copy of a tiny model (config, weights) with the tiny
/// tokenizer added.
pub fn tiny_model_with_tokenizer(model: &Path, tag: &str) -> PathBuf {
    let dir = scratch(tag);
    copy_configs(model, &dir);
    std::fs::copy(
        model.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let n_vocab = read_json(&model.join("config.json"))["vocab_size"]
        .as_u64()
        .unwrap();
    write_tiny_tokenizer(&dir, n_vocab as usize);
    dir
}
