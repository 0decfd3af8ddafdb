//! `spinel convert` against llama.cpp itself:
//!
//! * the same checkpoints converted by llama.cpp's own `convert_hf_to_gguf.py`
//!   give the same tensors (names, shapes, types, bytes) and the same
//!   metadata, except for the keys listed here with the reason;
//! * llama.cpp (`llama-simple`) loads and runs the files Spinel writes.
//!
//! Needs llama.cpp built by `../shared/peers/llama-cpp.sh` and its converter's
//! Python dependencies installed by `tests/convert/setup-llama-cpp-converter.sh`
//! (torch, transformers; both run on first use, then are cached under
//! `~/.cache/spinel-peers`). Without them these tests fail, saying why.

#[path = "convert/common.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use spinel_runtime::convert::{Conversion, ConvertOptions, OutType, convert};
use spinel_runtime::gguf::{GgufFile, Value};
use spinel_runtime::model::{EmbeddingOverride, KvType, Model};
use spinel_runtime::tokenizer::Tokenizer;
use spinel_runtime::vision::{
    Llama4ImageTokens, MmprojFile, ProcessorConfig, VisionTower, decode_image, llama4_image_prompt,
};

/// Where llama.cpp's converter and binaries are.
struct LlamaCpp {
    python: PathBuf,
    src: PathBuf,
    bin: PathBuf,
}

fn llama_cpp() -> &'static LlamaCpp {
    static L: OnceLock<LlamaCpp> = OnceLock::new();
    L.get_or_init(|| {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let bin = run_script(&here.join("../../shared/peers/llama-cpp.sh"));
        let setup = run_script(&here.join("tests/convert/setup-llama-cpp-converter.sh"));
        let mut lines = setup.lines();
        let python = PathBuf::from(lines.next().expect("python path"));
        let src = PathBuf::from(lines.next().expect("llama.cpp source path"));
        LlamaCpp {
            python,
            src,
            bin: PathBuf::from(bin.trim()),
        }
    })
}

/// Runs llama.cpp's converter on `(hf_dir, out, outtype)` jobs.
fn llama_cpp_convert(jobs: &[(PathBuf, PathBuf, OutType)]) {
    let l = llama_cpp();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/convert/llama_cpp_convert.py");
    let mut cmd = Command::new(&l.python);
    cmd.arg(script).arg(&l.src);
    for (dir, out, t) in jobs {
        cmd.arg(dir).arg(out).arg(t.name());
    }
    let out = cmd.output().expect("running llama.cpp's converter");
    assert!(
        out.status.success(),
        "llama.cpp's convert_hf_to_gguf.py failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Metadata as comparable values (floats by bits), tokenizer arrays kept.
fn metadata(f: &GgufFile<'_>) -> BTreeMap<String, Value<'static>> {
    f.metadata()
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone().into_owned()))
        .collect()
}

/// What differs between two files' metadata: key → (llama.cpp's, Spinel's).
type Diff = BTreeMap<String, (Option<Value<'static>>, Option<Value<'static>>)>;

fn compare(ours: &Path, theirs: &Path, what: &str) -> Diff {
    let (a, b) = (std::fs::read(theirs).unwrap(), std::fs::read(ours).unwrap());
    let (theirs, ours) = (GgufFile::parse(&a).unwrap(), GgufFile::parse(&b).unwrap());
    let names = |f: &GgufFile<'_>| -> BTreeSet<String> {
        f.tensors().iter().map(|t| t.name().to_string()).collect()
    };
    assert_eq!(names(&ours), names(&theirs), "{what}: tensor names");
    for t in theirs.tensors() {
        let o = ours.tensor(t.name()).unwrap();
        assert_eq!(o.dims(), t.dims(), "{what}: {} shape", t.name());
        assert_eq!(o.ggml_type(), t.ggml_type(), "{what}: {} type", t.name());
        assert!(o.data() == t.data(), "{what}: {} data differs", t.name());
    }
    let (mt, mo) = (metadata(&theirs), metadata(&ours));
    let keys: BTreeSet<&String> = mt.keys().chain(mo.keys()).collect();
    keys.into_iter()
        .filter(|k| mt.get(*k) != mo.get(*k))
        .map(|k| (k.clone(), (mt.get(k).cloned(), mo.get(k).cloned())))
        .collect()
}

