//! Files written by GgufWriter read identically with the reference reader,
//! the `gguf` Python package (`gguf.GGUFReader`).
//!
//! Needs `python3` with `gguf` and `numpy` (`python3 -m pip install gguf
//! numpy`); without them these tests fail, saying so.

mod common;

use std::path::Path;
use std::process::Command;

use common::{sample_writer, scratch};
use serde_json::{Value as Json, json};
use spinel_runtime::gguf::{GgufFile, GgufWriter, Value};

const INSTALL: &str = "these tests need python3 with the gguf package: \
                       python3 -m pip install gguf numpy";

/// Runs tests/gguf_dump.py on `path`.
fn python_dump(path: &Path) -> Json {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gguf_dump.py");
    let out = match Command::new("python3")
        .arg(script)
        .arg(path)
        .arg("--data")
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("cannot run python3 ({e}); {INSTALL}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        panic!("{stderr}\n{INSTALL}");
    }
    assert!(
        out.status.success(),
        "gguf_dump.py failed on {}: {}\n{stderr}",
        path.display(),
        out.status
    );
    serde_json::from_slice(&out.stdout).expect("gguf_dump.py printed invalid JSON")
}

/// The element of an array, or the payload of a scalar or string, as
/// gguf_dump.py writes it.
fn plain(v: &Value<'_>) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(x.to_bits()),
        Value::F64(x) => json!(x.to_bits()),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(_) => tagged(v),
    }
}

/// A value in gguf_dump.py's form: {"t": TYPE, ["elem": TYPE,] "v": ...}.
fn tagged(v: &Value<'_>) -> Json {
    match v {
        Value::Array(a) => json!({
            "t": "ARRAY",
            "elem": a.elem_type().name(),
            "v": a.iter().map(|x| plain(&x)).collect::<Vec<_>>(),
        }),
        _ => json!({"t": v.value_type().name(), "v": plain(v)}),
    }
}

/// Our reader's view of a file in gguf_dump.py's form.
fn our_view(f: &GgufFile<'_>) -> Json {
    json!({
        "version": f.version(),
        "alignment": f.alignment(),
        "data_offset": f.data_offset(),
        "tensor_count": f.tensors().len(),
        "kv_count": f.metadata().len(),
        "metadata": f.metadata().iter().map(|(k, v)| json!({"key": k, "value": tagged(v)})).collect::<Vec<_>>(),
        "tensors": f.tensors().iter().map(|t| json!({
            "name": t.name(),
            "type": t.ggml_type().name(),
            "shape": t.dims(),
            "offset": t.offset(),
            "bytes": t.size(),
            "n_elements": t.n_elements(),
            "data": t.data().iter().map(|b| format!("{b:02x}")).collect::<String>(),
        })).collect::<Vec<_>>(),
    })
}

fn assert_python_agrees(w: &GgufWriter<'_>, name: &str) {
    let path = scratch(name);
    w.write_file(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let ours = our_view(&GgufFile::parse(&bytes).unwrap());
    let theirs = python_dump(&path);
    std::fs::remove_file(&path).unwrap();

    // Item by item first, for a readable failure.
    for field in [
        "version",
        "alignment",
        "data_offset",
        "tensor_count",
        "kv_count",
    ] {
        assert_eq!(ours[field], theirs[field], "{field}");
    }
    let (om, tm) = (
        ours["metadata"].as_array().unwrap(),
        theirs["metadata"].as_array().unwrap(),
    );
    assert_eq!(om.len(), tm.len(), "metadata count");
    for (o, t) in om.iter().zip(tm) {
        assert_eq!(o, t, "metadata entry");
    }
    let (ot, tt) = (
        ours["tensors"].as_array().unwrap(),
        theirs["tensors"].as_array().unwrap(),
    );
    assert_eq!(ot.len(), tt.len(), "tensor count");
    for (o, t) in ot.iter().zip(tt) {
        assert_eq!(o, t, "tensor");
    }
    assert_eq!(ours, theirs);
}

#[test]
fn python_reads_every_value_type_and_tensor_type() {
    let w = sample_writer();
    // The sample covers every value type, as a scalar and in arrays.
    let bytes = w.to_bytes();
    let f = GgufFile::parse(&bytes).unwrap();
    let mut seen: Vec<_> = f.metadata().iter().map(|(_, v)| v.value_type()).collect();
    for (_, v) in f.metadata().iter() {
        if let Value::Array(a) = v {
            seen.push(a.elem_type());
        }
    }
    for t in spinel_runtime::gguf::ValueType::ALL {
        assert!(seen.contains(&t), "sample lacks {t}");
    }
    assert_python_agrees(&w, "python-sample.gguf");
}

#[test]
fn python_reads_other_alignments() {
    for align in [8u32, 64, 256] {
        let mut w = sample_writer();
        w.set_alignment(align).unwrap();
        assert_python_agrees(&w, &format!("python-align-{align}.gguf"));
    }
}

#[test]
fn python_reads_an_empty_file() {
    assert_python_agrees(&GgufWriter::new(), "python-empty.gguf");
}
