//! End-to-end tests of `spinel inspect`: the built binary against the
//! reference GGUF reader, the `gguf` Python package.
//!
//! These live in `cli/tests/` rather than in the workspace-level `tests/`
//! crate because Cargo only tells the integration tests of the package that
//! owns a binary where that binary is (`CARGO_BIN_EXE_spinel`) and builds it
//! before running them; a test in another package would have to guess the
//! target directory or run a nested `cargo build`, which deadlocks on the
//! build-directory lock that the outer `cargo test` holds.
//!
//! Needs:
//! * `python3` with `gguf` and `numpy` (`python3 -m pip install gguf numpy`);
//! * the demo model SmolLM2-135M-Instruct.Q4_1.gguf, from `$SPINEL_TEST_MODEL`
//!   or `${SPINEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spinel}/models/`
//!   (`scripts/fetch-model.sh` puts it there).
//!
//! Missing either, the tests fail saying how to get it; they never skip.

#[path = "../../runtime/tests/common/mod.rs"]
mod common;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value as Json;

const SPINEL: &str = env!("CARGO_BIN_EXE_spinel");
const DUMP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../runtime/tests/gguf_dump.py");
const HOSTILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../runtime/tests/hostile");

fn model_path() -> PathBuf {
    spinel_runtime::cache::test_model()
}

fn spinel(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(SPINEL)
        .args(args)
        .output()
        .expect("cannot run the spinel binary")
}

/// `spinel inspect --json FILE`, which must succeed, as (raw text, parsed).
fn inspect_json(file: &Path) -> (String, Doc) {
    let out = spinel(&["inspect".as_ref(), "--json".as_ref(), file.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "spinel inspect --json failed: {stderr}"
    );
    assert!(
        stderr.is_empty(),
        "spinel inspect --json wrote to stderr: {stderr}"
    );
    let text = String::from_utf8(out.stdout).expect("output is not UTF-8");
    let doc: Doc =
        serde_json::from_str(&text).expect("output is not one JSON object of the documented form");
    (text, doc)
}

/// What gguf_dump.py (the `gguf` package's GGUFReader) sees in `file`.
fn python_dump(file: &Path) -> Json {
    const INSTALL: &str =
        "these tests need python3 with the gguf package: python3 -m pip install gguf numpy";
    let out = match Command::new("python3").arg(DUMP).arg(file).output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run python3 ({e}); {INSTALL}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        panic!("{stderr}\n{INSTALL}");
    }
    assert!(
        out.status.success(),
        "gguf_dump.py failed on {}: {stderr}",
        file.display()
    );
    serde_json::from_slice(&out.stdout).expect("gguf_dump.py printed invalid JSON")
}

/// The `--json` document. Unknown fields are refused, so it is exactly
/// `{"version", "alignment", "metadata", "tensors"}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    version: u32,
    alignment: u64,
    metadata: Ordered,
    tensors: Vec<Tensor>,
}

#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Tensor {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    shape: Vec<u64>,
    offset: u64,
    bytes: u64,
}

