//! A bounded, seeded mutational fuzz test of the GGUF reader that runs in
//! `cargo test`: 20 000 mutants of a small valid file (bit flips, byte
//! overwrites, truncations, insertions, deletions, splices, and overwrites of
//! the file's length/count/type/dimension/offset fields with huge or
//! off-by-one values). No mutant may panic, and every file that parses must
//! be internally consistent. The open-ended version is the cargo-fuzz target
//! in `runtime/fuzz/`.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use common::{Rng, sample_writer};
use spinel_runtime::gguf::{GgufFile, GgufWriter, Value};

const MUTANTS: usize = 20_000;
/// Files with a larger alignment (legal: any power of two up to 2^31) are not
/// re-written, since their padding alone could take gigabytes.
const MAX_REWRITE_ALIGNMENT: usize = 1 << 16;

/// The positions and widths (4 or 8 bytes) of every integer field in the
/// header of a valid file: counts, lengths, value types, dimension counts,
/// dimensions, tensor types and offsets. An independent walk of the format.
fn integer_fields(b: &[u8]) -> Vec<(usize, usize)> {
    fn u32_at(b: &[u8], p: usize) -> u32 {
        u32::from_le_bytes(b[p..p + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], p: usize) -> u64 {
        u64::from_le_bytes(b[p..p + 8].try_into().unwrap())
    }
    fn value(b: &[u8], p: &mut usize, ty: u32, out: &mut Vec<(usize, usize)>) {
        match ty {
            0 | 1 | 7 => *p += 1,
            2 | 3 => *p += 2,
            4..=6 => *p += 4,
            10..=12 => *p += 8,
            8 => {
                out.push((*p, 8));
                *p += 8 + u64_at(b, *p) as usize;
            }
            9 => {
                out.push((*p, 4));
                out.push((*p + 4, 8));
                let elem = u32_at(b, *p);
                let n = u64_at(b, *p + 4);
                *p += 12;
                for _ in 0..n {
                    value(b, p, elem, out);
                }
            }
            _ => unreachable!("valid file"),
        }
    }
    let mut out = vec![(4, 4), (8, 8), (16, 8)];
    let n_tensors = u64_at(b, 8);
    let n_kv = u64_at(b, 16);
    let mut p = 24;
    for _ in 0..n_kv {
        out.push((p, 8));
        p += 8 + u64_at(b, p) as usize;
        out.push((p, 4));
        let ty = u32_at(b, p);
        p += 4;
        value(b, &mut p, ty, &mut out);
    }
    for _ in 0..n_tensors {
        out.push((p, 8));
        p += 8 + u64_at(b, p) as usize;
        out.push((p, 4));
        let n_dims = u32_at(b, p) as usize;
        p += 4;
        for _ in 0..n_dims {
            out.push((p, 8));
            p += 8;
        }
        out.push((p, 4));
        out.push((p + 4, 8));
        p += 12;
    }
    out
}

/// Values that break length arithmetic.
fn interesting(rng: &mut Rng, file_len: usize, width: usize) -> u64 {
    let max = if width == 4 {
        u32::MAX as u64
    } else {
        u64::MAX
    };
    let v = match rng.below(12) {
        0 => 0,
        1 => 1,
        2 => max,
        3 => max - 1,
        4 => max / 2,
        5 => max / 2 + 1,
        6 => file_len as u64,
        7 => file_len as u64 + 1,
        8 => 1 << (rng.below(if width == 4 { 32 } else { 64 })),
        9 => i64::MAX as u64,
        10 => rng.next() % 64,
        _ => rng.next(),
    };
    v & max
}

fn mutate(rng: &mut Rng, seed: &[u8], fields: &[(usize, usize)]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        if b.is_empty() {
            break;
        }
        let len = b.len();
        match rng.below(8) {
            0 => {
                let bit = rng.below(len * 8);
                b[bit / 8] ^= 1 << (bit % 8);
            }
            1 => {
                let i = rng.below(len);
                b[i] = rng.next() as u8;
            }
            2 => b.truncate(rng.below(len)),
            3 | 4 => {
                let (at, width) = fields[rng.below(fields.len())];
                if at + width <= len {
                    let v = interesting(rng, len, width);
                    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
            5 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let junk = rng.bytes(n);
                b.splice(at..at, junk);
            }
            6 => {
                let at = rng.below(len);
                let n = 1 + rng.below(16.min(len - at));
                b.drain(at..at + n);
            }
            _ => {
                // Copy a chunk of the file over another place in it.
                let from = rng.below(len);
                let to = rng.below(len);
                let n = (1 + rng.below(32)).min(len - from).min(len - to);
                b.copy_within(from..from + n, to);
            }
        }
    }
    b
}

/// Everything a parsed file promises, checked against the bytes.
fn check_consistent(bytes: &[u8], f: &GgufFile<'_>) {
    let base = bytes.as_ptr() as usize;
    assert!(f.version() == 2 || f.version() == 3);
    assert!(f.alignment().is_power_of_two());
    assert_eq!(f.data_offset() % f.alignment(), 0);
    let mut spans = Vec::new();
    for t in f.tensors() {
        let start = t.data().as_ptr() as usize - base;
        assert!(
            start >= f.data_offset(),
            "{} before the data section",
            t.name()
        );
        assert!(
            start + t.size() <= bytes.len(),
            "{} beyond the file",
            t.name()
        );
        assert_eq!(start, f.data_offset() + t.offset() as usize);
        assert_eq!(t.offset() % f.alignment() as u64, 0);
        assert!(t.dims().len() <= 4 && t.dims().iter().all(|&d| d > 0));
        assert_eq!(t.dims().iter().product::<u64>(), t.n_elements());
        let expect = t.ggml_type().row_size(t.n_elements() as usize);
        assert_eq!(expect, Some(t.size()), "{}", t.name());
        assert!(t.name().len() <= 63);
        assert_eq!(f.tensor(t.name()).map(|x| x.offset()), Some(t.offset()));
        spans.push((start, start + t.size()));
    }
    spans.sort_unstable();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "overlap");
    // Every value can be walked; lookups agree with iteration.
    for (k, v) in f.metadata().iter() {
        assert!(f.metadata().get(k) == Some(v));
        walk(v);
    }
    // What parsed re-writes to a file that parses to the same content (when
    // the alignment is small enough that the padding is not gigabytes).
    if f.alignment() > MAX_REWRITE_ALIGNMENT {
        return;
    }
    let again = GgufWriter::from_file(f)
        .expect("a parsed file re-writes")
        .to_bytes();
    let g = GgufFile::parse(&again).expect("a re-written file parses");
    assert!(g.metadata().iter().eq(f.metadata().iter()));
    assert_eq!(g.tensors().len(), f.tensors().len());
    for (a, b) in f.tensors().iter().zip(g.tensors()) {
        assert_eq!(
            (a.name(), a.dims(), a.ggml_type()),
            (b.name(), b.dims(), b.ggml_type())
        );
        assert_eq!(a.data(), b.data());
    }
}

