//! `spinel bench --json` against llama-bench's `-o json` on the same model
//! and arguments (llama.cpp's tools built by `../shared/peers/llama-cpp.sh`):
//! the same tests in the same order, depth (`-d`) included, llama-bench's
//! field names, and the same model size and parameter count.

use std::process::Command;

use serde_json::Value as Json;

mod common;
use common::{ok, script};

const SPINEL: &str = env!("CARGO_BIN_EXE_spinel");
const ARGS: [&str; 8] = ["-p", "16", "-n", "4", "-d", "0,32", "-r", "1"];

fn records(cmd: &mut Command, what: &str) -> Vec<Json> {
    let (stdout, _) = ok(what, cmd.output().unwrap());
    let v: Json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    v.as_array().expect("a JSON array").clone()
}

#[test]
fn bench_json_matches_llama_bench() {
    let model = spinel_runtime::cache::test_model();
    let bin = script("../../shared/peers/llama-cpp.sh");
    let ours = records(
        Command::new(SPINEL)
            .args(["bench", "-m"])
            .arg(&model)
            .args(ARGS)
            .args(["-t", "2", "--json"]),
        "spinel bench",
    );
    let theirs = records(
        Command::new(bin.join("llama-bench"))
            .arg("-m")
            .arg(&model)
            .args(ARGS)
            .args(["-t", "2", "-o", "json"]),
        "llama-bench",
    );
    let tests = |rs: &[Json]| -> Vec<(u64, u64, u64)> {
        rs.iter()
            .map(|r| {
                let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
                (n("n_prompt"), n("n_gen"), n("n_depth"))
            })
            .collect()
    };
    assert_eq!(tests(&ours), tests(&theirs));
    assert_eq!(
        tests(&ours),
        [(16, 0, 0), (0, 4, 0), (16, 0, 32), (0, 4, 32)]
    );
    for (a, b) in ours.iter().zip(&theirs) {
        for key in [
            "model_size",
            "model_n_params",
            "n_threads",
            "type_k",
            "type_v",
        ] {
            assert_eq!(a[key], b[key], "{key}");
        }
        // Every field llama-bench reports that a CPU-only runtime has.
        for key in [
            "build_commit",
            "cpu_info",
            "backends",
            "model_filename",
            "model_type",
            "n_ubatch",
            "test_time",
            "avg_ns",
            "stddev_ns",
            "avg_ts",
            "stddev_ts",
            "samples_ns",
            "samples_ts",
        ] {
            assert!(b.get(key).is_some(), "llama-bench has no {key}");
            assert!(a.get(key).is_some(), "spinel bench has no {key}");
        }
        assert!(a["avg_ts"].as_f64().unwrap() > 0.0);
    }
}

/// The tiny mllama vision model converted by the binary: (text, mmproj).
fn tiny_mllama(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let out = dir.join("m.gguf");
    let hf = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/vision/dev/mllama");
    ok(
        "spinel convert",
        Command::new(SPINEL)
            .arg("convert")
            .arg(&hf)
            .arg("-o")
            .arg(&out)
            .args(["--outtype", "f32"])
            .output()
            .unwrap(),
    );
    (out, dir.join("m.mmproj.gguf"))
}

#[test]
fn bench_image_records_the_tower_time() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("spinel-bench-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (model, mmproj) = tiny_mllama(&dir);
    let image = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/vision/images/landscape_300x200.png");
    let recs = records(
        Command::new(SPINEL)
            .args(["bench", "-m"])
            .arg(&model)
            .args(["-p", "8", "-n", "2", "-r", "3", "--json", "--image"])
            .arg(&image)
            .arg("--mmproj")
            .arg(&mmproj),
        "spinel bench --image",
    );
    // pp8, tg2, then the image record, with the others' fields.
    assert_eq!(recs.len(), 3, "{recs:?}");
    let img = &recs[2];
    assert_eq!(img["n_image"], 1);
    assert_eq!(
        (img["n_prompt"].as_u64(), img["n_gen"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(img["samples_ns"].as_array().unwrap().len(), 3);
    assert!(img["avg_ns"].as_u64().unwrap() > 0, "{img}");
    assert!(img["avg_ts"].as_f64().unwrap() > 0.0, "{img}");
    assert!(img["stddev_ns"].as_u64().is_some(), "{img}");
    for r in &recs[..2] {
        assert_eq!(r["n_image"], 0);
    }
    // The table names the test.
    let (table, _) = ok(
        "spinel bench --image (table)",
        Command::new(SPINEL)
            .args(["bench", "-m"])
            .arg(&model)
            .args(["-p", "0", "-n", "0", "-r", "1", "--image"])
            .arg(&image)
            .arg("--mmproj")
            .arg(&mmproj)
            .output()
            .unwrap(),
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("| image ") || l.contains(" image |")),
        "{table}"
    );
    // --image without --mmproj: a clear error.
    let run = Command::new(SPINEL)
        .args(["bench", "-m"])
        .arg(&model)
        .arg("--image")
        .arg(&image)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("--image needs --mmproj"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