/// Keys that are expected to differ, and why:
/// * `general.name`: llama.cpp title-cases the folder name (`A_Llama1`),
///   Spinel keeps it; `general.size_label` ("165K", "4x190K"): llama.cpp's
///   model-card heuristics, not reproduced.
/// * Llama 4: the keys Spinel adds because llama.cpp hard-codes them.
const SPINEL_LLAMA4_KEYS: [&str; 5] = [
    "llama4.attention.chunk_size",
    "llama4.no_rope_layer_step",
    "llama4.attention.temperature_length",
    "llama4.attention.temperature_scale",
    "llama4.use_qk_norm",
];

fn assert_only_documented_differences(diff: &Diff, what: &str, extra_ok: &[&str]) {
    for (k, (theirs, ours)) in diff {
        let ok = match k.as_str() {
            "general.name" | "general.size_label" => true,
            k if SPINEL_LLAMA4_KEYS.contains(&k) => theirs.is_none() && ours.is_some(),
            k => extra_ok.contains(&k),
        };
        assert!(ok, "{what}: {k}: llama.cpp {theirs:?}, Spinel {ours:?}");
    }
    assert!(
        diff.contains_key("general.name"),
        "{what}: the name difference is expected"
    );
}

#[test]
fn llama_cpp_converter_writes_the_same_files_for_every_test_model() {
    let models = test_models();
    let scratch_dir = scratch("vs-llama-cpp");
    let mut jobs = Vec::new();
    // Also a config without `head_dim` (llama.cpp then writes no key/value
    // length).
    let no_head_dim = scratch_dir.join("c_llama3_no_head_dim");
    std::fs::create_dir_all(&no_head_dim).unwrap();
    let src = &models[1];
    assert!(src.ends_with("c_llama3"));
    let mut cfg = read_json(&src.join("config.json"));
    cfg.as_object_mut().unwrap().remove("head_dim");
    write_config(&no_head_dim, &cfg);
    std::fs::copy(
        src.join("model.safetensors"),
        no_head_dim.join("model.safetensors"),
    )
    .unwrap();
    let models: Vec<PathBuf> = models.iter().cloned().chain([no_head_dim]).collect();
    for dir in &models {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        for t in OutType::ALL {
            jobs.push((
                dir.clone(),
                scratch_dir.join(format!("{name}-{t}-llama.cpp.gguf")),
                t,
            ));
        }
    }
    llama_cpp_convert(&jobs);
    for (dir, theirs, t) in &jobs {
        let ours = theirs.with_file_name(
            theirs
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace("llama.cpp", "spinel"),
        );
        let opts = ConvertOptions {
            outtype: *t,
            name: None,
        };
        convert(dir, &ours, &opts).unwrap();
        let what = format!("{} {t}", dir.display());
        let diff = compare(&ours, theirs, &what);
        assert_only_documented_differences(&diff, &what, &[]);
        // Files llama.cpp writes load in Spinel too.
        let bytes = std::fs::read(theirs).unwrap();
        let file = GgufFile::parse(&bytes).unwrap();
        if let Err(e) = Model::from_gguf(&file) {
            panic!("{what}: Spinel cannot load llama.cpp's file: {e}");
        }
        let llama4 = dir.ends_with("f_llama4_text");
        for k in SPINEL_LLAMA4_KEYS {
            assert_eq!(diff.contains_key(k), llama4, "{what}: {k}");
        }
    }
}

