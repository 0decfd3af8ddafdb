//! `spinel quantize` against llama.cpp's `llama-quantize` on the real model:
//!
//! * the base: SmolLM2-135M-Instruct Q4_1 dequantized to f32 by
//!   `spinel quantize --type f32` (a requantization: it must warn);
//! * for each K mix and q4_0/q8_0, both tools quantize that base: every
//!   tensor gets the same type and the files the same size; for q4_0 and
//!   q8_0 every tensor's bytes are equal (and so are the whole files:
//!   metadata and tensor order follow llama-quantize too);
//! * `--type w4a8` is llama-quantize's Q4_0 with `--token-embedding-type
//!   q8_0 --output-tensor-type q8_0`, tensor for tensor, and names its
//!   preset in `spinel.quantize.preset`;
//! * iq4_nl and iq4_xs files are byte-identical to llama-quantize's, and
//!   their i-quant tensors dequantize exactly as gguf-py does;
//! * our q4_k_m, q4_0, w4a8 and iq4_xs files run in Spinel (finite logits)
//!   and in llama.cpp (`llama-simple`);
//! * with an importance matrix made by `llama-imatrix`, `spinel quantize
//!   --imatrix` and `llama-quantize --imatrix` write byte-identical files
//!   for q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k, iq4_nl
//!   and iq4_xs;
//!   the same file in the legacy .dat format gives the same bytes; and
//!   both tools accept the imatrix `spinel imatrix` writes;
//!   likewise for the grid i-quant mixes iq2_xxs, iq2_xs, iq2_s, iq2_m,
//!   iq1_s, iq1_m, iq3_xxs and iq3_m.
//! * iq3_s and iq3_m (the grid i-quant mixes llama-quantize makes without
//!   an importance matrix) are byte-identical to llama-quantize's, their
//!   IQ3_S tensors dequantize as gguf-py does, and the iq3_m file's
//!   perplexity equals llama-perplexity's within 2%; iq3_xxs and iq3_xs
//!   (which on SmolLM2 need no importance matrix) are byte-identical too,
//!   and the mixes that need one are refused by both tools.
//! * Spinel's own iq4_xs_m mix writes the types it documents, the bytes
//!   llama-quantize writes when told those types, a file no larger than
//!   iq4_xs + imatrix, and one llama.cpp runs; an importance matrix with
//!   the output layer (`spinel imatrix --process-output`) weights its tied
//!   embeddings; without an importance matrix it keeps its types and says
//!   what one would gain.
//!
//! Needs the model (`$SPINEL_TEST_MODEL` or the Spinel cache) and llama.cpp
//! built by `../shared/peers/llama-cpp.sh` (run on first use, ~10 minutes,
//! then cached under `~/.cache/spinel-peers`); without them the tests fail
//! saying why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;
use common::{llama_cpp_bin, ok};

use spinel_runtime::gguf::MappedGguf;
use spinel_runtime::model::{KvType, Model, StateOptions};

const SPINEL: &str = env!("CARGO_BIN_EXE_spinel");

fn work_dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| common::scratch_dir("quantize-test"))
}

/// The f32 base, made once.
fn base() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        let model = spinel_runtime::cache::test_model();
        let out = work_dir().join("base.f32.gguf");
        let (_, stderr) = ok(
            "spinel quantize --type f32",
            Command::new(SPINEL)
                .arg("quantize")
                .arg(&model)
                .arg(&out)
                .args(["--type", "f32"])
                .output()
                .unwrap(),
        );
        assert!(
            stderr.contains("warning") && stderr.contains("dequantized"),
            "requantizing a Q4_1 file did not warn:\n{stderr}"
        );
        out
    })
}

fn ours(ty: &str) -> PathBuf {
    let out = work_dir().join(format!("ours.{ty}.gguf"));
    if !out.exists() {
        let (_, stderr) = ok(
            &format!("spinel quantize --type {ty}"),
            Command::new(SPINEL)
                .arg("quantize")
                .arg(base())
                .arg(&out)
                .args(["--type", ty, "-t", "2"])
                .output()
                .unwrap(),
        );
        assert!(stderr.contains("bits per weight"), "no summary:\n{stderr}");
    }
    out
}

