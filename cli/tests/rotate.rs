//! `spinel quantize --rotate` / `--rotate-online` on the real model
//! (SmolLM2-135M-Instruct, its Q4_1 file dequantized to f32 as the base):
//!
//! * rotated f32 models compute the original's logits within 1e-4 (max
//!   absolute difference over every position of a prompt; the logits are up
//!   to ~20 in size), for the offline rotations with outlier channels kept
//!   out of R1 (dense orthogonal R1) and for the plain Hadamard R1 with the
//!   online R3/R4;
//! * the runtime applies the online parts (without the keys the logits are
//!   wrong) and refuses rotation keys it does not know;
//! * an offline-rotated file runs in llama.cpp (`llama-simple`): the rotated
//!   f32 one greedily generates the same text as Spinel, the q4_0 one
//!   decodes.
//!
//! Needs the model and llama.cpp (`../shared/peers/llama-cpp.sh`), as
//! `quantize.rs` does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;
use common::{llama_cpp_bin, max_abs_diff, ok};

use spinel_runtime::gguf::{GgufWriter, MappedGguf, Value};
use spinel_runtime::model::{KvType, Model, StateOptions};

const SPINEL: &str = env!("CARGO_BIN_EXE_spinel");

fn work_dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| common::scratch_dir("rotate-test"))
}

fn quantize(input: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = work_dir().join(name);
    ok(
        &format!("spinel quantize {args:?}"),
        Command::new(SPINEL)
            .arg("quantize")
            .arg(input)
            .arg(&out)
            .args(args)
            .args(["-t", "2"])
            .output()
            .unwrap(),
    );
    out
}

/// The f32 base, made once.
fn base() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        quantize(
            &spinel_runtime::cache::test_model(),
            "base.f32.gguf",
            &["--type", "f32"],
        )
    })
}

fn rotated() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| quantize(base(), "rot.f32.gguf", &["--type", "f32", "--rotate"]))
}

fn rotated_online() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        quantize(
            base(),
            "rot-online.f32.gguf",
            &[
                "--type",
                "f32",
                "--rotate-online",
                "--rotate-keep-outliers",
                "0",
            ],
        )
    })
}

/// "The quick brown fox jumps over the lazy dog. In 1492, Columbus sailed
/// the ocean blue, and" in SmolLM2's vocabulary.
const PROMPT: [u32; 24] = [
    504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30, 533, 216, 33, 36, 41, 34, 28, 18176,
    23217, 260, 5065, 4461, 28, 284,
];

fn logits(path: &Path) -> Result<Vec<f32>, String> {
    let model = Model::load(path).map_err(|e| e.to_string())?;
    let mut state = model
        .new_state_with(&StateOptions {
            n_ctx: Some(64),
            kv_type: KvType::F32,
            n_threads: Some(2),
            ..StateOptions::default()
        })
        .unwrap();
    let mut out = Vec::new();
    model.forward_all(&mut state, &PROMPT, &mut out).unwrap();
    Ok(out)
}

fn open(p: &Path) -> MappedGguf {
    // SAFETY: files this test wrote and nothing else touches.
    unsafe { MappedGguf::open(p) }.unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A copy of `src` without the metadata keys `drop`, plus `extra`.
fn with_metadata(
    src: &Path,
    name: &str,
    drop: &[&str],
    extra: Option<(&str, Value<'static>)>,
) -> PathBuf {
    let m = open(src);
    let f = m.file();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata().iter() {
        if !drop.contains(&k) {
            w.add_kv(k, v.clone()).unwrap();
        }
    }
    if let Some((k, v)) = extra {
        w.add_kv(k, v).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor(t.name(), t.dims(), t.ggml_type(), t.data())
            .unwrap();
    }
    let out = work_dir().join(name);
    w.write_file(&out).unwrap();
    out
}

#[test]
fn rotated_f32_models_compute_the_same_logits() {
    let want = logits(base()).unwrap();
    assert!(want.iter().any(|v| v.abs() > 5.0), "implausible logits");
    for (path, online) in [(rotated(), false), (rotated_online(), true)] {
        let m = open(path);
        let md = m.file().metadata();
        assert!(md.contains_key("spinel.rotation.r1"), "{}", path.display());
        assert_eq!(md.get_bool("spinel.rotation.r4").unwrap_or(false), online);
        assert_eq!(md.get_bool("spinel.rotation.r3").unwrap_or(false), online);
        assert!(m.file().tensor("output.weight").is_some(), "not untied");
        let got = logits(path).unwrap();
        let d = max_abs_diff(&want, &got);
        assert!(d < 1e-4, "{}: logits differ by {d}", path.display());
    }
    // The default keeps SmolLM2's massive-activation channels out of R1.
    let m = open(rotated());
    let kept = m
        .file()
        .metadata()
        .get_array_of::<u32>("spinel.rotation.r1_kept_channels")
        .unwrap();
    assert!(
        !kept.is_empty() && kept.contains(&507),
        "kept channels: {kept:?}"
    );
}

#[test]
fn online_rotations_are_applied_and_unknown_ones_refused() {
    let want = logits(base()).unwrap();
    // Without the keys, the runtime does not apply R3/R4: wrong logits.
    let stripped = with_metadata(
        rotated_online(),
        "stripped.gguf",
        &["spinel.rotation.r3", "spinel.rotation.r4"],
        None,
    );
    let d = max_abs_diff(&want, &logits(&stripped).unwrap());
    assert!(d > 0.1, "R4 seems not applied: logits differ by only {d}");
    // A rotation this runtime does not know is refused, naming it.
    let unknown = with_metadata(
        rotated_online(),
        "unknown.gguf",
        &[],
        Some(("spinel.rotation.r9", Value::Bool(true))),
    );
    let e = logits(&unknown).unwrap_err();
    assert!(e.contains("spinel.rotation.r9"), "{e}");
    // Rotating twice is refused.
    let out = Command::new(SPINEL)
        .arg("quantize")
        .arg(rotated())
        .arg(work_dir().join("twice.gguf"))
        .args(["--type", "f32", "--rotate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already rotated"));
}

#[test]
fn offline_rotated_files_run_in_llama_cpp() {
    let bin = llama_cpp_bin();
    let prompt = "The capital of France is";
    // Quantizing a rotated file keeps its rotation (same as `--rotate`).
    let q4 = quantize(rotated(), "rot.q4_0.gguf", &["--type", "q4_0"]);
    assert!(
        open(&q4)
            .file()
            .metadata()
            .contains_key("spinel.rotation.r1")
    );
    for (path, compare) in [(rotated(), true), (q4.as_path(), false)] {
        let (theirs, stderr) = ok(
            "llama-simple",
            Command::new(bin.join("llama-simple"))
                .arg("-m")
                .arg(path)
                .args(["-n", "8", prompt])
                .output()
                .unwrap(),
        );
        assert!(
            stderr.contains("decoded 8 tokens"),
            "{}: llama-simple:\n{stderr}",
            path.display()
        );
        if compare {
            let (ours, _) = ok(
                "spinel run",
                Command::new(SPINEL)
                    .arg("run")
                    .arg("-m")
                    .arg(path)
                    .args(["-n", "8", "--temp", "0", "-p", prompt])
                    .output()
                    .unwrap(),
            );
            let ours = ours.trim();
            assert!(ours.len() > 3, "spinel generated {ours:?}");
            assert!(
                theirs.contains(ours),
                "greedy texts differ: llama.cpp {theirs:?}, spinel {ours:?}"
            );
        }
    }
}
