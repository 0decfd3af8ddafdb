//! Any byte string: `GgufFile::parse` returns (never panics, hangs or reads
//! out of bounds), and a file that parses is internally consistent and
//! re-writes to a file that parses to the same content.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spinel_runtime::gguf::{GgufFile, GgufWriter};

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::parse(data) else {
        return;
    };
    let base = data.as_ptr() as usize;
    let mut spans = Vec::new();
    for t in f.tensors() {
        let start = t.data().as_ptr() as usize - base;
        assert_eq!(start, f.data_offset() + t.offset() as usize);
        assert!(start + t.size() <= data.len());
        assert_eq!(t.offset() % f.alignment() as u64, 0);
        assert_eq!(
            t.ggml_type().row_size(t.n_elements() as usize),
            Some(t.size())
        );
        spans.push((start, start + t.size()));
    }
    spans.sort_unstable();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
    for (k, v) in f.metadata().iter() {
        assert!(f.metadata().get(k) == Some(v));
    }
    // A legal alignment of up to 2^31 would make the re-written file that
    // large; only re-write files with modest padding.
    if f.alignment() > 1 << 16 {
        return;
    }
    let again = GgufWriter::from_file(&f).unwrap().to_bytes();
    let g = GgufFile::parse(&again).unwrap();
    assert!(g.metadata().iter().eq(f.metadata().iter()));
    assert_eq!(g.tensors().len(), f.tensors().len());
    for (a, b) in f.tensors().iter().zip(g.tensors()) {
        assert_eq!(a.data(), b.data());
    }
});