#[test]
fn llama_cpp_converter_writes_the_same_tokenizer_metadata() {
    // Small random models carrying the shared real tokenizers.
    let base = scratch("vs-llama-cpp-tok");
    let mut jobs = Vec::new();
    for name in ["llama2", "llama3", "llama3_1", "smollm2"] {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        copy_tokenizer(name, &dir);
        write_random_llama(&dir, tokenizer_size(&dir), 11);
        jobs.push((
            dir,
            base.join(format!("{name}-llama.cpp.gguf")),
            OutType::F16,
        ));
    }
    llama_cpp_convert(&jobs);
    for (dir, theirs, t) in &jobs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let ours = base.join(format!("{name}-spinel.gguf"));
        convert(
            dir,
            &ours,
            &ConvertOptions {
                outtype: *t,
                name: None,
            },
        )
        .unwrap();
        let diff = compare(&ours, theirs, &name);
        // Differences owned by the tokenizer module (runtime/src/tokenizer/hf.rs),
        // deliberate and documented there:
        let extra: &[&str] = match name.as_str() {
            // Scores: llama.cpp's HF path writes -1000 for every token;
            // Spinel writes minus the merge rank so merging by score replays
            // tokenizer.json's merges. <unk> typed UNKNOWN (as SentencePiece
            // GGUFs have it), llama.cpp says CONTROL. add_space_prefix
            // written explicitly. llama.cpp adds add_sep_token = false.
            "llama2" => &[
                "tokenizer.ggml.scores",
                "tokenizer.ggml.token_type",
                "tokenizer.ggml.add_space_prefix",
                "tokenizer.ggml.add_sep_token",
            ],
            // llama.cpp names this pre-tokenizer by hashing test ids; this
            // vocabulary hashes to `smaug-bpe`, whose regex is Llama 3's;
            // Spinel reads the regex and says `llama-bpe`.
            "llama3" => &["tokenizer.ggml.pre"],
            "llama3_1" => &["tokenizer.ggml.add_sep_token"],
            _ => &[],
        };
        assert_only_documented_differences(&diff, &name, extra);
        if name == "llama2" {
            let (theirs, ours) = &diff["tokenizer.ggml.token_type"];
            let (Some(Value::Array(a)), Some(Value::Array(b))) = (theirs, ours) else {
                panic!("token_type arrays")
            };
            let (a, b) = (a.to_vec::<i32>().unwrap(), b.to_vec::<i32>().unwrap());
            let differing: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
            assert_eq!(differing, vec![0], "only <unk>'s type differs");
        }
        if name == "llama3" {
            let (theirs, ours) = &diff["tokenizer.ggml.pre"];
            assert_eq!(theirs.as_ref().and_then(|v| v.as_str()), Some("smaug-bpe"));
            assert_eq!(ours.as_ref().and_then(|v| v.as_str()), Some("llama-bpe"));
        }
    }
}

#[test]
fn llama_cpp_runs_the_files_spinel_writes() {
    let l = llama_cpp();
    let models = test_models();
    for (model, t) in models.iter().zip([
        OutType::F32,
        OutType::F16,
        OutType::Q8_0,
        OutType::BF16,
        OutType::Q8_0,
    ]) {
        let name = model.file_name().unwrap().to_string_lossy().into_owned();
        let dir = tiny_model_with_tokenizer(model, &format!("run-{name}"));
        let out = dir.join("model.gguf");
        convert(
            &dir,
            &out,
            &ConvertOptions {
                outtype: t,
                name: None,
            },
        )
        .unwrap();
        let run = Command::new(l.bin.join("llama-simple"))
            .arg("-m")
            .arg(&out)
            .args(["-n", "8", "the best things in life are free"])
            .output()
            .expect("running llama-simple");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.success(),
            "{name} ({t}): llama-simple failed: {}\n{stderr}",
            run.status
        );
        assert!(
            stderr.contains("decoded 8 tokens"),
            "{name} ({t}): llama-simple did not generate 8 tokens:\n{stderr}"
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("n_vocab") && l.trim_end().ends_with("= 512")),
            "{name}: llama.cpp did not see the 512-token vocabulary:\n{stderr}"
        );
        // llama-simple echoes the prompt as it detokenizes its tokens: the
        // tokenizer metadata round-trips through llama.cpp.
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            stdout.starts_with("<|begin_of_text|>the best things in life are free"),
            "{name}: {stdout:?}"
        );
    }
}

/// Logits of the last token of `prompt` (one `<|image|>`) on the Llama 4
/// text model `text`, its image run through the tower of mmproj `mmproj`
/// with the image settings `pcfg`.
fn llama4_image_logits(
    text: &Path,
    mmproj: &MmprojFile,
    pcfg: &ProcessorConfig,
    prompt: &str,
    image: &Path,
) -> Vec<f32> {
    let model = Model::load(text).unwrap();
    let tok = Tokenizer::from_gguf(model.gguf()).unwrap();
    let special = Llama4ImageTokens::from_lookup(|s| tok.token_id(s)).unwrap();
    let VisionTower::Llama4(tower) = mmproj.load_tower().unwrap() else {
        panic!("not a Llama 4 tower")
    };
    let ids = tok.encode(prompt, false, true).unwrap();
    let img = decode_image(&std::fs::read(image).unwrap()).unwrap();
    let ip = llama4_image_prompt(&tower, pcfg, &special, &ids, &[img]).unwrap();
    let mut state = model.new_state(Some(ip.tokens.len()), KvType::F32).unwrap();
    let over = EmbeddingOverride {
        indices: &ip.embed_indices,
        rows: &ip.embeds,
    };
    model
        .forward_with_embeddings(&mut state, &ip.tokens, over)
        .unwrap()
        .to_vec()
}

