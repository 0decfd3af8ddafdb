//! The grid i-quants (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M)
//! against ggml's own C: a small driver (`ggml/driver.c`) compiled at test
//! time against `libggml-base.a` from the llama.cpp peer build
//! (`../shared/peers/llama-cpp.sh`, which CI runs first) quantizes rows
//! with `ggml_quantize_chunk` — with and without an importance matrix —
//! and dequantizes with ggml's `to_float`. Our bytes and floats must be
//! identical. Dequantization is also checked against gguf-py's numpy code.
//! Without the peer build (or Python's `gguf`) these tests fail, saying why.

mod common;

use common::{b64, f32s, rows, vectors};
use spinel_quant::formats::iq_grid::{self, QuantizeError};
use spinel_quant::{GgmlType, Kernels, QK_K};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const TYPES: [GgmlType; 7] = [
    GgmlType::IQ3XXS,
    GgmlType::IQ3S,
    GgmlType::IQ2XXS,
    GgmlType::IQ2XS,
    GgmlType::IQ2S,
    GgmlType::IQ1S,
    GgmlType::IQ1M,
];

fn peer_root() -> PathBuf {
    std::env::var_os("SPINEL_PEERS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/spinel-peers")))
        .expect("HOME or SPINEL_PEERS is set")
}

