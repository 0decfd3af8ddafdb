//! `spinel inspect FILE.gguf [--json]`: what a GGUF file holds.
//!
//! Human output: version, alignment, metadata (long strings and arrays
//! summarized), a tensor table and totals. `--json`: exactly one object
//!
//! ```text
//! {"version": 3, "alignment": 32,
//!  "metadata": {"key": value, ...},            (file order, arrays in full)
//!  "tensors": [{"name", "type", "shape", "offset", "bytes"}, ...]}
//! ```
//!
//! with `type` the ggml name (`"Q4_1"`), `shape` the dimensions in ggml
//! order as stored (`ne[0]` first), `offset` relative to the data section.
//! Floats print as the shortest decimal that reads back as the same `f32` /
//! `f64`; non-finite floats, which JSON cannot express, print as the strings
//! `"NaN"`, `"Infinity"` and `"-Infinity"`.

use std::io::{self, BufWriter, Write};
use std::path::Path;

use spinel_runtime::gguf::{Array, GgufError, GgufFile, MappedGguf, Value, ValueType};

/// Runs the command.
pub fn run(path: &Path, json: bool) -> Result<(), String> {
    // SAFETY: `inspect` only reads the file. If another process rewrites or
    // truncates it while it is mapped, the output may be garbage or the
    // process may die of SIGBUS; as with every mmap-based reader, files being
    // written to are not supported (MappedGguf::open's contract).
    let mapped = unsafe { MappedGguf::open(path) }.map_err(|e| match e {
        GgufError::Io { .. } => e.to_string(),
        e => format!("{}: {e}", path.display()),
    })?;
    let f = mapped.file();
    let mut out = BufWriter::new(io::stdout().lock());
    let written = if json {
        write_json(f, &mut out)
    } else {
        write_human(f, path, &mut out)
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // `spinel inspect model.gguf | head` is fine.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("writing output: {e}")),
    }
}

// ---------------------------------------------------------------- JSON

/// Writes the `--json` object and a newline.
pub fn write_json(f: &GgufFile<'_>, out: &mut impl Write) -> io::Result<()> {
    write!(
        out,
        "{{\"version\":{},\"alignment\":{},\"metadata\":{{",
        f.version(),
        f.alignment()
    )?;
    for (i, (k, v)) in f.metadata().iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        json_str(out, k)?;
        out.write_all(b":")?;
        json_value(out, v)?;
    }
    out.write_all(b"},\"tensors\":[")?;
    for (i, t) in f.tensors().iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        out.write_all(b"{\"name\":")?;
        json_str(out, t.name())?;
        write!(out, ",\"type\":\"{}\",\"shape\":[", t.ggml_type().name())?;
        for (j, d) in t.dims().iter().enumerate() {
            if j > 0 {
                out.write_all(b",")?;
            }
            write!(out, "{d}")?;
        }
        write!(out, "],\"offset\":{},\"bytes\":{}}}", t.offset(), t.size())?;
    }
    out.write_all(b"]}\n")
}

fn json_str(out: &mut impl Write, s: &str) -> io::Result<()> {
    serde_json::to_writer(&mut *out, s).map_err(io::Error::from)
}

fn json_value(out: &mut impl Write, v: &Value<'_>) -> io::Result<()> {
    match v {
        Value::U8(x) => write!(out, "{x}"),
        Value::I8(x) => write!(out, "{x}"),
        Value::U16(x) => write!(out, "{x}"),
        Value::I16(x) => write!(out, "{x}"),
        Value::U32(x) => write!(out, "{x}"),
        Value::I32(x) => write!(out, "{x}"),
        Value::U64(x) => write!(out, "{x}"),
        Value::I64(x) => write!(out, "{x}"),
        Value::Bool(x) => write!(out, "{x}"),
        Value::F32(x) if x.is_finite() => {
            serde_json::to_writer(&mut *out, x).map_err(io::Error::from)
        }
        Value::F64(x) if x.is_finite() => {
            serde_json::to_writer(&mut *out, x).map_err(io::Error::from)
        }
        Value::F32(x) => json_str(out, non_finite(f64::from(*x))),
        Value::F64(x) => json_str(out, non_finite(*x)),
        Value::String(s) => json_str(out, s),
        Value::Array(a) => {
            out.write_all(b"[")?;
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                json_value(out, &x)?;
            }
            out.write_all(b"]")
        }
    }
}

fn non_finite(x: f64) -> &'static str {
    if x.is_nan() {
        "NaN"
    } else if x > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

// ---------------------------------------------------------------- human

/// Longest string shown whole; longer ones are cut with their length given.
const MAX_STRING: usize = 60;
/// Arrays up to this long are shown whole.
const MAX_ARRAY: usize = 8;
/// How many elements of a longer array are shown.
const ARRAY_HEAD: usize = 3;
/// Longest string shown whole inside an array.
const MAX_ARRAY_STRING: usize = 24;