#[test]
fn llama_cpp_llama4_mmproj_loads_and_matches_spinels() {
    // llama.cpp's converter (`--mmproj`) on the tiny Llama 4 vision model;
    // it needs the tensor-name map widened (see llama_cpp_convert.py: with
    // a 2-layer tower it stops with "Can not map tensor
    // 'vision_model.vision_adapter.mlp.fc2.weight'").
    let hf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/vision/dev/llama4_vision");
    let dir = scratch("vs-llama-cpp-mmproj");
    let theirs = dir.join("llama.cpp.mmproj.gguf");
    llama_cpp_convert(&[(hf.clone(), theirs.clone(), OutType::F32)]);
    let conv = Conversion::plan(
        &hf,
        &ConvertOptions {
            outtype: OutType::F32,
            name: None,
        },
    )
    .unwrap();
    let (text, ours) = (dir.join("spinel.gguf"), dir.join("spinel.mmproj.gguf"));
    conv.write(&text, &mut |_| {}).unwrap();
    conv.write_mmproj(&ours, &mut |_| {})
        .unwrap()
        .expect("an mmproj");

    // Tensors: the same names, shapes, types and bytes, but for the
    // post-attention norm: this llama.cpp's converter maps Llama 4's
    // `post_attention_layernorm` with Gemma 4's (`v.blk.N.attn_post_norm`),
    // older ones and Spinel write `v.blk.N.ln2` (clip.cpp's name for this
    // pre-FFN norm); Spinel reads either.
    let (a, b) = (
        std::fs::read(&theirs).unwrap(),
        std::fs::read(&ours).unwrap(),
    );
    let (tf, of) = (GgufFile::parse(&a).unwrap(), GgufFile::parse(&b).unwrap());
    assert_eq!(tf.tensors().len(), of.tensors().len());
    let mut renamed = 0;
    for t in tf.tensors() {
        let name = t.name().replace(".attn_post_norm.", ".ln2.");
        renamed += usize::from(name != t.name());
        let o = of
            .tensor(&name)
            .unwrap_or_else(|| panic!("{name}: not in Spinel's"));
        assert_eq!(o.dims(), t.dims(), "{name} shape");
        assert_eq!(o.ggml_type(), t.ggml_type(), "{name} type");
        assert!(o.data() == t.data(), "{name} data differs");
    }
    assert_eq!(renamed, 4, "2 layers × weight and bias");
    // Metadata: every key llama.cpp writes Spinel writes with the same
    // value (but the name and size label, as for text models); Spinel adds
    // only its processor settings (`spinel.vision.*`, max tiles).
    let (mt, mo) = (metadata(&tf), metadata(&of));
    for (k, v) in &mt {
        if k != "general.name" && k != "general.size_label" {
            assert_eq!(mo.get(k), Some(v), "{k}");
        }
    }
    for k in mo.keys().filter(|k| !mt.contains_key(*k)) {
        assert!(
            k.starts_with("spinel.vision.") || k == "clip.vision.preproc_max_tiles",
            "{k}: a key only Spinel writes"
        );
    }

    // Both load; the image-prompt logits agree. llama.cpp's file has no
    // `preproc_max_tiles`: Spinel then takes HF's default (16 tiles, the
    // tiny model says 4), which tiles this small image the same way.
    // SAFETY: the test's own files, not modified while mapped.
    let (tm, om) = unsafe {
        (
            MmprojFile::open(&theirs).unwrap(),
            MmprojFile::open(&ours).unwrap(),
        )
    };
    let (tp, op) = (tm.processor().unwrap(), om.processor().unwrap());
    assert_eq!((tp.max_tiles, op.max_tiles), (16, 4));
    assert_eq!(
        ProcessorConfig {
            max_tiles: op.max_tiles,
            ..tp.clone()
        },
        op
    );
    let image = hf.join("../../images/small_64x48.jpg");
    let prompt = "<|begin_of_text|><|header_start|>user<|header_end|>\n\n<|image|>What is in the image?<|eot|><|header_start|>assistant<|header_end|>\n\n";
    let want = llama4_image_logits(&text, &om, &op, prompt, &image);
    let got = llama4_image_logits(&text, &tm, &tp, prompt, &image);
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("llama.cpp's Llama 4 mmproj: image-prompt logits max |diff| {d:e}");
    assert!(d <= 1e-4, "logits differ by {d}");
}
