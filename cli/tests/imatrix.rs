//! `spinel imatrix` against llama.cpp's `llama-imatrix`: the demo model
//! (SmolLM2-135M-Instruct) dequantized to f32, the start of the evaluation
//! text, 4 chunks of 128 tokens, 2 threads, both with an f32 KV cache and
//! no flash attention (llama.cpp's defaults are an f16 cache and flash
//! attention where available; Spinel's f32 cache is the comparable
//! precision). The f32 weights keep the activations out of Q8
//! quantization, whose rounding flips otherwise amplify tiny summation
//! differences layer after layer: the same 135M model in Q4_1 moves by
//! ~1.8% on some tensors in llama.cpp itself when only its KV cache goes
//! from f16 to f32, so no tool matches another closer than that there.
//!
//! Checked: the same entries (every attention and feed-forward matrix of
//! every layer, the output layer left out as llama-imatrix does by
//! default), the same counts (512 tokens each) and metadata, and the sums
//! of squares within 1e-3 (see [`close`]); `--process-output` adds the
//! output layer's entry and keeps the others; the legacy .dat file carries
//! the same importance as the GGUF one; a hostile file is a clean error.
//!
//! Needs the model (`$SPINEL_TEST_MODEL` or the Spinel cache), llama.cpp
//! built by `../shared/peers/llama-cpp.sh` and the text (both scripts run
//! on first use and cache what they fetch); without them the test fails
//! saying why.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{llama_cpp_bin, ok, script};

use spinel_runtime::imatrix::Imatrix;

const SPINEL: &str = env!("CARGO_BIN_EXE_spinel");
const ARGS: [&str; 6] = ["-c", "128", "--chunks", "4", "-t", "2"];

/// `a` (ours) is within 1e-3 of `b` (llama.cpp's): the vector's relative
/// L2 error, and each element relative to itself or, for columns far
/// below the tensor's largest (where a relative bound would measure only
/// f32 rounding of a sum whose terms are 1e3× smaller), to 1e-3 of that
/// largest. Returns the vector's relative error.
fn close(name: &str, a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "{name}: lengths");
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = norm(&mut a.iter().zip(b).map(|(&x, &y)| f64::from(x) - f64::from(y)));
    let rel = diff / norm(&mut b.iter().map(|&y| f64::from(y))).max(f64::MIN_POSITIVE);
    assert!(rel <= 1e-3, "{name}: relative L2 difference {rel:.3e}");
    let max = b.iter().fold(0f32, |m, &y| m.max(y.abs()));
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let tol = 1e-3 * y.abs().max(max * 1e-3);
        assert!((x - y).abs() <= tol, "{name}[{i}]: ours {x}, llama.cpp {y}");
    }
    rel
}

fn base_f32(dir: &Path) -> PathBuf {
    let out = dir.join("base.f32.gguf");
    ok(
        "spinel quantize --type f32",
        Command::new(SPINEL)
            .arg("quantize")
            .arg(spinel_runtime::cache::test_model())
            .arg(&out)
            .args(["--type", "f32", "-t", "2"])
            .output()
            .unwrap(),
    );
    out
}

fn spinel_imatrix(model: &Path, text: &Path, out: &Path, extra: &[&str]) {
    ok(
        "spinel imatrix",
        Command::new(SPINEL)
            .arg("imatrix")
            .arg("-m")
            .arg(model)
            .arg("-f")
            .arg(text)
            .arg("-o")
            .arg(out)
            .args(ARGS)
            .args(extra)
            .output()
            .unwrap(),
    );
}

#[test]
fn imatrix_like_llama_imatrix() {
    let dir = common::scratch_dir("imatrix-test");
    let full = std::fs::read(script("../scripts/fetch-eval-text.sh")).unwrap();
    let text = dir.join("calibration.txt");
    std::fs::write(&text, &full[..8000]).unwrap();
    let model = base_f32(&dir);

    let ours_path = dir.join("ours.gguf");
    spinel_imatrix(&model, &text, &ours_path, &[]);
    let theirs_path = dir.join("llama.gguf");
    ok(
        "llama-imatrix",
        Command::new(llama_cpp_bin().join("llama-imatrix"))
            .arg("-m")
            .arg(&model)
            .arg("-f")
            .arg(&text)
            .arg("-o")
            .arg(&theirs_path)
            .args(ARGS)
            .args(["-ctk", "f32", "-ctv", "f32", "-fa", "off"])
            .output()
            .unwrap(),
    );
    let ours = Imatrix::load(&ours_path).unwrap();
    let theirs = Imatrix::load(&theirs_path).unwrap();
    assert!(!theirs.legacy && theirs.has_metadata);
    assert_eq!(
        (ours.chunk_count, ours.chunk_size, &ours.datasets),
        (theirs.chunk_count, theirs.chunk_size, &theirs.datasets)
    );
    let names = |m: &Imatrix| m.entries.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&theirs));
    // SmolLM2: 7 matrices in each of 30 layers.
    assert_eq!(ours.entries.len(), 210);
    let mut worst = (0f64, String::new());
    for (name, b) in &theirs.entries {
        let a = &ours.entries[name];
        assert_eq!(a.counts, b.counts, "{name}: counts");
        assert_eq!(a.counts, [512], "{name}: every token of 4 chunks");
        let rel = close(name, &a.sums, &b.sums);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    eprintln!(
        "largest relative L2 difference: {:.3e} ({})",
        worst.0, worst.1
    );

    // --process-output adds the output layer (tied to the embeddings
    // here, which llama-imatrix never records): 576 columns, every token;
    // the layers' entries stay those above (every position's logits run
    // the one-row kernels, so within `close`, not bit for bit).
    let with_out = dir.join("ours.output.gguf");
    spinel_imatrix(&model, &text, &with_out, &["--process-output"]);
    let wo = Imatrix::load(&with_out).unwrap();
    assert_eq!(wo.entries.len(), 211);
    let out = &wo.entries["output.weight"];
    assert_eq!((out.sums.len(), &out.counts[..]), (576, &[512i64][..]));
    assert!(out.sums.iter().all(|v| v.is_finite() && *v > 0.0));
    for (name, a) in &ours.entries {
        close(name, &wo.entries[name].sums, &a.sums);
    }

    // The legacy format carries the same importance.
    let dat = dir.join("ours.dat");
    spinel_imatrix(&model, &text, &dat, &["--output-format", "dat"]);
    let legacy = Imatrix::load(&dat).unwrap();
    assert!(legacy.legacy);
    assert_eq!(legacy.chunk_count, 4);
    let (wl, wg) = (legacy.quant_weights(), ours.quant_weights());
    for (name, g) in &wg {
        for (x, y) in wl[name].iter().zip(g) {
            assert!((x - y).abs() <= 1e-6 * y.abs(), "{name}: dat {x} gguf {y}");
        }
    }

    // A damaged file is an error naming the problem, not a crash.
    let bad = dir.join("bad.dat");
    let mut bytes = std::fs::read(&dat).unwrap();
    bytes.truncate(100);
    std::fs::write(&bad, &bytes).unwrap();
    let out = Command::new(SPINEL)
        .arg("quantize")
        .arg(&model)
        .arg(dir.join("never.gguf"))
        .args(["--type", "q4_0", "--imatrix"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("truncated"),
        "{stderr}"
    );
}