/// Writes the human-readable report.
pub fn write_human(f: &GgufFile<'_>, path: &Path, out: &mut impl Write) -> io::Result<()> {
    let file_len = f.bytes().len() as u64;
    writeln!(out, "{}", path.display())?;
    writeln!(
        out,
        "GGUF version {}, alignment {}, {} bytes ({}); data section at offset {}",
        f.version(),
        f.alignment(),
        thousands(file_len),
        binary_size(file_len),
        f.data_offset()
    )?;

    writeln!(out)?;
    writeln!(out, "metadata: {} keys", f.metadata().len())?;
    let key_w = f.metadata().keys().map(str::len).max().unwrap_or(0);
    let rows: Vec<(String, String)> = f
        .metadata()
        .iter()
        .map(|(_, v)| (type_label(v), human_value(v)))
        .collect();
    let type_w = rows.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
    for ((k, _), (ty, val)) in f.metadata().iter().zip(&rows) {
        writeln!(out, "  {:key_w$}  {ty:type_w$}  {val}", escape(k))?;
    }

    writeln!(out)?;
    writeln!(out, "tensors: {}", f.tensors().len())?;
    let table: Vec<[String; 5]> = f
        .tensors()
        .iter()
        .map(|t| {
            [
                escape(t.name()),
                t.ggml_type().name().to_string(),
                format!("{:?}", t.dims()),
                t.offset().to_string(),
                t.size().to_string(),
            ]
        })
        .collect();
    let header = ["name", "type", "shape", "offset", "bytes"];
    let mut w = header.map(str::len);
    for row in &table {
        for (wi, cell) in w.iter_mut().zip(row) {
            *wi = (*wi).max(cell.chars().count());
        }
    }
    if !table.is_empty() {
        writeln!(
            out,
            "  {:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}",
            header[0],
            header[1],
            header[2],
            header[3],
            header[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        )?;
    }
    for r in &table {
        writeln!(
            out,
            "  {:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        )?;
    }

    let params: u64 = f.tensors().iter().map(|t| t.n_elements()).sum();
    let bytes: u64 = f.tensors().iter().map(|t| t.size() as u64).sum();
    writeln!(out)?;
    write!(
        out,
        "total: {} parameters ({}), {} bytes ({})",
        thousands(params),
        si(params),
        thousands(bytes),
        binary_size(bytes)
    )?;
    if params > 0 {
        write!(
            out,
            ", {:.2} bits per weight",
            bytes as f64 * 8.0 / params as f64
        )?;
    }
    writeln!(out)?;
    let mut by_type: Vec<(&str, usize, u64)> = Vec::new();
    for t in f.tensors() {
        let name = t.ggml_type().name();
        match by_type.iter_mut().find(|(n, _, _)| *n == name) {
            Some(e) => {
                e.1 += 1;
                e.2 += t.n_elements();
            }
            None => by_type.push((name, 1, t.n_elements())),
        }
    }
    if !by_type.is_empty() {
        by_type.sort_by_key(|e| std::cmp::Reverse(e.2));
        let parts: Vec<String> = by_type
            .iter()
            .map(|(n, count, elems)| format!("{n} ×{count} ({})", si(*elems)))
            .collect();
        writeln!(out, "types: {}", parts.join(", "))?;
    }
    Ok(())
}

/// `u32`, `string`, `[i32]`, `[[…]]`.
fn type_label(v: &Value<'_>) -> String {
    match v {
        Value::Array(a) => format!("[{}]", a.elem_type().short_name()),
        v => v.value_type().short_name().to_string(),
    }
}

/// A metadata value on one line.
fn human_value(v: &Value<'_>) -> String {
    match v {
        Value::String(s) => short_string(s, MAX_STRING),
        Value::Array(a) => human_array(a),
        v => scalar_text(v),
    }
}

fn scalar_text(v: &Value<'_>) -> String {
    match v {
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        // Debug: shortest round-trip form, with an exponent when apt.
        Value::F32(x) => format!("{x:?}"),
        Value::F64(x) => format!("{x:?}"),
        Value::Bool(x) => x.to_string(),
        Value::String(s) => short_string(s, MAX_ARRAY_STRING),
        Value::Array(a) => human_array(a),
    }
}

/// `[1, 2, 3]`, or `[49152 strings: "<unk>", "<s>", "</s>", … ]`.
fn human_array(a: &Array<'_>) -> String {
    let shown = if a.len() <= MAX_ARRAY {
        a.len()
    } else {
        ARRAY_HEAD
    };
    let items: Vec<String> = a.iter().take(shown).map(|x| scalar_text(&x)).collect();
    if shown == a.len() {
        format!("[{}]", items.join(", "))
    } else {
        let plural = match a.elem_type() {
            ValueType::String => "strings".to_string(),
            ValueType::Array => "arrays".to_string(),
            ValueType::Bool => "bools".to_string(),
            t => format!("{}s", t.short_name()),
        };
        format!("[{} {plural}: {}, … ]", a.len(), items.join(", "))
    }
}

/// A quoted, escaped string, cut after `max` characters.
fn short_string(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(max).collect();
        format!("{head:?}… ({} bytes)", s.len())
    }
}

/// A key or tensor name with control characters escaped, unquoted.
fn escape(s: &str) -> String {
    if s.chars().any(|c| c.is_control()) {
        s.escape_debug().to_string()
    } else {
        s.to_string()
    }
}

/// `134515008` -> `134,515,008`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `134515008` -> `134.5 M`.
fn si(n: u64) -> String {
    let x = n as f64;
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1} K", x / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} M", x / 1e6),
        _ => format!("{:.2} B", x / 1e9),
    }
}