/// A JSON object with its keys in document order (serde_json's map sorts).
#[derive(Debug)]
struct Ordered(Vec<(String, Json)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = map.next_entry::<String, Json>()? {
                    v.push(entry);
                }
                Ok(Ordered(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Checks that `cli` (a value in `--json`) is the value gguf_dump.py
/// describes as `py` ({"t": TYPE, ["elem": TYPE,] "v": ...}).
fn agree(py: &Json, cli: &Json) -> Result<(), String> {
    let t = py["t"].as_str().ok_or("dump value without type")?;
    if t != "ARRAY" {
        return agree_plain(t, &py["v"], cli);
    }
    let elem = py["elem"].as_str().ok_or("array without element type")?;
    let items = py["v"].as_array().ok_or("array without items")?;
    let got = cli
        .as_array()
        .ok_or_else(|| format!("expected an array, got {cli}"))?;
    if items.len() != got.len() {
        return Err(format!(
            "array of {} elements, got {}",
            items.len(),
            got.len()
        ));
    }
    for (i, (p, c)) in items.iter().zip(got).enumerate() {
        let r = if elem == "ARRAY" {
            agree(p, c)
        } else {
            agree_plain(elem, p, c)
        };
        r.map_err(|e| format!("[{i}]: {e}"))?;
    }
    Ok(())
}

fn agree_plain(t: &str, py: &Json, cli: &Json) -> Result<(), String> {
    let ok = match t {
        "STRING" | "BOOL" => py == cli,
        "FLOAT32" => {
            let bits = py.as_u64().ok_or("FLOAT32 without bits")? as u32;
            float_agrees(f64::from(f32::from_bits(bits)), cli, |x| {
                (x as f32).to_bits() == bits
            })
        }
        "FLOAT64" => {
            let bits = py.as_u64().ok_or("FLOAT64 without bits")?;
            float_agrees(f64::from_bits(bits), cli, |x| x.to_bits() == bits)
        }
        _ => {
            let p = py.as_i64().map(i128::from).or(py.as_u64().map(i128::from));
            let c = cli
                .as_i64()
                .map(i128::from)
                .or(cli.as_u64().map(i128::from));
            p.is_some() && p == c
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{t} {py} (dump) != {cli} (spinel)"))
    }
}

/// A float in `--json`: a number reading back as the same float, or one of
/// the strings used for non-finite values.
fn float_agrees(expect: f64, cli: &Json, same: impl Fn(f64) -> bool) -> bool {
    match cli {
        Json::Number(n) => expect.is_finite() && n.as_f64().is_some_and(same),
        Json::String(s) => match s.as_str() {
            "NaN" => expect.is_nan(),
            "Infinity" => expect == f64::INFINITY,
            "-Infinity" => expect == f64::NEG_INFINITY,
            _ => false,
        },
        _ => false,
    }
}

/// Compares `spinel inspect --json` with the Python reader's view of `file`.
fn assert_inspect_matches_python(file: &Path) -> (Doc, Json) {
    let (_, doc) = inspect_json(file);
    let py = python_dump(file);
    assert_eq!(
        u64::from(doc.version),
        py["version"].as_u64().unwrap(),
        "version"
    );
    assert_eq!(
        doc.alignment,
        py["alignment"].as_u64().unwrap(),
        "alignment"
    );

    let py_meta = py["metadata"].as_array().unwrap();
    let py_keys: Vec<&str> = py_meta.iter().map(|m| m["key"].as_str().unwrap()).collect();
    let our_keys: Vec<&str> = doc.metadata.0.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(our_keys, py_keys, "metadata keys (in file order)");
    for (m, (key, value)) in py_meta.iter().zip(&doc.metadata.0) {
        if let Err(e) = agree(&m["value"], value) {
            panic!("metadata {key:?}: {e}");
        }
    }

    let py_tensors: Vec<Tensor> = py["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| Tensor {
            name: t["name"].as_str().unwrap().to_string(),
            ty: t["type"].as_str().unwrap().to_string(),
            shape: t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect(),
            offset: t["offset"].as_u64().unwrap(),
            bytes: t["bytes"].as_u64().unwrap(),
        })
        .collect();
    assert_eq!(doc.tensors.len(), py_tensors.len(), "tensor count");
    for (ours, theirs) in doc.tensors.iter().zip(&py_tensors) {
        assert_eq!(ours, theirs);
    }
    (doc, py)
}

#[test]
fn json_of_the_demo_model_matches_the_gguf_package() {
    let model = model_path();
    let (doc, py) = assert_inspect_matches_python(&model);
    // Not vacuous: the model's known shape.
    assert_eq!(doc.version, 3);
    assert_eq!(doc.metadata.0.len(), 33);
    assert_eq!(doc.tensors.len(), 272);
    let tokens = &doc
        .metadata
        .0
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .unwrap()
        .1;
    assert_eq!(
        tokens.as_array().unwrap().len(),
        49152,
        "arrays are given in full"
    );
    assert_eq!(py["kv_count"], 33);
    assert!(doc.tensors.iter().any(|t| t.ty == "Q4_1"));
    assert_eq!(doc.tensors[0].name, "token_embd.weight");
    assert_eq!(doc.tensors[0].shape, [576, 49152]);
}

#[test]
fn human_report_of_the_demo_model() {
    let model = model_path();
    let out = spinel(&["inspect".as_ref(), model.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "GGUF version 3, alignment 32",
        "metadata: 33 keys",
        "general.architecture",
        "llama.context_length",
        "8192",
        "[49152 strings: \"<|endoftext|>\", \"<|im_start|>\", \"<|im_end|>\", … ]",
        "tensors: 272",
        "token_embd.weight",
        "[576, 49152]",
        // Sum of the element counts gguf reports for the 272 tensors.
        "total: 134,515,008 parameters",
        "bits per weight",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // One table row per tensor.
    let rows = text
        .lines()
        .filter(|l| {
            l.starts_with("  blk.") || l.starts_with("  token_embd") || l.starts_with("  output")
        })
        .count();
    assert_eq!(rows, 272);
}

#[test]
fn json_of_every_value_type_matches_the_gguf_package() {
    // Nested arrays, NaN, infinities, extreme integers, empty arrays, UTF-8.
    let path = common::scratch("cli-sample.gguf");
    common::sample_writer().write_file(&path).unwrap();
    let (doc, _) = assert_inspect_matches_python(&path);
    let (text, _) = inspect_json(&path);
    std::fs::remove_file(&path).unwrap();
    let get = |k: &str| &doc.metadata.0.iter().find(|(key, _)| key == k).unwrap().1;
    assert_eq!(get("test.f32_nan"), "NaN");
    assert_eq!(get("test.f32_inf"), "-Infinity");
    assert_eq!(get("test.u64").as_u64(), Some(u64::MAX));
    assert_eq!(get("test.i64").as_i64(), Some(i64::MIN));
    assert_eq!(
        get("test.arr_nested"),
        &serde_json::json!([[1, 2], ["a", "bc"], [], [[7]]])
    );
    assert!(
        text.ends_with("}\n") && text.lines().count() == 1,
        "one line, one object"
    );
}

#[test]
fn hostile_files_fail_with_the_error_on_stderr() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(HOSTILE)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    files.sort();
    assert!(files.len() > 40, "hostile files not found in {HOSTILE}");
    for file in &files {
        for json in [false, true] {
            let mut args = vec!["inspect".as_ref(), file.as_os_str()];
            if json {
                args.push("--json".as_ref());
            }
            let out = spinel(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let name = file.file_name().unwrap().to_string_lossy();
            assert!(!out.status.success(), "{name}: exit status {}", out.status);
            assert!(out.stdout.is_empty(), "{name}: wrote to stdout");
            assert!(
                stderr.starts_with("spinel: ") && stderr.contains(&*name) && stderr.ends_with('\n'),
                "{name}: stderr {stderr:?}"
            );
            assert_eq!(stderr.lines().count(), 1, "{name}: {stderr:?}");
        }
    }
    // A specific one, in full.
    let out = spinel(&[
        "inspect".as_ref(),
        Path::new(HOSTILE)
            .join("tensor-misaligned.gguf")
            .as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.ends_with("tensor-misaligned.gguf: tensor \"t\": data offset 8 is not a multiple of the alignment 32\n"),
        "{stderr:?}"
    );
}

#[test]
fn missing_file_fails_with_the_error_on_stderr() {
    let out = spinel(&["inspect".as_ref(), "/nonexistent/model.gguf".as_ref()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        stderr.starts_with("spinel: /nonexistent/model.gguf: "),
        "{stderr:?}"
    );
}