/// The compiled driver (built once per test binary).
fn driver() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let root = peer_root();
        let lib = root.join("llama.cpp-0.3.36-native/build/ggml/src/libggml-base.a");
        let include = root.join("src/llama_cpp_python-0.3.36/vendor/llama.cpp/ggml/include");
        assert!(
            lib.is_file() && include.is_dir(),
            "ggml's C reference is missing: {} and {} come from ../shared/peers/llama-cpp.sh \
             (run it first; CI does)",
            lib.display(),
            include.display()
        );
        let dir = std::env::temp_dir().join(format!("spinel-ggml-iq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("driver");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ggml/driver.c");
        let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .arg("-O1")
            .arg(&src)
            .arg("-I")
            .arg(&include)
            .arg(&lib)
            .args(["-lstdc++", "-lm", "-fopenmp", "-o"])
            .arg(&exe)
            .output()
            .expect("a C compiler (cc) runs");
        assert!(
            out.status.success(),
            "compiling the ggml driver failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        exe
    })
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Jobs for one run of the driver (it initialises ggml's grids once).
struct Jobs {
    dir: PathBuf,
    lines: Vec<String>,
}

impl Jobs {
    fn new(tag: &str) -> Jobs {
        let dir = driver().parent().unwrap().join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        Jobs {
            dir,
            lines: Vec::new(),
        }
    }

    fn file(&self, i: usize, ext: &str) -> String {
        self.dir
            .join(format!("{i}.{ext}"))
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// Queues ggml's quantization of `nrows` rows of `x`; returns the job.
    fn quantize(
        &mut self,
        ty: GgmlType,
        x: &[f32],
        nrows: usize,
        imatrix: Option<&[f32]>,
    ) -> usize {
        let i = self.lines.len();
        std::fs::write(self.file(i, "in"), f32_bytes(x)).unwrap();
        let mut line = format!(
            "q {} {nrows} {} {} {}",
            ty.id(),
            x.len() / nrows,
            self.file(i, "in"),
            self.file(i, "out")
        );
        if let Some(w) = imatrix {
            std::fs::write(self.file(i, "im"), f32_bytes(w)).unwrap();
            line += &format!(" {}", self.file(i, "im"));
        }
        self.lines.push(line);
        i
    }

    /// Queues ggml's dequantization of `q` (`n` values); returns the job.
    fn dequantize(&mut self, ty: GgmlType, q: &[u8], n: usize) -> usize {
        let i = self.lines.len();
        std::fs::write(self.file(i, "in"), q).unwrap();
        self.lines.push(format!(
            "d {} {n} {} {}",
            ty.id(),
            self.file(i, "in"),
            self.file(i, "out")
        ));
        i
    }

    /// Runs the jobs; each job's output bytes, in order.
    fn run(self) -> Vec<Vec<u8>> {
        let mut child = Command::new(driver())
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(self.lines.join("\n").as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ggml driver failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let res = (0..self.lines.len())
            .map(|i| std::fs::read(self.file(i, "out")).unwrap())
            .collect();
        let _ = std::fs::remove_dir_all(&self.dir);
        res
    }
}

/// Our quantization of `x` (rows as long as `w`, if given).
fn ours(ty: GgmlType, x: &[f32], w: Option<&[f32]>) -> Result<Vec<u8>, QuantizeError> {
    let mut q = vec![0u8; ty.row_size(x.len()).unwrap()];
    macro_rules! go {
        ($f:path) => {
            $f(x, bytemuck::cast_slice_mut(&mut q), w)
        };
    }
    match ty {
        GgmlType::IQ3XXS => go!(iq_grid::quantize_iq3_xxs),
        GgmlType::IQ3S => go!(iq_grid::quantize_iq3_s),
        GgmlType::IQ2XXS => go!(iq_grid::quantize_iq2_xxs),
        GgmlType::IQ2XS => go!(iq_grid::quantize_iq2_xs),
        GgmlType::IQ2S => go!(iq_grid::quantize_iq2_s),
        GgmlType::IQ1S => go!(iq_grid::quantize_iq1_s),
        GgmlType::IQ1M => go!(iq_grid::quantize_iq1_m),
        _ => unreachable!(),
    }?;
    Ok(q)
}

/// A non-trivial importance vector of `n` values (uneven, all positive).
fn imatrix(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| 0.05 + ((i * 7919) % 113) as f32 / 17.0 + if i % 29 == 0 { 40.0 } else { 0.0 })
        .collect()
}

/// The first differing block, for a readable failure.
fn first_diff(ty: GgmlType, a: &[u8], b: &[u8]) -> String {
    let bs = ty.type_size();
    match a.chunks(bs).zip(b.chunks(bs)).position(|(x, y)| x != y) {
        Some(i) => format!(
            "block {i}:\n ours {:?}\n ggml {:?}",
            &a[i * bs..(i + 1) * bs],
            &b[i * bs..(i + 1) * bs]
        ),
        None => "lengths differ".into(),
    }
}

/// Real weights: the SmolLM2 rows of the shared vectors, dequantized,
/// joined and cut to whole super-blocks.
fn real_rows() -> Vec<(String, Vec<f32>)> {
    let tensors = vectors()["real_gguf_rows"]["tensors"].as_object().unwrap();
    let mut out = Vec::new();
    for (name, t) in tensors {
        let x = f32s(&b64(&t["dequant_f32_b64"]));
        let n = x.len() / QK_K * QK_K;
        assert!(n >= QK_K, "{name}: too short");
        out.push((format!("real:{name}"), x[..n].to_vec()));
    }
    out
}

fn all_rows() -> Vec<(String, Vec<f32>)> {
    let mut r = rows();
    r.extend(real_rows());
    r
}

#[test]
fn quantization_matches_ggml_with_importance_weights() {
    let mut jobs = Jobs::new("with-imatrix");
    let mut cases = Vec::new();
    for ty in TYPES {
        for (name, x) in all_rows() {
            let w = imatrix(x.len());
            let job = jobs.quantize(ty, &x, 1, Some(&w));
            cases.push((ty, name, ours(ty, &x, Some(&w)).unwrap(), job));
        }
    }
    let want = jobs.run();
    for (ty, name, got, job) in &cases {
        assert!(
            *got == want[*job],
            "{ty} {name} (imatrix): {}",
            first_diff(*ty, got, &want[*job])
        );
    }
    assert!(cases.len() >= 7 * 15);
}

#[test]
fn quantization_matches_ggml_without_importance_weights() {
    let mut jobs = Jobs::new("without-imatrix");
    let mut cases = Vec::new();
    for ty in TYPES {
        if iq_grid::requires_imatrix(ty) {
            let x = vec![0.5f32; QK_K];
            assert_eq!(ours(ty, &x, None), Err(QuantizeError::NeedsImatrix), "{ty}");
            continue;
        }
        for (name, x) in all_rows() {
            let job = jobs.quantize(ty, &x, 1, None);
            cases.push((ty, name, ours(ty, &x, None).unwrap(), job));
        }
    }
    let want = jobs.run();
    for (ty, name, got, job) in &cases {
        assert!(
            *got == want[*job],
            "{ty} {name}: {}",
            first_diff(*ty, got, &want[*job])
        );
    }
    assert!(cases.len() >= 4 * 15);
}

/// Several rows in one call: the importance weights apply per column,
/// again for every row.
#[test]
fn multi_row_quantization_matches_ggml() {
    let x: Vec<f32> = rows()
        .into_iter()
        .find(|(n, _)| n == "weights_like_4096")
        .unwrap()
        .1;
    let w = imatrix(1024);
    let mut jobs = Jobs::new("multi-row");
    let cases: Vec<_> = TYPES
        .iter()
        .map(|&ty| {
            (
                ty,
                ours(ty, &x, Some(&w)).unwrap(),
                jobs.quantize(ty, &x, 4, Some(&w)),
            )
        })
        .collect();
    let want = jobs.run();
    for (ty, got, job) in &cases {
        assert!(
            *got == want[*job],
            "{ty} 4 rows: {}",
            first_diff(*ty, got, &want[*job])
        );
    }
    let err = ours(GgmlType::IQ3S, &x, Some(&w[..1000])).unwrap_err();
    assert!(
        matches!(err, QuantizeError::WeightsLength { got: 1000, .. }),
        "{err:?}"
    );
}

/// Random blocks with a small finite scale: every index and sign pattern.
fn random_blocks(ty: GgmlType, n: usize) -> Vec<u8> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(ty.id());
    let mut q: Vec<u8> = (0..ty.type_size() * n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    for b in q.chunks_mut(ty.type_size()) {
        fix_scale(ty, b);
    }
    q
}

/// Our dequantization equals ggml's, bit for bit, on quantized rows and on
/// random blocks.
#[test]
fn dequantization_matches_ggml() {
    let k = Kernels::for_isa(spinel_quant::Isa::Scalar).unwrap();
    let mut jobs = Jobs::new("dequant");
    let mut cases = Vec::new();
    for ty in TYPES {
        let mut blobs: Vec<(String, Vec<u8>)> = all_rows()
            .into_iter()
            .map(|(name, x)| {
                let w = imatrix(x.len());
                (name, ours(ty, &x, Some(&w)).unwrap())
            })
            .collect();
        blobs.push(("random".into(), random_blocks(ty, 64)));
        for (name, q) in blobs {
            let n = q.len() / ty.type_size() * QK_K;
            let mut got = vec![0f32; n];
            (k.of(ty).to_float)(&q, &mut got);
            let job = jobs.dequantize(ty, &q, n);
            cases.push((ty, name, got, job));
        }
    }
    let want = jobs.run();
    for (ty, name, got, job) in &cases {
        let want = f32s(&want[*job]);
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{ty} {name}: dequantization differs from ggml's");
    }
}

/// Gives a random block a small finite scale.
fn fix_scale(ty: GgmlType, b: &mut [u8]) {
    let h = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    if ty == GgmlType::IQ1M {
        // The scale's nibbles sit in the top of the four u16 of `scales`.
        let n = b.len();
        for (i, nib) in [h[0] & 0xf, h[0] >> 4, h[1] & 0xf, h[1] >> 4]
            .into_iter()
            .enumerate()
        {
            let at = n - 8 + 2 * i + 1;
            b[at] = (b[at] & 0x0f) | (nib << 4);
        }
    } else {
        b[..2].copy_from_slice(&h);
    }
}

/// Our dequantization equals gguf-py's (`gguf.quants.dequantize`, numpy),
/// bit for bit, on quantized rows and random blocks of every type.
#[test]
fn dequantization_matches_gguf_py() {
    let k = Kernels::for_isa(spinel_quant::Isa::Scalar).unwrap();
    let dir = driver().parent().unwrap().join("gguf-py");
    std::fs::create_dir_all(&dir).unwrap();
    let script = r#"
import sys, numpy as np
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize
for line in sys.stdin:
    name, src, dst = line.split()
    q = np.fromfile(src, dtype=np.uint8)
    dequantize(q, GGMLQuantizationType[name]).astype("<f4").tofile(dst)
"#;
    let mut jobs = String::new();
    let mut cases = Vec::new();
    for ty in TYPES {
        let (_, x) = rows()
            .into_iter()
            .find(|(n, _)| n == "weights_like_4096")
            .unwrap();
        let w = imatrix(x.len());
        for (name, q) in [
            ("row", ours(ty, &x, Some(&w)).unwrap()),
            ("random", random_blocks(ty, 64)),
        ] {
            let (src, dst) = (
                dir.join(format!("{ty}.{name}.q")),
                dir.join(format!("{ty}.{name}.f32")),
            );
            std::fs::write(&src, &q).unwrap();
            jobs += &format!("{} {} {}\n", ty.name(), src.display(), dst.display());
            cases.push((ty, name, q, dst));
        }
    }
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with the gguf package (scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(jobs.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "gguf-py dequantize failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (ty, name, q, dst) in cases {
        let want = f32s(&std::fs::read(&dst).unwrap());
        let mut got = vec![0f32; q.len() / ty.type_size() * QK_K];
        (k.of(ty).to_float)(&q, &mut got);
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{ty} {name}: dequantization differs from gguf-py's");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
