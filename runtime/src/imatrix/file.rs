//! Importance-matrix files as llama.cpp writes and reads them.
//!
//! * GGUF (`llama-imatrix`'s default): `general.type = "imatrix"`,
//!   `imatrix.datasets` (array of strings), `imatrix.chunk_count` and
//!   `imatrix.chunk_size` (u32); per weight `W` (names sorted) an f32
//!   tensor `W.in_sum2` of shape `[n_cols, n_mat]` (the sums of squared
//!   activations, one row per expert) and `W.counts` of shape `[1, n_mat]`
//!   (the activation rows summed into each).
//! * Legacy `.dat` (`--output-format dat`): `i32` entry count; per entry
//!   `i32` name length, the name, `i32 ncall`, `i32 nval`, `nval` f32
//!   values (`sum / count · ncall`); then, optionally, `i32` chunk count
//!   and `i32` length + the dataset name. All little-endian.
//!
//! Loading follows llama.cpp's `common_imatrix_load` (GGUF first, the
//! legacy layout when the file is not GGUF), with every length checked:
//! a truncated or hostile file is an [`ImatrixError`], never a panic or a
//! huge allocation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use spinel_quant::GgmlType;

use crate::gguf::{Array, GgufError, GgufFile, GgufWriter, Value};

/// `imatrix.datasets`.
pub const KEY_DATASETS: &str = "imatrix.datasets";
/// `imatrix.chunk_count`.
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
/// `imatrix.chunk_size`.
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
const SUFFIX_SUMS: &str = ".in_sum2";
const SUFFIX_COUNTS: &str = ".counts";

/// The statistics of one weight matrix (or one stack of experts).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    /// Per input column, per matrix: `n_mat · n_cols` values. In a legacy
    /// file these are `sum / count · ncall`, not raw sums.
    pub sums: Vec<f32>,
    /// Activation rows per matrix (`n_mat` values; a legacy file has one,
    /// its `ncall`).
    pub counts: Vec<i64>,
}

/// An importance matrix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    /// By weight name (`blk.0.attn_q.weight` …).
    pub entries: BTreeMap<String, Entry>,
    /// The texts it was computed on.
    pub datasets: Vec<String>,
    pub chunk_count: u32,
    pub chunk_size: u32,
    /// Read from a legacy `.dat` file.
    pub legacy: bool,
    /// A GGUF file had all three `imatrix.*` keys (llama-quantize refuses
    /// one that does not).
    pub has_metadata: bool,
}

/// Why an importance matrix could not be read or written.
#[derive(Debug)]
pub enum ImatrixError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    Gguf(GgufError),
    /// The file is not a valid importance matrix (the message says why).
    Invalid(String),
}

impl fmt::Display for ImatrixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImatrixError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ImatrixError::Gguf(e) => write!(f, "imatrix GGUF: {e}"),
            ImatrixError::Invalid(m) => write!(f, "invalid importance matrix: {m}"),
        }
    }
}

impl std::error::Error for ImatrixError {}

impl From<GgufError> for ImatrixError {
    fn from(e: GgufError) -> Self {
        ImatrixError::Gguf(e)
    }
}

fn invalid<T>(m: impl Into<String>) -> Result<T, ImatrixError> {
    Err(ImatrixError::Invalid(m.into()))
}