fn theirs(ty: &str) -> PathBuf {
    let out = work_dir().join(format!("llama.{ty}.gguf"));
    if !out.exists() {
        ok(
            &format!("llama-quantize {ty}"),
            Command::new(llama_cpp_bin().join("llama-quantize"))
                .arg(base())
                .arg(&out)
                .args([ty, "2"])
                .output()
                .unwrap(),
        );
    }
    out
}

fn open(p: &Path) -> MappedGguf {
    // SAFETY: files this test wrote and nothing else touches.
    unsafe { MappedGguf::open(p) }.unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn compare(ty: &str, bytes_too: bool) {
    let (a, b) = (ours(ty), theirs(ty));
    let (ma, mb) = (open(&a), open(&b));
    let (fa, fb) = (ma.file(), mb.file());
    let names = |f: &spinel_runtime::gguf::GgufFile<'_>| -> Vec<String> {
        f.tensors().iter().map(|t| t.name().to_string()).collect()
    };
    assert_eq!(names(fa), names(fb), "{ty}: tensor order");
    let mut type_diffs = Vec::new();
    for (x, y) in fa.tensors().iter().zip(fb.tensors()) {
        if x.ggml_type() != y.ggml_type() {
            type_diffs.push(format!(
                "{}: ours {} llama.cpp {}",
                x.name(),
                x.ggml_type(),
                y.ggml_type()
            ));
        } else if bytes_too {
            assert!(x.data() == y.data(), "{ty}: {} bytes differ", x.name());
        }
    }
    assert!(
        type_diffs.is_empty(),
        "{ty}: tensor types differ:\n{}",
        type_diffs.join("\n")
    );
    assert_eq!(
        fa.metadata().get_u32("general.file_type").unwrap(),
        fb.metadata().get_u32("general.file_type").unwrap(),
        "{ty}: general.file_type"
    );
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert_eq!(size(&a), size(&b), "{ty}: file sizes");
    if bytes_too {
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{ty}: files differ"
        );
    }
}

/// One test (the files are big: 0.5 GB of f32 base, 15 outputs, in a
/// scratch folder removed when the process exits).
#[test]
fn quantize_like_llama_quantize() {
    q4_0_and_q8_0_bytes_equal_llama_quantize();
    k_mixes_choose_llama_quantize_types();
    w4a8_is_q4_0_with_8_bit_embeddings();
    iq4_bytes_equal_llama_quantize_and_dequantize_as_gguf_py();
    outputs_run_in_spinel_and_llama_cpp();
}

/// The importance-matrix checks (`cargo test --test quantize imatrix` runs
/// them alone).
#[test]
fn quantize_with_imatrix_like_llama_quantize() {
    imatrix_files_equal_llama_quantize();
    our_imatrix_works_in_both_tools();
}

/// The text the importance matrices are computed on: the start of the
/// evaluation text (as in the perplexity test).
fn calibration_text() -> PathBuf {
    let text = common::script("../scripts/fetch-eval-text.sh");
    let full = std::fs::read(&text).unwrap();
    let out = work_dir().join("calibration.txt");
    std::fs::write(&out, &full[..8000]).unwrap();
    out
}

/// `llama-imatrix`'s GGUF importance matrix, made once for every test.
fn llama_imatrix_gguf() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| llama_imatrix("gguf"))
}

/// `llama-imatrix` on the demo model, 4 chunks of 128 tokens, in `format`.
fn llama_imatrix(format: &str) -> PathBuf {
    let out = work_dir().join(format!("llama.imatrix.{format}"));
    ok(
        "llama-imatrix",
        Command::new(llama_cpp_bin().join("llama-imatrix"))
            .arg("-m")
            .arg(spinel_runtime::cache::test_model())
            .arg("-f")
            .arg(calibration_text())
            .arg("-o")
            .arg(&out)
            .args([
                "-c",
                "128",
                "--chunks",
                "4",
                "-t",
                "2",
                "--output-format",
                format,
            ])
            .output()
            .unwrap(),
    );
    out
}

