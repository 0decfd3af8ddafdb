//! Helpers shared by the GGUF integration tests: a sample file with every
//! value type, and a raw byte builder for hand-made (hostile) files.

#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;

use spinel_quant::GgmlType;
use spinel_runtime::gguf::{Array, GgufWriter, Value};

/// Deterministic pseudo-random bytes (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Metadata with every value type, edge values, empty and nested arrays.
pub fn sample_metadata() -> Vec<(&'static str, Value<'static>)> {
    vec![
        ("general.architecture", Value::from("llama")),
        ("general.name", Value::from("spinel test — ünïcödé ✓")),
        ("test.empty_string", Value::from("")),
        ("test.u8", Value::U8(u8::MAX)),
        ("test.i8", Value::I8(i8::MIN)),
        ("test.u16", Value::U16(0xbeef)),
        ("test.i16", Value::I16(-12345)),
        ("test.u32", Value::U32(u32::MAX)),
        ("test.i32", Value::I32(i32::MIN)),
        ("test.u64", Value::U64(u64::MAX)),
        ("test.i64", Value::I64(i64::MIN)),
        ("test.f32", Value::F32(1e-5)),
        ("test.f32_nan", Value::F32(f32::from_bits(0x7fc0_0001))),
        ("test.f32_neg_zero", Value::F32(-0.0)),
        ("test.f32_inf", Value::F32(f32::NEG_INFINITY)),
        ("test.f64", Value::F64(std::f64::consts::PI)),
        ("test.f64_tiny", Value::F64(f64::from_bits(1))),
        ("test.bool_true", Value::Bool(true)),
        ("test.bool_false", Value::Bool(false)),
        ("test.arr_u8", Array::from_scalars(&[0u8, 1, 255]).into()),
        ("test.arr_i8", Array::from_scalars(&[-128i8, 0, 127]).into()),
        ("test.arr_u16", Array::from_scalars(&[0u16, 65535]).into()),
        (
            "test.arr_i16",
            Array::from_scalars(&[-32768i16, 32767]).into(),
        ),
        (
            "test.arr_u32",
            Array::from_scalars(&[1u32, 2, 3, u32::MAX]).into(),
        ),
        ("test.arr_i32", Array::from_scalars(&[-1i32, 0, 1]).into()),
        ("test.arr_u64", Array::from_scalars(&[u64::MAX, 0]).into()),
        (
            "test.arr_i64",
            Array::from_scalars(&[i64::MIN, i64::MAX]).into(),
        ),
        (
            "test.arr_f32",
            Array::from_scalars(&[0.5f32, -2.25, f32::MAX]).into(),
        ),
        (
            "test.arr_f64",
            Array::from_scalars(&[1e300f64, -1e-300]).into(),
        ),
        (
            "test.arr_bool",
            Array::from_scalars(&[true, false, true]).into(),
        ),
        (
            "test.arr_str",
            Array::from_strings(["<unk>", "", "Ġthe", "日本"]).into(),
        ),
        ("test.arr_empty_u32", Array::from_scalars::<u32>(&[]).into()),
        (
            "test.arr_empty_str",
            Array::from_strings(Vec::<&str>::new()).into(),
        ),
        (
            "test.arr_nested",
            Array::from_arrays(vec![
                Array::from_scalars(&[1u8, 2]),
                Array::from_strings(["a", "bc"]),
                Array::from_scalars::<f32>(&[]),
                Array::from_arrays(vec![Array::from_scalars(&[7i64])]),
            ])
            .into(),
        ),
        ("test.arr_empty_nested", Array::from_arrays(vec![]).into()),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
    ]
}

/// Tensors of several types and ranks: (name, dims, type).
pub fn sample_tensor_shapes() -> Vec<(&'static str, Vec<u64>, GgmlType)> {
    vec![
        ("token_embd.weight", vec![64, 3], GgmlType::Q8_0),
        ("blk.0.attn_norm.weight", vec![5], GgmlType::F32),
        ("blk.0.attn_q.weight", vec![32, 2], GgmlType::Q4_0),
        ("blk.0.ffn_up.weight", vec![32, 1, 2], GgmlType::Q4_1),
        ("blk.0.ffn_down.weight", vec![256, 2], GgmlType::Q4K),
        ("blk.0.ffn_gate.weight", vec![256], GgmlType::Q6K),
        ("output.weight", vec![3, 2, 2, 1], GgmlType::F16),
        ("rope_freqs", vec![7], GgmlType::BF16),
        ("blk.0.attn_k.weight", vec![32], GgmlType::Q5_1),
    ]
}

/// The sample file's writer: [`sample_metadata`] and [`sample_tensor_shapes`]
/// with pseudo-random data.
pub fn sample_writer() -> GgufWriter<'static> {
    let mut w = GgufWriter::new();
    for (k, v) in sample_metadata() {
        w.add_kv(k, v).unwrap();
    }
    let mut rng = Rng(7);
    for (name, dims, ty) in sample_tensor_shapes() {
        let n: u64 = dims.iter().product();
        let size = ty.row_size(n as usize).unwrap();
        w.add_tensor(name, &dims, ty, rng.bytes(size)).unwrap();
    }
    w
}

/// A fresh path for a test's scratch file.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spinel-gguf-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", std::process::id()))
}

/// A byte builder for hand-made GGUF files.
#[derive(Clone, Default)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    /// Magic, version, tensor count, metadata count.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.bytes(b"GGUF").u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn u8(&mut self, x: u8) -> &mut Self {
        self.bytes(&[x])
    }
    pub fn u32(&mut self, x: u32) -> &mut Self {
        self.bytes(&x.to_le_bytes())
    }
    pub fn u64(&mut self, x: u64) -> &mut Self {
        self.bytes(&x.to_le_bytes())
    }
    /// A length-prefixed string of arbitrary bytes.
    pub fn str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64).bytes(s)
    }
    /// A key and its value type.
    pub fn key(&mut self, key: &str, ty: u32) -> &mut Self {
        self.str(key.as_bytes()).u32(ty)
    }
    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.key(key, 4).u32(v)
    }
    pub fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.key(key, 8).str(v.as_bytes())
    }
    /// A tensor info.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Zero padding up to a multiple of `align`.
    pub fn pad(&mut self, align: usize) -> &mut Self {
        while self.0.len() % align != 0 {
            self.0.push(0);
        }
        self
    }
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    pub fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// The SmolLM2 demo model, loaded once per test binary.
pub fn test_engine() -> std::sync::Arc<spinel_runtime::engine::Engine> {
    use std::sync::{Arc, OnceLock};
    static ENGINE: OnceLock<Arc<spinel_runtime::engine::Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let path = spinel_runtime::cache::test_model();
            assert!(
                path.is_file(),
                "the SmolLM2 test model is missing at {}: run scripts/fetch-model.sh \
                 (or set SPINEL_TEST_MODEL)",
                path.display()
            );
            let engine = spinel_runtime::engine::Engine::load(&path);
            Arc::new(engine.unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        })
        .clone()
}