impl Imatrix {
    /// Reads a GGUF or legacy `.dat` importance matrix.
    pub fn load(path: &Path) -> Result<Imatrix, ImatrixError> {
        let bytes = std::fs::read(path).map_err(|source| ImatrixError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Imatrix::from_bytes(&bytes)
    }

    /// Parses a GGUF (by its magic) or legacy importance matrix.
    pub fn from_bytes(bytes: &[u8]) -> Result<Imatrix, ImatrixError> {
        if bytes.starts_with(&crate::gguf::MAGIC) {
            Imatrix::from_gguf(&GgufFile::parse(bytes)?)
        } else {
            Imatrix::from_legacy(bytes)
        }
    }

    /// `common_imatrix_load` of a parsed GGUF file.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Imatrix, ImatrixError> {
        if file.tensors().is_empty() {
            return invalid("no tensors");
        }
        let md = file.metadata();
        let mut m = Imatrix::default();
        if let Ok(names) = md.get_str_array(KEY_DATASETS) {
            m.datasets = names.map(str::to_string).collect();
        }
        m.has_metadata = md.contains_key(KEY_DATASETS)
            && md.contains_key(KEY_CHUNK_COUNT)
            && md.contains_key(KEY_CHUNK_SIZE);
        let get = |k: &str| -> Result<u32, ImatrixError> {
            match md.get(k) {
                None => Ok(0),
                Some(_) => md
                    .get_u32(k)
                    .or_else(|_| invalid(format!("{k} is not a UINT32"))),
            }
        };
        m.chunk_count = get(KEY_CHUNK_COUNT)?;
        m.chunk_size = get(KEY_CHUNK_SIZE)?;

        let mut pairs: BTreeMap<&str, (Option<usize>, Option<usize>)> = BTreeMap::new();
        for (i, t) in file.tensors().iter().enumerate() {
            if let Some(n) = t.name().strip_suffix(SUFFIX_SUMS) {
                pairs.entry(n).or_default().0 = Some(i);
            } else if let Some(n) = t.name().strip_suffix(SUFFIX_COUNTS) {
                pairs.entry(n).or_default().1 = Some(i);
            }
        }
        for (name, pair) in pairs {
            let (Some(s), Some(c)) = pair else {
                return invalid(format!(
                    "{name}: in_sum2 without counts or counts without in_sum2"
                ));
            };
            let (s, c) = (&file.tensors()[s], &file.tensors()[c]);
            if s.ggml_type() != GgmlType::F32 || c.ggml_type() != GgmlType::F32 {
                return invalid(format!("{name}: sums and counts must be F32"));
            }
            let sums = f32s(s.data());
            let counts: Vec<i64> = f32s(c.data())
                .into_iter()
                .map(|v| {
                    if (0.0..9.0e15).contains(&v) {
                        Ok(v.round() as i64)
                    } else {
                        invalid(format!("{name}: count {v} is not a non-negative number"))
                    }
                })
                .collect::<Result<_, _>>()?;
            if counts.is_empty() || sums.is_empty() || sums.len() % counts.len() != 0 {
                return invalid(format!(
                    "{name}: {} sums do not split into {} matrices",
                    sums.len(),
                    counts.len()
                ));
            }
            m.entries.insert(name.to_string(), Entry { sums, counts });
        }
        if m.entries.is_empty() {
            return invalid("no .in_sum2/.counts tensors");
        }
        Ok(m)
    }

    /// `common_imatrix_load_legacy`.
    pub fn from_legacy(bytes: &[u8]) -> Result<Imatrix, ImatrixError> {
        let mut r = Reader { b: bytes, pos: 0 };
        let n = r.i32("entry count")?;
        if n < 1 {
            return invalid("no entries (not a GGUF or legacy imatrix file?)");
        }
        let mut m = Imatrix {
            legacy: true,
            ..Imatrix::default()
        };
        for i in 0..n {
            let len = r.len(&format!("name length of entry {i}"))?;
            let name = std::str::from_utf8(r.take(len, "name")?)
                .map_err(|_| ImatrixError::Invalid(format!("entry {i}: name is not UTF-8")))?
                .to_string();
            let ncall = r.i32("ncall")?;
            let nval = r.len("value count")?;
            if nval == 0 {
                return invalid(format!("{name}: no values"));
            }
            let vals = r.take(
                nval.checked_mul(4)
                    .ok_or_else(|| ImatrixError::Invalid("value count overflows".into()))?,
                "values",
            )?;
            let e = Entry {
                sums: f32s(vals),
                counts: vec![i64::from(ncall)],
            };
            m.entries.insert(name, e);
        }
        // The chunk count and dataset name are optional (and, as in
        // llama.cpp, a damaged tail is ignored).
        if let Ok(c) = r.i32("chunk count") {
            m.chunk_count = c.max(0) as u32;
            if let Ok(name) = r
                .len("dataset name length")
                .and_then(|n| r.take(n, "dataset name"))
            {
                let name = String::from_utf8_lossy(name);
                let name = name.split('\0').next().unwrap_or_default();
                if !name.is_empty() {
                    m.datasets.push(name.to_string());
                }
            }
        }
        Ok(m)
    }