/// Both tools quantize the base with `imatrix` to `ty`; returns the files.
fn quantize_both(ty: &str, imatrix: &Path, tag: &str) -> (PathBuf, PathBuf) {
    let ours = work_dir().join(format!("ours.{tag}.{ty}.gguf"));
    let theirs = work_dir().join(format!("llama.{tag}.{ty}.gguf"));
    let (_, stderr) = ok(
        &format!("spinel quantize --imatrix --type {ty}"),
        Command::new(SPINEL)
            .arg("quantize")
            .arg(base())
            .arg(&ours)
            .args(["--type", ty, "-t", "2", "--imatrix"])
            .arg(imatrix)
            .output()
            .unwrap(),
    );
    assert!(stderr.contains("importance matrix"), "{ty}: {stderr}");
    ok(
        &format!("llama-quantize --imatrix {ty}"),
        Command::new(llama_cpp_bin().join("llama-quantize"))
            .arg("--imatrix")
            .arg(imatrix)
            .arg(base())
            .arg(&theirs)
            .args([ty, "2"])
            .output()
            .unwrap(),
    );
    (ours, theirs)
}

fn assert_same_bytes(ty: &str, a: &Path, b: &Path) {
    let (ma, mb) = (open(a), open(b));
    for (x, y) in ma.file().tensors().iter().zip(mb.file().tensors()) {
        assert_eq!(x.name(), y.name(), "{ty}: tensor order");
        assert_eq!(x.ggml_type(), y.ggml_type(), "{ty}: type of {}", x.name());
        assert!(x.data() == y.data(), "{ty}: {} bytes differ", x.name());
    }
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{ty}: files differ (metadata)"
    );
}

/// `--imatrix` with llama-imatrix's file: whole files byte-identical to
/// llama-quantize's (weighted quantizers, the imatrix-dependent mixes —
/// Q4_1 for the first ffn_down layers of q4_0, no Q5_K ones for iq4_xs —
/// and the `quantize.imatrix.*` metadata). The legacy .dat file of the same
/// data gives the same tensors.
fn imatrix_files_equal_llama_quantize() {
    let im = llama_imatrix_gguf();
    for ty in [
        "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k", "iq4_nl",
        "iq4_xs",
    ] {
        let (a, b) = quantize_both(ty, im, "imatrix");
        assert_same_bytes(ty, &a, &b);
    }
    // The importance matrix changes the result.
    let plain = work_dir().join("ours.no-imatrix.q4_k_m.gguf");
    ok(
        "spinel quantize q4_k_m",
        Command::new(SPINEL)
            .arg("quantize")
            .arg(base())
            .arg(&plain)
            .args(["--type", "q4_k_m", "-t", "2"])
            .output()
            .unwrap(),
    );
    let (ma, mp) = (
        open(&work_dir().join("ours.imatrix.q4_k_m.gguf")),
        open(&plain),
    );
    // Every tensor of a type with a weighted algorithm changes (Q8_0 and
    // F32 ignore the importance matrix; SmolLM2: 30 layers × 7 matrices,
    // 14 of them Q8_0).
    let (mut changed, mut weighted) = (0, 0);
    for (x, y) in ma.file().tensors().iter().zip(mp.file().tensors()) {
        if !matches!(x.ggml_type().name(), "F32" | "Q8_0") {
            weighted += 1;
            changed += usize::from(x.data() != y.data());
        }
    }
    assert_eq!(
        (changed, weighted),
        (196, 196),
        "tensors changed by --imatrix"
    );
    let q4_0 = open(&work_dir().join("ours.imatrix.q4_0.gguf"));
    let q4_1 = q4_0
        .file()
        .tensors()
        .iter()
        .filter(|t| t.ggml_type().name() == "Q4_1")
        .count();
    assert_eq!(
        q4_1, 3,
        "q4_0 with an imatrix: ffn_down of layers 0-2 in Q4_1"
    );
    let dat = llama_imatrix("dat");
    let (a, b) = quantize_both("q4_k_m", &dat, "dat");
    assert_same_bytes("q4_k_m (.dat)", &a, &b);
}

