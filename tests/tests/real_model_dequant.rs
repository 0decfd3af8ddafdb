//! Every tensor of the real demo model (SmolLM2-135M-Instruct, Q4_1 with a
//! Q8_0 embedding), read through spinel-runtime's GGUF reader and dequantized
//! by spinel-quant's kernels of every ISA this CPU has, equals what the `gguf`
//! Python package (llama.cpp's gguf-py) dequantizes from the same file, bit for bit.

use spinel_quant::{GgmlType, Kernels};
use spinel_runtime::gguf::MappedGguf;
use std::path::PathBuf;
use std::process::Command;

fn model_path() -> PathBuf {
    spinel_runtime::cache::test_model()
}

const PY: &str = r#"
import sys, numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
r = GGUFReader(sys.argv[1])
want = set(sys.argv[3:])
with open(sys.argv[2], "wb") as out:
    for t in r.tensors:
        if t.name in want:
            d = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
            out.write(t.name.encode() + b"\0" + len(d).to_bytes(8, "little") + d.tobytes())
"#;

#[test]
fn every_tensor_dequantizes_like_gguf_py() {
    let path = model_path();
    // SAFETY: the cached model file is not modified while the test runs.
    let gguf = unsafe { MappedGguf::open(&path) }.expect("the demo model parses");
    let file = gguf.file();
    // One layer of every kind plus the embedding and final norm: all the
    // tensor types the file holds, without dequantizing 135M weights in Python.
    let names: Vec<&str> = file
        .tensors()
        .iter()
        .map(|t| t.name())
        .filter(|n| n.starts_with("blk.0.") || n.starts_with("blk.29.") || !n.starts_with("blk."))
        .collect();
    let types: std::collections::BTreeSet<GgmlType> = names
        .iter()
        .map(|n| file.tensor(n).unwrap().ggml_type())
        .collect();
    assert!(
        types.contains(&GgmlType::Q4_1)
            && types.contains(&GgmlType::Q8_0)
            && types.contains(&GgmlType::F32)
    );

    let out = std::env::temp_dir().join(format!("spinel-dequant-{}.bin", std::process::id()));
    let status = Command::new("python3")
        .arg("-c")
        .arg(PY)
        .arg(&path)
        .arg(&out)
        .args(&names)
        .status()
        .expect("python3 runs (scripts/test.sh installs the gguf package)");
    assert!(
        status.success(),
        "gguf-py dequantization failed: pip install gguf==0.19.0 numpy"
    );
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).ok();

    let mut rest = &bytes[..];
    let mut seen = 0;
    while !rest.is_empty() {
        let nul = rest.iter().position(|&b| b == 0).unwrap();
        let name = std::str::from_utf8(&rest[..nul]).unwrap();
        let n = u64::from_le_bytes(rest[nul + 1..nul + 9].try_into().unwrap()) as usize;
        let want: Vec<f32> = rest[nul + 9..nul + 9 + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        rest = &rest[nul + 9 + 4 * n..];
        let t = file.tensor(name).unwrap();
        assert_eq!(t.n_elements() as usize, n, "{name}");
        for k in Kernels::all_supported() {
            let mut got = vec![0f32; n];
            (k.of(t.ggml_type()).to_float)(t.data(), &mut got);
            if let Some(i) = (0..n).find(|&i| got[i].to_bits() != want[i].to_bits()) {
                panic!(
                    "{name} ({}) on {}: element {i} is {} but gguf-py gives {}",
                    t.ggml_type(),
                    k.isa(),
                    got[i],
                    want[i]
                );
            }
        }
        seen += 1;
    }
    assert_eq!(seen, names.len(), "gguf-py returned every requested tensor");
}