    /// The per-weight importance llama-quantize hands to the quantizers
    /// (its `load_imatrix`): GGUF sums divided by their matrix's count (1
    /// for a matrix that saw no activations), legacy values by `ncall`.
    pub fn quant_weights(&self) -> HashMap<String, Vec<f32>> {
        let mut out = HashMap::new();
        for (name, e) in &self.entries {
            let mut w = vec![0f32; e.sums.len()];
            if !self.legacy {
                let n0 = e.sums.len() / e.counts.len().max(1);
                for (j, &c) in e.counts.iter().enumerate() {
                    let count = c as f32;
                    for i in 0..n0 {
                        w[j * n0 + i] = if count > 0.0 {
                            e.sums[j * n0 + i] / count
                        } else {
                            1.0
                        };
                    }
                }
            } else {
                let ncall = e.counts.first().copied().unwrap_or(0);
                for (o, &s) in w.iter_mut().zip(&e.sums) {
                    *o = if ncall > 0 { s / ncall as f32 } else { s };
                }
            }
            out.insert(name.clone(), w);
        }
        out
    }

    /// Writes llama-imatrix's GGUF format.
    pub fn save_gguf(&self, path: &Path) -> Result<(), ImatrixError> {
        let mut w = GgufWriter::new();
        w.add_kv("general.type", Value::String("imatrix".into()))?;
        let ds = Array::from_strings(self.datasets.iter().map(String::as_str));
        w.add_kv(KEY_DATASETS, Value::Array(ds))?;
        w.add_kv(KEY_CHUNK_COUNT, Value::U32(self.chunk_count))?;
        w.add_kv(KEY_CHUNK_SIZE, Value::U32(self.chunk_size))?;
        for (name, e) in &self.entries {
            let nmat = e.counts.len() as u64;
            if nmat == 0 || e.sums.is_empty() {
                continue;
            }
            let counts: Vec<f32> = e.counts.iter().map(|&c| c as f32).collect();
            w.add_tensor(
                format!("{name}{SUFFIX_SUMS}"),
                &[e.sums.len() as u64 / nmat, nmat],
                GgmlType::F32,
                bytemuck::cast_slice::<f32, u8>(&e.sums).to_vec(),
            )?;
            w.add_tensor(
                format!("{name}{SUFFIX_COUNTS}"),
                &[1, nmat],
                GgmlType::F32,
                bytemuck::cast_slice::<f32, u8>(&counts).to_vec(),
            )?;
        }
        w.write_file(path)?;
        Ok(())
    }