/// The grid i-quant mixes with llama-imatrix's importance matrix (those
/// llama-quantize only makes with one, and iq3_m whose IQ3_S tensors now
/// use it): whole files byte-identical to `llama-quantize --imatrix`. One
/// file per mix: iq3_s and iq3_xs share their quantizers with iq3_m and
/// iq3_xxs.
#[test]
fn grid_iquants_with_imatrix_like_llama_quantize() {
    let im = llama_imatrix_gguf();
    for ty in [
        "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq1_s", "iq1_m", "iq3_xxs", "iq3_m",
    ] {
        let (a, b) = quantize_both(ty, im, "imatrix");
        assert_same_bytes(ty, &a, &b);
    }
}

/// Interop: the GGUF imatrix `spinel imatrix` writes is accepted by
/// llama-quantize, and both tools quantize with it to the same bytes.
fn our_imatrix_works_in_both_tools() {
    let im = work_dir().join("ours.imatrix.gguf");
    ok(
        "spinel imatrix",
        Command::new(SPINEL)
            .arg("imatrix")
            .arg("-m")
            .arg(spinel_runtime::cache::test_model())
            .arg("-f")
            .arg(calibration_text())
            .arg("-o")
            .arg(&im)
            .args(["-c", "128", "--chunks", "4", "-t", "2"])
            .output()
            .unwrap(),
    );
    let (a, b) = quantize_both("q4_k_m", &im, "ours-imatrix");
    assert_same_bytes("q4_k_m (our imatrix)", &a, &b);
}

/// IQ4_NL and IQ4_XS: byte for byte what llama-quantize writes (ggml's
/// `quantize_iq4_nl` / `quantize_iq4_xs`, with llama-quantize's mix: Q5_K
/// for the first eighth of ffn_down, IQ4_NL where rows are not whole
/// super-blocks, Q8_0 for the tied output), and every i-quant tensor
/// dequantizes (on every ISA here) to exactly what gguf-py's numpy
/// dequantizer gives.
fn iq4_bytes_equal_llama_quantize_and_dequantize_as_gguf_py() {
    compare("iq4_nl", true);
    compare("iq4_xs", true);
    let path = ours("iq4_xs");
    let py_out = work_dir().join("iq4_xs.gguf_py.f32");
    let script = r#"
import sys, numpy as np, gguf
from gguf.quants import dequantize
r = gguf.GGUFReader(sys.argv[1])
with open(sys.argv[2], "wb") as f:
    for t in r.tensors:
        if t.tensor_type.name in ("IQ4_NL", "IQ4_XS"):
            f.write(dequantize(t.data[:4], t.tensor_type).astype("<f4").tobytes())
"#;
    ok(
        "gguf-py dequantize",
        Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .arg(&py_out)
            .output()
            .expect("python3 with the gguf package (scripts/test.sh installs it)"),
    );
    let want: Vec<f32> = std::fs::read(&py_out)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let m = open(&path);
    let mut seen = std::collections::BTreeMap::new();
    for kern in spinel_quant::Kernels::all_supported() {
        let mut got = Vec::new();
        for t in m.file().tensors() {
            let ty = t.ggml_type();
            if !matches!(ty.name(), "IQ4_NL" | "IQ4_XS") {
                continue;
            }
            let n = t.dims()[0] as usize;
            let row = ty.row_size(n).unwrap();
            for r in t.data().chunks_exact(row).take(4) {
                let mut y = vec![0f32; n];
                (kern.of(ty).to_float)(r, &mut y);
                got.extend(y);
            }
            *seen.entry(ty.name()).or_insert(0) += 1;
        }
        assert_eq!(got.len(), want.len(), "{}: values compared", kern.isa());
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{}: IQ4 dequantization differs from gguf-py",
            kern.isa()
        );
    }
    // SmolLM2's 576-wide matrices fall back to IQ4_NL; ffn_down (1536
    // wide) is IQ4_XS past the first three layers.
    assert!(
        seen.contains_key("IQ4_NL") && seen.contains_key("IQ4_XS"),
        "{seen:?}"
    );
}

/// Dequantizes the first rows of every tensor of type `names` in `path`
/// with gguf-py and with every ISA's `to_float`: equal bits. Returns how
/// many tensors of each type were seen.
fn dequantizes_as_gguf_py(
    path: &Path,
    names: &[&str],
) -> std::collections::BTreeMap<&'static str, usize> {
    let py_out = path.with_extension("gguf_py.f32");
    let script = r#"
