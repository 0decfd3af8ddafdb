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