fn walk(v: &Value<'_>) {
    if let Value::Array(a) = v {
        assert_eq!(a.iter().count(), a.len());
        for x in a.iter() {
            assert_eq!(x.value_type(), a.elem_type());
            walk(&x);
        }
    }
}

#[test]
fn mutants_never_panic_and_what_parses_is_consistent() {
    let mut w = sample_writer();
    w.set_alignment(16).unwrap();
    let seed = w.to_bytes();
    check_consistent(&seed, &GgufFile::parse(&seed).unwrap());
    let fields = integer_fields(&seed);
    assert!(fields.len() > 100, "{} fields", fields.len());

    let start = Instant::now();
    let mut rng = Rng(0x5eed_6775_f000_0001);
    let (mut parsed, mut refused) = (0, 0);
    for i in 0..MUTANTS {
        let m = mutate(&mut rng, &seed, &fields);
        let outcome = catch_unwind(AssertUnwindSafe(|| match GgufFile::parse(&m) {
            Ok(f) => {
                check_consistent(&m, &f);
                true
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                false
            }
        }));
        match outcome {
            Ok(true) => parsed += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!(
                "mutant {i} panicked (see above); its bytes:\n{}",
                m.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        }
    }
    eprintln!(
        "{MUTANTS} mutants: {parsed} parsed, {refused} refused, in {:?}",
        start.elapsed()
    );
    // The mutations must exercise both paths.
    assert!(parsed > MUTANTS / 50, "only {parsed} mutants parsed");
    assert!(refused > MUTANTS / 2, "only {refused} mutants refused");
}
