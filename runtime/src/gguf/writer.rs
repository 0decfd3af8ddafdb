//! Building GGUF v3 files.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::HashSet;
use std::io::{self, Write};
use std::path::Path;

use spinel_quant::GgmlType;

use super::error::GgufError;
use super::reader::{GgufFile, align_up, tensor_geometry};
use super::value::{Value, encode_str};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_TENSOR_NAME_LEN};

type Result<T> = std::result::Result<T, GgufError>;

/// Builds a GGUF v3 file: metadata in insertion order, then tensor infos,
/// then the tensor data, each tensor padded to the alignment.
///
/// Everything is validated as it is added (duplicate keys and names, shapes,
/// data sizes, `general.alignment`), so writing can only fail on I/O. What it
/// writes parses back with [`GgufFile::parse`] to the same metadata and
/// tensors, and writing that again gives the same bytes.
///
/// ```
/// use spinel_runtime::gguf::{GgufFile, GgufWriter};
/// use spinel_quant::GgmlType;
///
/// let mut w = GgufWriter::new();
/// w.add_kv("general.architecture", "llama")?;
/// w.add_kv("llama.block_count", 2u32)?;
/// let weights: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
/// w.add_tensor("norm.weight", &[2], GgmlType::F32, weights)?;
/// let bytes = w.to_bytes();
///
/// let f = GgufFile::parse(&bytes)?;
/// assert_eq!(f.metadata().get_u32("llama.block_count")?, 2);
/// assert_eq!(f.tensor("norm.weight").unwrap().size(), 8);
/// # Ok::<(), spinel_runtime::gguf::GgufError>(())
/// ```
#[derive(Clone, Debug)]
pub struct GgufWriter<'a> {
    kv: Vec<(Cow<'a, str>, Value<'a>)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<PendingTensor<'a>>,
    names: HashSet<String>,
    alignment: u64,
}

#[derive(Clone, Debug)]
struct PendingTensor<'a> {
    name: Cow<'a, str>,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Cow<'a, [u8]>,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> GgufWriter<'a> {
    /// An empty file with the default alignment (32).
    pub fn new() -> Self {
        GgufWriter {
            kv: Vec::new(),
            kv_index: HashMap::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            alignment: DEFAULT_ALIGNMENT as u64,
        }
    }

    /// A writer holding everything `file` holds (metadata in order, tensors
    /// in order, borrowing their data). Tensors are laid out afresh, one
    /// after another in file order.
    pub fn from_file(file: &GgufFile<'a>) -> Result<Self> {
        let mut w = GgufWriter::new();
        for (k, v) in file.metadata().iter() {
            w.add_kv(k, v.clone())?;
        }
        for t in file.tensors() {
            w.add_tensor(t.name(), t.dims(), t.ggml_type(), t.data())?;
        }
        Ok(w)
    }

    /// The alignment the file will have.
    pub fn alignment(&self) -> usize {
        self.alignment as usize
    }

    /// Sets the alignment (a nonzero power of two), adding or replacing the
    /// `general.alignment` key.
    pub fn set_alignment(&mut self, alignment: u32) -> Result<&mut Self> {
        check_alignment(&Value::U32(alignment))?;
        self.alignment = alignment.into();
        match self.kv_index.get(ALIGNMENT_KEY) {
            Some(&i) => self.kv[i].1 = Value::U32(alignment),
            None => {
                self.kv_index
                    .insert(ALIGNMENT_KEY.to_string(), self.kv.len());
                self.kv
                    .push((Cow::Borrowed(ALIGNMENT_KEY), Value::U32(alignment)));
            }
        }
        Ok(self)
    }

    /// Adds a metadata entry. `general.alignment` must be a `UINT32` power of
    /// two and sets the alignment.
    pub fn add_kv(
        &mut self,
        key: impl Into<Cow<'a, str>>,
        value: impl Into<Value<'a>>,
    ) -> Result<&mut Self> {
        let key = key.into();
        let value = value.into();
        if self.kv_index.contains_key(&*key) {
            return Err(GgufError::DuplicateKey {
                key: key.into_owned(),
                offset: None,
            });
        }
        if key == ALIGNMENT_KEY {
            self.alignment = check_alignment(&value)?;
        }
        self.kv_index.insert(key.to_string(), self.kv.len());
        self.kv.push((key, value));
        Ok(self)
    }

    /// Adds a tensor: `dims` in ggml order (`dims[0]` is the row length),
    /// `data` exactly the bytes its type and shape need.
    pub fn add_tensor(
        &mut self,
        name: impl Into<Cow<'a, str>>,
        dims: &[u64],
        ty: GgmlType,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<&mut Self> {
        let name = name.into();
        let data = data.into();
        if name.len() > MAX_TENSOR_NAME_LEN {
            return Err(GgufError::TensorNameTooLong {
                tensor: name.to_string(),
                offset: None,
                len: name.len() as u64,
            });
        }
        if dims.len() > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                tensor: name.into_owned(),
                offset: None,
                n_dims: dims.len() as u64,
            });
        }
        if self.names.contains(&*name) {
            return Err(GgufError::DuplicateTensor {
                tensor: name.into_owned(),
                offset: None,
            });
        }
        let (_, _, size) = tensor_geometry(&name, dims, ty.id())?;
        if data.len() as u64 != size {
            return Err(GgufError::TensorDataSize {
                tensor: name.into_owned(),
                expected: size,
                actual: data.len() as u64,
            });
        }
        self.names.insert(name.to_string());
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ty,
            data,
        });
        Ok(self)
    }

    /// The header: everything before the data section, without the padding
    /// up to the alignment.
    fn header(&self) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            encode_str(k, &mut h);
            h.extend_from_slice(&v.value_type().id().to_le_bytes());
            v.encode(&mut h);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            encode_str(&t.name, &mut h);
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset += self.padded(t.data.len());
        }
        h
    }

    fn padded(&self, n: usize) -> u64 {
        // In-memory sizes are far below u64::MAX.
        align_up(n as u64, self.alignment).unwrap_or(u64::MAX)
    }

    /// Writes the file to `out`. Tensor data is streamed, not copied.
    pub fn write_to<W: Write>(&self, mut out: W) -> io::Result<()> {
        let header = self.header();
        out.write_all(&header)?;
        write_zeros(&mut out, self.padded(header.len()) - header.len() as u64)?;
        for t in &self.tensors {
            out.write_all(&t.data)?;
            write_zeros(&mut out, self.padded(t.data.len()) - t.data.len() as u64)?;
        }
        out.flush()
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }

    /// Writes the file to `path`.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::create(path).map_err(io)?;
        self.write_to(io::BufWriter::new(f)).map_err(io)
    }
}

/// Writes `n` zero bytes (padding; up to the alignment, which may be large,
/// so not from a buffer of that size).
fn write_zeros(out: &mut impl Write, mut n: u64) -> io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Checks a `general.alignment` value and returns it.
fn check_alignment(v: &Value<'_>) -> Result<u64> {
    match v {
        Value::U32(a) if a.is_power_of_two() => Ok((*a).into()),
        Value::U32(a) => Err(GgufError::BadAlignment {
            alignment: (*a).into(),
        }),
        v => Err(GgufError::AlignmentType {
            found: v.type_description(),
        }),
    }
}