/// `96576768` -> `92.1 MiB`.
fn binary_size(n: u64) -> String {
    let x = n as f64;
    const K: f64 = 1024.0;
    if x < K {
        format!("{n} B")
    } else if x < K * K {
        format!("{:.1} KiB", x / K)
    } else if x < K * K * K {
        format!("{:.1} MiB", x / (K * K))
    } else {
        format!("{:.2} GiB", x / (K * K * K))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spinel_quant::GgmlType;
    use spinel_runtime::gguf::GgufWriter;

    fn sample() -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", "llama").unwrap();
        w.add_kv("llama.block_count", 30u32).unwrap();
        w.add_kv("eps", 1e-5f32).unwrap();
        w.add_kv("big", f64::INFINITY).unwrap();
        w.add_kv("nan", f32::NAN).unwrap();
        w.add_kv("flag", true).unwrap();
        w.add_kv("neg", -3i64).unwrap();
        w.add_kv("template", "x".repeat(100)).unwrap();
        w.add_kv("quote\"\n", "a\"b\n").unwrap();
        let tokens: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
        w.add_kv("tokens", Array::from_strings(tokens)).unwrap();
        w.add_kv("small", Array::from_scalars(&[1i32, -2, 3]))
            .unwrap();
        w.add_kv("types", Array::from_scalars(&[1i32; 20])).unwrap();
        w.add_kv(
            "nested",
            Array::from_arrays(vec![
                Array::from_scalars(&[1u8]),
                Array::from_strings(["z"]),
            ]),
        )
        .unwrap();
        w.add_tensor("a", &[64, 2], GgmlType::Q4_1, vec![0u8; 80])
            .unwrap();
        w.add_tensor("b", &[4], GgmlType::F32, vec![0u8; 16])
            .unwrap();
        w.to_bytes()
    }

    #[test]
    fn json_is_one_object_in_file_order() {
        let bytes = sample();
        let f = GgufFile::parse(&bytes).unwrap();
        let mut out = Vec::new();
        write_json(&f, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(j.as_object().unwrap().len(), 4);
        assert_eq!(j["version"], 3);
        assert_eq!(j["alignment"], 32);
        let m = &j["metadata"];
        assert_eq!(m["llama.block_count"], 30);
        assert_eq!(m["eps"].as_f64().unwrap() as f32, 1e-5f32);
        assert_eq!(m["big"], "Infinity");
        assert_eq!(m["nan"], "NaN");
        assert_eq!(m["flag"], true);
        assert_eq!(m["neg"], -3);
        assert_eq!(m["quote\"\n"], "a\"b\n");
        assert_eq!(m["tokens"].as_array().unwrap().len(), 1000);
        assert_eq!(m["tokens"][999], "t999");
        assert_eq!(m["nested"], serde_json::json!([[1], ["z"]]));
        assert_eq!(
            j["tensors"],
            serde_json::json!([
                {"name": "a", "type": "Q4_1", "shape": [64, 2], "offset": 0, "bytes": 80},
                {"name": "b", "type": "F32", "shape": [4], "offset": 96, "bytes": 16},
            ])
        );
        // File order: the keys appear in the text in the order they were written.
        let keys: Vec<&str> = f.metadata().keys().collect();
        let pos: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&serde_json::to_string(k).unwrap()).unwrap())
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
        // The shortest form of the f32, not its f64 widening.
        assert!(
            text.contains("\"eps\":1e-5") || text.contains("\"eps\":0.00001"),
            "{text}"
        );
    }

    #[test]
    fn human_output_summarizes() {
        let bytes = sample();
        let f = GgufFile::parse(&bytes).unwrap();
        let mut out = Vec::new();
        write_human(&f, Path::new("m.gguf"), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for needle in [
            "GGUF version 3, alignment 32",
            "metadata: 13 keys",
            "general.architecture",
            "\"llama\"",
            "[1000 strings: \"t0\", \"t1\", \"t2\", … ]",
            "[20 i32s: 1, 1, 1, … ]",
            "[1, -2, 3]",
            "[[1], [\"z\"]]",
            "1e-5",
            "inf",
            "NaN",
            "… (100 bytes)",
            "quote\\\"\\n",
            "tensors: 2",
            "total: 132 parameters (132), 96 bytes (96 B), 5.82 bits per weight",
            "types: Q4_1 ×1 (128), F32 ×1 (4)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("a "))
            .unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["a", "Q4_1", "[64,", "2]", "0", "80"]);
    }

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(134515008), "134,515,008");
        assert_eq!(si(134515008), "134.5 M");
        assert_eq!(si(7_000_000_000), "7.00 B");
        assert_eq!(binary_size(96576768), "92.1 MiB");
        assert_eq!(binary_size(512), "512 B");
    }
}