import sys, numpy as np, gguf
from gguf.quants import dequantize
r = gguf.GGUFReader(sys.argv[1])
names = sys.argv[3].split(",")
with open(sys.argv[2], "wb") as f:
    for t in r.tensors:
        if t.tensor_type.name in names:
            f.write(dequantize(t.data[:4], t.tensor_type).astype("<f4").tobytes())
"#;
    ok(
        "gguf-py dequantize",
        Command::new("python3")
            .args(["-c", script])
            .arg(path)
            .arg(&py_out)
            .arg(names.join(","))
            .output()
            .expect("python3 with the gguf package (scripts/test.sh installs it)"),
    );
    let want: Vec<f32> = std::fs::read(&py_out)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let m = open(path);
    let mut seen = std::collections::BTreeMap::new();
    for kern in spinel_quant::Kernels::all_supported() {
        let mut got = Vec::new();
        seen.clear();
        for t in m.file().tensors() {
            let ty = t.ggml_type();
            if !names.contains(&ty.name()) {
                continue;
            }
            let n = t.dims()[0] as usize;
            let row = ty.row_size(n).unwrap();
            for r in t.data().chunks_exact(row).take(4) {
                let mut y = vec![0f32; n];
                (kern.of(ty).to_float)(r, &mut y);
                got.extend(y);
            }
            *seen.entry(ty.name()).or_insert(0) += 1;
        }
        assert_eq!(got.len(), want.len(), "{}: values compared", kern.isa());
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{}: {names:?} dequantization differs from gguf-py",
            kern.isa()
        );
    }
    seen
}

/// The grid i-quants: IQ3_S and IQ3_M byte for byte what llama-quantize
/// writes (ggml's `quantize_iq3_s`, Q4_K/Q6_K where its rules say, IQ4_NL
/// for SmolLM2's 576-wide rows), dequantized as gguf-py does, running with
/// llama-perplexity's perplexity; the mixes needing an importance matrix
/// refused by both tools.
#[test]
fn grid_iquants_like_llama_quantize() {
    compare("iq3_s", true);
    compare("iq3_m", true);
    let seen = dequantizes_as_gguf_py(&ours("iq3_s"), &["IQ3_S", "IQ4_NL"]);
    // ffn_down (1536 wide) is IQ3_S; the 576-wide matrices fall back.
    assert!(seen.get("IQ3_S").copied().unwrap_or(0) >= 30, "{seen:?}");

    // llama-quantize refuses a mix without an importance matrix when a
    // tensor would get IQ3_XXS, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S or IQ1_M
    // after its fallbacks. On SmolLM2 the 576-wide matrices fall back to
    // IQ4_NL, so iq3_xxs and iq3_xs go through (ffn_down is Q3_K/Q4_K or
    // IQ3_S): byte-identical files; the 2- and 1-bit mixes are refused.
    for (ty, accepted) in [
        ("iq3_xxs", true),
        ("iq3_xs", true),
        ("iq2_m", false),
        ("iq2_xxs", false),
        ("iq1_m", false),
    ] {
        let out = work_dir().join(format!("refused.{ty}.gguf"));
        let theirs = Command::new(llama_cpp_bin().join("llama-quantize"))
            .arg(base())
            .arg(&out)
            .args([ty, "2"])
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&out);
        assert_eq!(
            theirs.status.success(),
            accepted,
            "llama-quantize {ty} without an importance matrix:\n{}",
            String::from_utf8_lossy(&theirs.stderr)
        );
        if accepted {
            compare(ty, true);
            continue;
        }
        let run = Command::new(SPINEL)
            .arg("quantize")
            .arg(base())
            .arg(&out)
            .args(["--type", ty])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && stderr.contains("requires an importance matrix"),
            "spinel quantize {ty} without an importance matrix:\n{stderr}"
        );
        assert!(!out.exists(), "{ty}: refused, yet a file was written");
    }

    // The iq3_m file runs: its perplexity on a piece of the evaluation
    // text (6 chunks of 128 tokens) equals llama-perplexity's on the same
    // file within 2%.
    let path = ours("iq3_m");
    let text = common::script("../scripts/fetch-eval-text.sh");
    let short = work_dir().join("short.txt");
    std::fs::write(&short, &std::fs::read(&text).unwrap()[..8000]).unwrap();
    let args = [
        "-m".as_ref(),
        path.as_os_str(),
        "-f".as_ref(),
        short.as_os_str(),
        "-c".as_ref(),
        "128".as_ref(),
        "--chunks".as_ref(),
        "6".as_ref(),
    ];
    let (stdout, _) = ok(
        "spinel perplexity (iq3_m)",
        Command::new(SPINEL)
            .arg("perplexity")
            .args(args)
            .arg("--json")
            .output()
            .unwrap(),
    );
    let ours: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let ppl = ours["ppl"].as_f64().unwrap();
    let (_, stderr) = ok(
        "llama-perplexity (iq3_m)",
        Command::new(llama_cpp_bin().join("llama-perplexity"))
            .args(args)
            .args(["-b", "128", "-t", "2"])
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
    assert!(
        ppl.is_finite() && rel < 0.02,
        "iq3_m PPL ours {ppl} llama.cpp {theirs}"
    );
    eprintln!("iq3_m PPL: spinel {ppl:.3}, llama-perplexity {theirs:.3}");
}