    /// Writes llama-imatrix's legacy `.dat` format (`save_imatrix_legacy`):
    /// entries whose matrices all saw no activations are left out; a
    /// matrix without activations stores 1s.
    pub fn save_dat(&self, path: &Path) -> Result<(), ImatrixError> {
        let chunk = i64::from(self.chunk_size.max(1));
        let mut out = Vec::new();
        let stored: Vec<(&String, &Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.counts.iter().any(|&c| c != 0))
            .collect();
        out.extend_from_slice(&(stored.len() as i32).to_le_bytes());
        for (name, e) in stored {
            out.extend_from_slice(&(name.len() as i32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            let max = e.counts.iter().copied().max().unwrap_or(0);
            let ncall = ((max + chunk - 1) / chunk) as i32;
            out.extend_from_slice(&ncall.to_le_bytes());
            out.extend_from_slice(&(e.sums.len() as i32).to_le_bytes());
            let per = e.sums.len() / e.counts.len().max(1);
            for (i, &v) in e.sums.iter().enumerate() {
                let (mut value, mut count) = (v, e.counts[i / per.max(1)] as f32);
                if count == 0.0 {
                    value = 1.0;
                    count = 1.0;
                }
                out.extend_from_slice(&((value / count) * ncall as f32).to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.chunk_count as i32).to_le_bytes());
        let ds = self.datasets.last().map_or("", String::as_str);
        out.extend_from_slice(&(ds.len() as i32).to_le_bytes());
        out.extend_from_slice(ds.as_bytes());
        std::fs::write(path, out).map_err(|source| ImatrixError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Bounds-checked little-endian reads of a legacy file.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ImatrixError> {
        match self.pos.checked_add(n).filter(|&end| end <= self.b.len()) {
            Some(end) => {
                let s = &self.b[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => invalid(format!("truncated at byte {} reading {what}", self.pos)),
        }
    }

    fn i32(&mut self, what: &str) -> Result<i32, ImatrixError> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A non-negative `i32` length.
    fn len(&mut self, what: &str) -> Result<usize, ImatrixError> {
        let at = self.pos;
        let v = self.i32(what)?;
        usize::try_from(v).or_else(|_| invalid(format!("negative {what} ({v}) at byte {at}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut m = Imatrix {
            datasets: vec!["wiki.txt".into()],
            chunk_count: 3,
            chunk_size: 128,
            has_metadata: true,
            ..Imatrix::default()
        };
        m.entries.insert(
            "blk.0.attn_q.weight".into(),
            Entry {
                sums: vec![1.0, 4.0, 9.0, 16.0],
                counts: vec![384],
            },
        );
        m.entries.insert(
            "blk.0.ffn_up_exps.weight".into(),
            Entry {
                sums: vec![2.0, 2.0, 5.0, 5.0],
                counts: vec![10, 0],
            },
        );
        m
    }

    #[test]
    fn gguf_round_trips() {
        let dir = std::env::temp_dir().join(format!("spinel-imatrix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.gguf");
        let m = sample();
        m.save_gguf(&p).unwrap();
        let back = Imatrix::load(&p).unwrap();
        assert_eq!(back, m);
        let w = back.quant_weights();
        assert_eq!(
            w["blk.0.attn_q.weight"],
            [1.0 / 384.0, 4.0 / 384.0, 9.0 / 384.0, 16.0 / 384.0]
        );
        // An expert that saw nothing weighs 1.
        assert_eq!(w["blk.0.ffn_up_exps.weight"], [0.2, 0.2, 1.0, 1.0]);

        let d = dir.join("m.dat");
        m.save_dat(&d).unwrap();
        let legacy = Imatrix::load(&d).unwrap();
        assert!(legacy.legacy);
        assert_eq!(legacy.chunk_count, 3);
        assert_eq!(legacy.datasets, ["wiki.txt"]);
        let lw = legacy.quant_weights();
        // ncall = ceil(384 / 128) = 3: (s / 384 · 3) / 3.
        for (a, b) in lw["blk.0.attn_q.weight"]
            .iter()
            .zip(&w["blk.0.attn_q.weight"])
        {
            assert!((a - b).abs() <= 1e-7 * b.abs(), "{a} {b}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostile_files_are_errors() {
        let mut good = Vec::new();
        good.extend_from_slice(&1i32.to_le_bytes());
        good.extend_from_slice(&3i32.to_le_bytes());
        good.extend_from_slice(b"abc");
        good.extend_from_slice(&1i32.to_le_bytes());
        good.extend_from_slice(&2i32.to_le_bytes());
        good.extend_from_slice(&1f32.to_le_bytes());
        good.extend_from_slice(&2f32.to_le_bytes());
        assert!(Imatrix::from_bytes(&good).is_ok());
        for cut in 0..good.len() {
            assert!(Imatrix::from_bytes(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(Imatrix::from_bytes(&huge).is_err());
        let mut neg = good.clone();
        neg[15..19].copy_from_slice(&(-5i32).to_le_bytes());
        assert!(Imatrix::from_bytes(&neg).is_err());
        assert!(Imatrix::from_bytes(b"GGUF\x03\0\0\0garbage").is_err());

        // GGUF with a sums tensor but no counts.
        let mut w = GgufWriter::new();
        w.add_tensor("a.in_sum2", &[2, 1], GgmlType::F32, vec![0u8; 8])
            .unwrap();
        assert!(Imatrix::from_bytes(&w.to_bytes()).is_err());
        // Counts that do not divide the sums.
        w.add_tensor("a.counts", &[1, 3], GgmlType::F32, vec![0u8; 12])
            .unwrap();
        let e = Imatrix::from_bytes(&w.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("do not split"), "{e}");
    }
}
