//! `spinel perplexity` against llama.cpp's `llama-perplexity` on the real
//! model (SmolLM2-135M-Instruct Q4_1) and a short piece of the evaluation
//! text (the start of the Jargon File, from `scripts/fetch-eval-text.sh`):
//! 6 chunks of 128 tokens, the same PPL within 1%; `--kl-divergence` of the
//! model against its own reference is ~0 with full top-1 agreement; and a
//! Q4_0 requantization's KLD and top-1 against the model equal
//! `llama-perplexity --kl-divergence`'s within 2%.
//!
//! Needs the model (`$SPINEL_TEST_MODEL` or the Spinel cache), llama.cpp
//! built by `../shared/peers/llama-cpp.sh` and the text (both scripts run on
//! first use and cache what they fetch); without them the test fails saying
//! why.

use std::process::Command;

use serde_json::Value as Json;

mod common;
use common::{ok, script};

const SPINEL: &str = env!("CARGO_BIN_EXE_spinel");
const N_CTX: &str = "128";
const CHUNKS: &str = "6";

fn spinel_json(args: &[&std::ffi::OsStr]) -> Json {
    let (stdout, _) = ok(
        "spinel perplexity",
        Command::new(SPINEL)
            .arg("perplexity")
            .args(args)
            .output()
            .unwrap(),
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn perplexity_like_llama_perplexity() {
    let model = spinel_runtime::cache::test_model();
    let text = script("../scripts/fetch-eval-text.sh");
    let bin = script("../../shared/peers/llama-cpp.sh");
    let dir = common::scratch_dir("ppl-test");
    // ~1500 tokens: enough for 6 chunks of 128.
    let full = std::fs::read(&text).unwrap();
    let short = dir.join("short.txt");
    std::fs::write(&short, &full[..8000]).unwrap();

    let common = [
        "-m".as_ref(),
        model.as_os_str(),
        "-f".as_ref(),
        short.as_os_str(),
        "-c".as_ref(),
        N_CTX.as_ref(),
        "--chunks".as_ref(),
        CHUNKS.as_ref(),
    ];
    let mut args = common.to_vec();
    args.push("--json".as_ref());
    let ours = spinel_json(&args);
    let ppl = ours["ppl"].as_f64().unwrap();
    assert_eq!(ours["tokens"].as_u64(), Some(6 * 63), "{ours}");
    assert!(ours["ppl_stderr"].as_f64().unwrap() > 0.0, "{ours}");

    let (_, stderr) = ok(
        "llama-perplexity",
        Command::new(bin.join("llama-perplexity"))
            .args(common)
            .args(["-b", N_CTX, "-t", "2"])
            .output()
            .unwrap(),
    );
    let theirs: f64 = stderr
        .lines()
        .find_map(|l| l.split("Final estimate: PPL = ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no final PPL from llama-perplexity:\n{stderr}"));
    let rel = (ppl - theirs).abs() / theirs;
    assert!(rel < 0.01, "PPL ours {ppl} llama.cpp {theirs}");

    // The model against its own reference.
    let base = dir.join("base.kld");
    let mut a = common.to_vec();
    a.extend([
        "--kl-divergence-base".as_ref(),
        base.as_os_str(),
        "--json".as_ref(),
    ]);
    let first = spinel_json(&a);
    assert_eq!(first["ppl"], ours["ppl"]);
    a.push("--kl-divergence".as_ref());
    let same = spinel_json(&a);
    assert!(same["kld"].as_f64().unwrap().abs() < 1e-4, "{same}");
    assert_eq!(same["top1"].as_f64(), Some(1.0), "{same}");
    assert!(
        same["delta_ppl"].as_f64().unwrap().abs() < 1e-3 * ppl,
        "{same}"
    );

    kld_like_llama_perplexity(&common, &dir, &bin);
}

/// A Q4_0 requantization of the model against the model itself: the KLD
/// and top-1 agreement of `spinel perplexity --kl-divergence` equal
/// `llama-perplexity --kl-divergence`'s on the same two files and text
/// within 2% (each tool with its own saved base).
fn kld_like_llama_perplexity(
    common: &[&std::ffi::OsStr],
    dir: &std::path::Path,
    bin: &std::path::Path,
) {
    let model = common[1];
    let q4 = dir.join("q4_0.gguf");
    ok(
        "spinel quantize --type q4_0",
        Command::new(SPINEL)
            .arg("quantize")
            .arg(model)
            .arg(&q4)
            .args(["--type", "q4_0"])
            .output()
            .unwrap(),
    );
    // `common` is `-m MODEL` then the text and context arguments.
    let rest = &common[2..];
    let (ours_base, theirs_base) = (dir.join("ours.kld"), dir.join("theirs.kld"));
    let mut a = vec!["-m".as_ref(), model];
    a.extend_from_slice(rest);
    a.extend([
        "--kl-divergence-base".as_ref(),
        ours_base.as_os_str(),
        "--json".as_ref(),
    ]);
    spinel_json(&a);
    let mut a = vec!["-m".as_ref(), q4.as_os_str()];
    a.extend_from_slice(rest);
    a.extend([
        "--kl-divergence-base".as_ref(),
        ours_base.as_os_str(),
        "--kl-divergence".as_ref(),
        "--json".as_ref(),
    ]);
    let ours = spinel_json(&a);

    let llama = |m: &std::ffi::OsStr, compare: bool| {
        let mut cmd = Command::new(bin.join("llama-perplexity"));
        cmd.arg("-m")
            .arg(m)
            .args(rest)
            .args(["-b", N_CTX, "-t", "2", "--kl-divergence-base"])
            .arg(&theirs_base);
        if compare {
            cmd.arg("--kl-divergence");
        }
        // The statistics go to stdout, the progress to stderr.
        let (stdout, stderr) = ok("llama-perplexity --kl-divergence", cmd.output().unwrap());
        stdout + &stderr
    };
    llama(model, false);
    let out = llama(q4.as_os_str(), true);
    let value = |key: &str| -> f64 {
        out.lines()
            .find_map(|l| l.trim_start().strip_prefix(key))
            .and_then(|r| r.trim_start_matches([' ', ':']).split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key:?} from llama-perplexity:\n{out}"))
    };
    let (kld, top1) = (value("Mean    KLD:"), value("Same top p:") / 100.0);
    let (our_kld, our_top1) = (
        ours["kld"].as_f64().unwrap(),
        ours["top1"].as_f64().unwrap(),
    );
    // Q4_0 of SmolLM2 is far from its base (KLD ~0.3), so 2% is a real bound.
    assert!(
        kld > 0.05,
        "KLD {kld}: the comparison needs a quantized model"
    );
    assert!(
        (our_kld - kld).abs() <= 0.02 * kld,
        "KLD ours {our_kld} llama.cpp {kld}"
    );
    assert!(
        (our_top1 - top1).abs() <= 0.02 * top1,
        "top-1 ours {our_top1} llama.cpp {top1}"
    );
}
