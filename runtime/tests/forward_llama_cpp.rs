//! The forward pass on GGUF files written by llama.cpp's own converter
//! (`convert_hf_to_gguf.py --outtype f32`) from the shared tiny models:
//! Spinel must run them exactly as it runs its own conversions.
//!
//! * Llama 1/3/3.1/3.2: every prompt's last-position logits within 1e-4 of
//!   HF transformers (f32 KV cache).
//! * Llama 4: llama.cpp's converter does not record the chunk size, the
//!   attention temperature floor, the NoPE step or qk-norm (llama.cpp
//!   hard-codes 8192, 8192, 4 and on), so Spinel falls back to the same
//!   constants. The tiny model's chunk of 16 and floor of 8 only matter from
//!   position 7 on: the short prompts must match transformers, the long ones
//!   must not (the file does not say what they would need).
//!
//! Needs llama.cpp's source (`../shared/peers/llama-cpp.sh`) and its
//! converter's Python packages (`tests/convert/setup-llama-cpp-converter.sh`);
//! both scripts run on first use and cache under `~/.cache/spinel-peers`.
//! Without them the test fails, saying why.

#[path = "convert/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_script, testdata};

use serde_json::Value as Json;
use spinel_runtime::model::{KvType, Model, StateOptions};

/// Converts every `(hf_dir, out)` with llama.cpp's converter at f32.
fn llama_cpp_convert(jobs: &[(PathBuf, PathBuf)]) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = run_script(&here.join("tests/convert/setup-llama-cpp-converter.sh"));
    let mut lines = setup.lines();
    let python = lines.next().expect("python path");
    let src = lines.next().expect("llama.cpp source path");
    let mut cmd = Command::new(python);
    cmd.arg(here.join("tests/convert/llama_cpp_convert.py"))
        .arg(src);
    for (dir, out) in jobs {
        cmd.arg(dir).arg(out).arg("f32");
    }
    let out = cmd.output().expect("running llama.cpp's converter");
    assert!(
        out.status.success(),
        "llama.cpp's convert_hf_to_gguf.py failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn floats(v: &Json) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn llama_cpp_conversions_run_like_spinel_ones() {
    let models = [
        "a_llama1",
        "c_llama3",
        "d_llama3_1",
        "e_llama3_2_tied",
        "f_llama4_text",
    ];
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("forward-llama-cpp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jobs: Vec<(PathBuf, PathBuf)> = models
        .iter()
        .map(|m| {
            (
                testdata().join("models").join(m),
                dir.join(format!("{m}.gguf")),
            )
        })
        .collect();
    llama_cpp_convert(&jobs);

    for (name, (hf, gguf)) in models.iter().zip(&jobs) {
        let reference: Json =
            serde_json::from_slice(&std::fs::read(hf.join("reference.json")).unwrap()).unwrap();
        let model = Model::load(gguf).unwrap();
        let llama4 = name.starts_with("f_");
        for p in ["len1", "len7", "len40", "len300"] {
            let r = &reference["prompts"][p];
            let ids: Vec<u32> = r["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let mut state = model
                .new_state_with(&StateOptions {
                    n_ctx: Some(512),
                    kv_type: KvType::F32,
                    ..StateOptions::default()
                })
                .unwrap();
            let logits = model.forward(&mut state, &ids).unwrap();
            let err = logits
                .iter()
                .zip(floats(&r["last_logits"]))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            println!("{name} {p} (llama.cpp's converter): max |Δlogit| {err:.2e}");
            if llama4 && ids.len() > 7 {
                assert!(
                    err > 1e-2,
                    "{name} {p}: expected llama.cpp's hard-coded chunk and temperature \
                     constants to differ from the checkpoint's (error {err})"
                );
            } else {
                assert!(err < 1e-4, "{name} {p}: last logits off by {err}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