fn q4_0_and_q8_0_bytes_equal_llama_quantize() {
    compare("q4_0", true);
    compare("q8_0", true);
}

fn k_mixes_choose_llama_quantize_types() {
    for ty in ["q4_k_m", "q3_k_m", "q5_k_m", "q4_k_s", "q6_k", "q2_k"] {
        compare(ty, false);
    }
}

/// Meta's W4A8: every matrix Q4_0 but the embeddings (and an output
/// layer, where there is one) in Q8_0 — what llama-quantize makes of Q4_0
/// when told those two types.
fn w4a8_is_q4_0_with_8_bit_embeddings() {
    let a = ours("w4a8");
    let b = work_dir().join("llama.w4a8.gguf");
    ok(
        "llama-quantize q4_0 with q8_0 embeddings and output",
        Command::new(llama_cpp_bin().join("llama-quantize"))
            .args([
                "--token-embedding-type",
                "q8_0",
                "--output-tensor-type",
                "q8_0",
            ])
            .arg(base())
            .arg(&b)
            .args(["q4_0", "2"])
            .output()
            .unwrap(),
    );
    let (ma, mb) = (open(&a), open(&b));
    let (fa, fb) = (ma.file(), mb.file());
    assert_eq!(fa.tensors().len(), fb.tensors().len());
    let (mut q4, mut q8) = (0, 0);
    for (x, y) in fa.tensors().iter().zip(fb.tensors()) {
        assert_eq!(x.name(), y.name());
        assert_eq!(x.ggml_type(), y.ggml_type(), "w4a8: {}", x.name());
        assert!(x.data() == y.data(), "w4a8: {} bytes differ", x.name());
        match x.ggml_type().name() {
            "Q4_0" => q4 += 1,
            "Q8_0" => {
                assert_eq!(
                    x.name(),
                    "token_embd.weight",
                    "w4a8: only the embeddings in 8 bits"
                );
                q8 += 1;
            }
            "F32" => assert_eq!(x.dims()[1..].iter().product::<u64>(), 1, "{}", x.name()),
            other => panic!("w4a8: {} is {other}", x.name()),
        }
    }
    // SmolLM2: 7 matrices in each of 30 layers; tied embeddings.
    assert_eq!((q4, q8), (210, 1));
    let md = fa.metadata();
    assert_eq!(md.get_u32("general.file_type").unwrap(), 2, "mostly Q4_0");
    assert_eq!(md.get_str("spinel.quantize.preset").unwrap(), "w4a8");
    // A requantization names no preset it does not apply.
    let again = work_dir().join("w4a8.requantized.q4_0.gguf");
    ok(
        "spinel quantize w4a8 -> q4_0",
        Command::new(SPINEL)
            .arg("quantize")
            .arg(&a)
            .arg(&again)
            .args(["--type", "q4_0", "-t", "2"])
            .output()
            .unwrap(),
    );
    let m = open(&again);
    assert!(
        m.file()
            .metadata()
            .get_str("spinel.quantize.preset")
            .is_err()
    );
}

fn outputs_run_in_spinel_and_llama_cpp() {
    for ty in ["q4_k_m", "q4_0", "w4a8", "iq4_xs"] {
        let path = ours(ty);
        let model = Model::load(&path).unwrap();
        let mut state = model
            .new_state_with(&StateOptions {
                n_ctx: Some(64),
                kv_type: KvType::F32,
                ..StateOptions::default()
            })
            .unwrap();
        // "The capital of France is" in SmolLM2's vocabulary, roughly: any
        // valid ids do; the logits must be finite.
        let logits = model
            .forward(&mut state, &[504, 3575, 282, 4649, 314])
            .unwrap();
        assert!(
            logits.iter().all(|x| x.is_finite()),
            "{ty}: non-finite logits"
        );
        let (_, stderr) = ok(
            &format!("spinel run ({ty})"),
            Command::new(SPINEL)
                .arg("run")
                .arg("-m")
                .arg(&path)
                .args(["-n", "8", "--temp", "0", "-p", "The capital of France is"])
                .output()
                .unwrap(),
        );
        let _ = stderr;
        let run = Command::new(llama_cpp_bin().join("llama-simple"))
            .arg("-m")
            .arg(&path)
            .args(["-n", "4", "The capital of France is"])
            .output()
            .expect("running llama-simple");
        let (_, stderr) = ok(&format!("llama-simple ({ty})"), run);
        assert!(
            stderr.contains("decoded 4 tokens"),
            "{ty}: llama-simple:\n{stderr}"
        );
    }
}

/// Spinel's `iq4_xs_m` mix: the per-tensor types it documents (5-bit tied
/// embeddings, Q8_0 attention values, 5-bit attention q/k/output and
/// ffn_down, IQ4_NL gate and up on SmolLM2's 576-wide rows), tensor for
/// tensor the bytes `llama-quantize --imatrix` writes when told the same
/// types, a file no larger than llama.cpp's iq4_xs with the same
/// importance matrix, and one llama.cpp runs. Without an importance matrix
/// it still quantizes (every type has an unweighted quantizer) to the same
/// types, saying that it is meant for one.
#[test]
fn iq4_xs_m_mix() {
    let im = llama_imatrix_gguf();
    let ours = work_dir().join("ours.imatrix.iq4_xs_m.gguf");
    let (_, stderr) = ok(
        "spinel quantize --type iq4_xs_m --imatrix",
        Command::new(SPINEL)
            .arg("quantize")
            .arg(base())
            .arg(&ours)
            .args(["--type", "iq4_xs_m", "-t", "2", "--imatrix"])
            .arg(im)
            .output()
            .unwrap(),
    );
    assert!(!stderr.contains("without --imatrix"), "{stderr}");
    let theirs = work_dir().join("llama.imatrix.iq4_xs_m.gguf");
    ok(
        "llama-quantize --imatrix iq4_xs with iq4_xs_m's types",
        Command::new(llama_cpp_bin().join("llama-quantize"))
            .arg("--imatrix")
            .arg(im)
            .args(["--token-embedding-type", "q5_1"])
            .args(["--tensor-type", "attn_v=q8_0"])
            .args(["--tensor-type", "attn_q=q5_0"])
            .args(["--tensor-type", "attn_k=q5_0"])
            .args(["--tensor-type", "attn_output=q5_0"])
            .args(["--tensor-type", "ffn_down=q5_k"])
            .arg(base())
            .arg(&theirs)
            .args(["iq4_xs", "2"])
            .output()
            .unwrap(),
    );
    let (ma, mb) = (open(&ours), open(&theirs));
    let mut counts = std::collections::BTreeMap::new();
    for (x, y) in ma.file().tensors().iter().zip(mb.file().tensors()) {
        assert_eq!(x.name(), y.name(), "iq4_xs_m: tensor order");
        assert_eq!(x.ggml_type(), y.ggml_type(), "iq4_xs_m: {}", x.name());
        assert!(x.data() == y.data(), "iq4_xs_m: {} bytes differ", x.name());
        let role = match x.name().rsplit_once(".weight") {
            Some((n, _)) => n.rsplit('.').next().unwrap().to_string(),
            None => x.name().to_string(),
        };
        *counts
            .entry((role, x.ggml_type().name().to_string()))
            .or_insert(0) += 1;
    }
    let want: Vec<((&str, &str), usize)> = vec![
        (("attn_k", "Q5_0"), 30),
        (("attn_norm", "F32"), 30),
        (("attn_output", "Q5_0"), 30),
        (("attn_q", "Q5_0"), 30),
        (("attn_v", "Q8_0"), 30),
        (("ffn_down", "Q5_K"), 30),
        (("ffn_gate", "IQ4_NL"), 30),
        (("ffn_norm", "F32"), 30),
        (("ffn_up", "IQ4_NL"), 30),
        (("output_norm", "F32"), 1),
        (("token_embd", "Q5_1"), 1),
    ];
    let got: Vec<((&str, &str), usize)> = counts
        .iter()
        .map(|((r, t), n)| ((r.as_str(), t.as_str()), *n))
        .collect();
    assert_eq!(got, want, "iq4_xs_m: (tensor, type) counts");
    let md = ma.file().metadata();
    assert_eq!(md.get_str("spinel.quantize.preset").unwrap(), "iq4_xs_m");
    assert_eq!(md.get_u32("general.file_type").unwrap(), 30, "as IQ4_XS");
    let (iq4_xs, _) = quantize_both("iq4_xs", im, "m-ref");
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&ours) <= size(&iq4_xs),
        "iq4_xs_m {} bytes, llama.cpp's iq4_xs + imatrix {}",
        size(&ours),
        size(&iq4_xs)
    );
    let run = Command::new(llama_cpp_bin().join("llama-simple"))
        .arg("-m")
        .arg(&ours)
        .args(["-n", "4", "The capital of France is"])
        .output()
        .expect("running llama-simple");
    let (_, stderr) = ok("llama-simple (iq4_xs_m)", run);
    assert!(
        stderr.contains("decoded 4 tokens"),
        "llama-simple:\n{stderr}"
    );

    // With `spinel imatrix --process-output`, the tied embeddings are
    // weighted by the output layer's importance: their bytes change.
    let im_out = work_dir().join("ours.imatrix-output.gguf");
    ok(
        "spinel imatrix --process-output",
        Command::new(SPINEL)
            .arg("imatrix")
            .arg("-m")
            .arg(base())
            .arg("-f")
            .arg(calibration_text())
            .arg("-o")
            .arg(&im_out)
            .args(["-c", "128", "--chunks", "4", "-t", "2", "--process-output"])
            .output()
            .unwrap(),
    );
    let weighted = work_dir().join("ours.imatrix-output.iq4_xs_m.gguf");
    ok(
        "spinel quantize --type iq4_xs_m --imatrix (with the output layer)",
        Command::new(SPINEL)
            .arg("quantize")
            .arg(base())
            .arg(&weighted)
            .args(["--type", "iq4_xs_m", "-t", "2", "--imatrix"])
            .arg(&im_out)
            .output()
            .unwrap(),
    );
    let mw = open(&weighted);
    let embd = |m: &MappedGguf| {
        let f = m.file();
        let t = f.tensors().iter().find(|t| t.name() == "token_embd.weight");
        t.unwrap().data().to_vec()
    };
    assert!(
        embd(&mw) != embd(&ma),
        "token_embd ignored the output entry"
    );

    // Without an importance matrix: the same types, unweighted bytes.
    let plain = work_dir().join("ours.iq4_xs_m.gguf");
    let (_, stderr) = ok(
        "spinel quantize --type iq4_xs_m",
        Command::new(SPINEL)
            .arg("quantize")
            .arg(base())
            .arg(&plain)
            .args(["--type", "iq4_xs_m", "-t", "2"])
            .output()
            .unwrap(),
    );
    assert!(stderr.contains("without --imatrix"), "{stderr}");
    let mp = open(&plain);
    let mut changed = 0;
    for (x, y) in ma.file().tensors().iter().zip(mp.file().tensors()) {
        assert_eq!(x.ggml_type(), y.ggml_type(), "no imatrix: {}", x.name());
        changed += usize::from(x.data() != y.data());
    }
    // The 180 weighted layer matrices of the 210 (attn_v is Q8_0, which
    // ignores importance; the embeddings have no entry).
    assert_eq!(changed, 180, "tensors an importance matrix changes");
}
