//! The zero-copy GGUF parser.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

use spinel_quant::GgmlType;

use super::error::GgufError;
use super::value::{Array, Scalar, Value, ValueType, decode_scalar};
use super::{
    ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_TENSOR_NAME_LEN,
};

type Result<T> = std::result::Result<T, GgufError>;

/// The fewest bytes a metadata entry takes: key length (8), empty key, value
/// type (4), a one-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;
/// The fewest bytes a tensor info takes: name length (8), empty name,
/// dimension count (4), no dimensions, type (4), offset (8).
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 4 + 8;

/// A parsed GGUF file borrowing the bytes it was parsed from.
///
/// Parsing validates everything up front — every length, count, key, type,
/// tensor shape and tensor placement — so what a `GgufFile` hands out is
/// consistent: each tensor's [`data`](TensorInfo::data) is exactly
/// [`size`](TensorInfo::size) bytes inside the data section, aligned, and
/// overlapping no other tensor.
#[derive(Clone)]
pub struct GgufFile<'a> {
    bytes: &'a [u8],
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: Metadata<'a>,
    tensors: Vec<TensorInfo<'a>>,
    tensor_index: HashMap<&'a str, usize>,
}

impl<'a> GgufFile<'a> {
    /// Parses and validates a whole GGUF file held in memory.
    pub fn parse(bytes: &'a [u8]) -> Result<GgufFile<'a>> {
        Parser::new(bytes).parse()
    }

    /// The bytes the file was parsed from.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of the data section and of every tensor in it:
    /// `general.alignment`, or 32 when the file does not set it.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Where the data section starts: the end of the header, rounded up to
    /// the alignment. Tensor offsets are relative to this.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// The data section (empty when the file ends at or before
    /// [`data_offset`](Self::data_offset), which only a file without tensors
    /// may do).
    pub fn data(&self) -> &'a [u8] {
        self.bytes.get(self.data_offset..).unwrap_or(&[])
    }

    /// The metadata, in file order.
    pub fn metadata(&self) -> &Metadata<'a> {
        &self.metadata
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo<'a>] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
}

impl fmt::Debug for GgufFile<'_> {
    /// A summary: not the bytes, and not every metadata value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("len", &self.bytes.len())
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("metadata", &self.metadata.keys().collect::<Vec<_>>())
            .field("tensors", &self.tensors)
            .finish()
    }
}

/// The metadata of a GGUF file: key-value pairs in file order, with lookup
/// by key and typed getters whose errors name the key and the types.
#[derive(Clone, Debug, Default)]
pub struct Metadata<'a> {
    entries: Vec<(&'a str, Value<'a>)>,
    index: HashMap<&'a str, usize>,
}

impl<'a> Metadata<'a> {
    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in file order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&'a str, &Value<'a>)> + '_ {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    /// The keys in file order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &'a str> + '_ {
        self.entries.iter().map(|(k, _)| *k)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The value of `key`, or [`GgufError::MissingKey`].
    pub fn value(&self, key: &str) -> Result<&Value<'a>> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_string(),
        })
    }

    /// The value of `key` if it is exactly of type `T`.
    pub fn get_scalar<T: Scalar>(&self, key: &str) -> Result<T> {
        let v = self.value(key)?;
        T::from_value(v).ok_or_else(|| wrong_type(key, T::TYPE.name(), v))
    }

    /// A `UINT8` value.
    pub fn get_u8(&self, key: &str) -> Result<u8> {
        self.get_scalar(key)
    }
    /// An `INT8` value.
    pub fn get_i8(&self, key: &str) -> Result<i8> {
        self.get_scalar(key)
    }
    /// A `UINT16` value.
    pub fn get_u16(&self, key: &str) -> Result<u16> {
        self.get_scalar(key)
    }
    /// An `INT16` value.
    pub fn get_i16(&self, key: &str) -> Result<i16> {
        self.get_scalar(key)
    }
    /// A `UINT32` value.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_scalar(key)
    }
    /// An `INT32` value.
    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.get_scalar(key)
    }
    /// A `UINT64` value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_scalar(key)
    }
    /// An `INT64` value.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.get_scalar(key)
    }
    /// A `FLOAT32` value.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.get_scalar(key)
    }
    /// A `FLOAT64` value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get_scalar(key)
    }
    /// A `BOOL` value.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.get_scalar(key)
    }

    /// Any integer type holding a non-negative value, widened to `u64` (for
    /// hyperparameters that converters store with varying integer types).
    pub fn get_uint(&self, key: &str) -> Result<u64> {
        let v = self.value(key)?;
        v.as_uint()
            .ok_or_else(|| wrong_type(key, "a non-negative integer", v))
    }

    /// A `STRING` value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.value(key)?;
        v.as_str().ok_or_else(|| wrong_type(key, "STRING", v))
    }

    /// An `ARRAY` value.
    pub fn get_array(&self, key: &str) -> Result<&Array<'a>> {
        let v = self.value(key)?;
        v.as_array().ok_or_else(|| wrong_type(key, "ARRAY", v))
    }

    /// An array whose elements are of type `T`, collected.
    pub fn get_array_of<T: Scalar>(&self, key: &str) -> Result<Vec<T>> {
        let a = self.get_array(key)?;
        a.to_vec::<T>().ok_or_else(|| GgufError::WrongType {
            key: key.to_string(),
            expected: array_type_name(T::TYPE),
            found: format!("ARRAY of {}", a.elem_type()),
        })
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<impl ExactSizeIterator<Item = &str> + '_> {
        let a = self.get_array(key)?;
        a.strings().ok_or_else(|| GgufError::WrongType {
            key: key.to_string(),
            expected: "ARRAY of STRING",
            found: format!("ARRAY of {}", a.elem_type()),
        })
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &Value<'_>) -> GgufError {
    GgufError::WrongType {
        key: key.to_string(),
        expected,
        found: found.type_description(),
    }
}

fn array_type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::U8 => "ARRAY of UINT8",
        ValueType::I8 => "ARRAY of INT8",
        ValueType::U16 => "ARRAY of UINT16",
        ValueType::I16 => "ARRAY of INT16",
        ValueType::U32 => "ARRAY of UINT32",
        ValueType::I32 => "ARRAY of INT32",
        ValueType::F32 => "ARRAY of FLOAT32",
        ValueType::Bool => "ARRAY of BOOL",
        ValueType::String => "ARRAY of STRING",
        ValueType::Array => "ARRAY of ARRAY",
        ValueType::U64 => "ARRAY of UINT64",
        ValueType::I64 => "ARRAY of INT64",
        ValueType::F64 => "ARRAY of FLOAT64",
    }
}

/// One tensor of a parsed file: its info record and its data.
#[derive(Clone)]
pub struct TensorInfo<'a> {
    name: &'a str,
    n_dims: usize,
    dims: [u64; MAX_DIMS],
    ty: GgmlType,
    offset: u64,
    n_elements: u64,
    data: &'a [u8],
}

impl<'a> TensorInfo<'a> {
    /// The name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The dimensions in ggml order as stored in the file: `dims()[0]` (ggml's
    /// `ne[0]`) is the row length, the fastest-varying dimension.
    pub fn dims(&self) -> &[u64] {
        &self.dims[..self.n_dims]
    }

    /// The element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// The offset of the data relative to the data section, as stored.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The number of elements (the product of the dimensions; 1 for a tensor
    /// with no dimensions).
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// The size of the data in bytes.
    pub fn size(&self) -> usize {
        self.data.len()
    }

    /// The data, borrowed from the file.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

impl fmt::Debug for TensorInfo<'_> {
    /// Everything but the data, whose length is given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorInfo")
            .field("name", &self.name)
            .field("dims", &self.dims())
            .field("type", &self.ty)
            .field("offset", &self.offset)
            .field("size", &self.data.len())
            .finish()
    }
}

/// Validates a tensor's dimensions and type and returns its element count
/// and byte size. Shared by the reader and the writer.
pub(crate) fn tensor_geometry(
    name: &str,
    dims: &[u64],
    ty_id: u32,
) -> Result<(GgmlType, u64, u64)> {
    let overflow = || GgufError::SizeOverflow {
        tensor: name.to_string(),
        dims: dims.to_vec(),
    };
    let mut n: u64 = 1;
    for (i, &d) in dims.iter().enumerate() {
        if d == 0 {
            return Err(GgufError::ZeroDim {
                tensor: name.to_string(),
                dim: i,
            });
        }
        n = n.checked_mul(d).ok_or_else(overflow)?;
    }
    // ggml counts elements and bytes in int64_t.
    if n > i64::MAX as u64 {
        return Err(overflow());
    }
    let ty = GgmlType::from_id(ty_id).ok_or_else(|| GgufError::UnknownTensorType {
        tensor: name.to_string(),
        id: ty_id,
        name: GgmlType::name_of_id(ty_id),
    })?;
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % ty.block_size() as u64 != 0 {
        return Err(GgufError::RowNotBlockMultiple {
            tensor: name.to_string(),
            ty,
            ne0,
        });
    }
    let blocks = n / ty.block_size() as u64;
    let size = blocks
        .checked_mul(ty.type_size() as u64)
        .filter(|&s| s <= i64::MAX as u64 && usize::try_from(s).is_ok())
        .ok_or_else(overflow)?;
    // The same size the way ggml computes it, per row.
    debug_assert_eq!(
        usize::try_from(ne0)
            .ok()
            .and_then(|ne0| ty.row_size(ne0))
            .map(|r| r as u64 * (n / ne0)),
        Some(size)
    );
    Ok((ty, n, size))
}

/// Rounds `x` up to a multiple of `align` (a power of two).
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// A position in the file being parsed; every read is bounds-checked.
struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Parser { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what,
                offset: self.pos as u64,
                needed: n as u64,
                file_len: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(<u32 as Scalar>::read_le(self.take(4, what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(<u64 as Scalar>::read_le(self.take(8, what)?))
    }

    /// A length-prefixed UTF-8 string.
    fn string(&mut self, what: &'static str) -> Result<&'a str> {
        let at = self.pos;
        let len = self.u64(what)?;
        let remaining = self.remaining();
        let n = usize::try_from(len)
            .ok()
            .filter(|&n| n <= remaining)
            .ok_or(GgufError::LengthOutOfBounds {
                what,
                offset: at as u64,
                len,
                remaining: remaining as u64,
            })?;
        let start = self.pos;
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes).map_err(|e| GgufError::InvalidUtf8 {
            what,
            offset: (start + e.valid_up_to()) as u64,
        })
    }

    /// A count of entries at least `min_size` bytes each; errors if the rest
    /// of the file cannot hold that many.
    fn count(&mut self, what: &'static str, min_size: u64) -> Result<u64> {
        let at = self.pos;
        let count = self.u64(if what == "tensor" {
            "tensor count"
        } else {
            "metadata count"
        })?;
        self.check_count(what, at, count, min_size)?;
        Ok(count)
    }

    fn check_count(&self, what: &'static str, at: usize, count: u64, min_size: u64) -> Result<()> {
        let max = self.remaining() as u64 / min_size;
        if count > max {
            return Err(GgufError::CountTooLarge {
                what,
                offset: at as u64,
                count,
                max,
            });
        }
        Ok(())
    }

    fn parse(mut self) -> Result<GgufFile<'a>> {
        let magic = self.take(4, "magic")?;
        if magic != MAGIC {
            let mut found = [0u8; 4];
            found.copy_from_slice(magic);
            return Err(GgufError::BadMagic { found });
        }
        let version = self.u32("version")?;
        match version {
            2 | 3 => {}
            v if v & 0xffff == 0 && matches!(v.swap_bytes(), 1..=3) => {
                return Err(GgufError::BigEndian {
                    version: v.swap_bytes(),
                });
            }
            v => return Err(GgufError::UnsupportedVersion { version: v }),
        }
        let n_tensors_at = self.pos;
        let n_tensors = self.count("tensor", MIN_TENSOR_INFO_SIZE)?;
        let n_kv = self.count("metadata", MIN_KV_SIZE)?;

        let metadata = self.metadata(n_kv)?;
        // Now that the metadata is known, the tensor infos must fit in what
        // is left.
        self.check_count("tensor", n_tensors_at, n_tensors, MIN_TENSOR_INFO_SIZE)?;

        let mut raw = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors as usize {
            let info_at = self.pos as u64;
            let t = self.tensor_info()?;
            if tensor_index.insert(t.name, i).is_some() {
                return Err(GgufError::DuplicateTensor {
                    tensor: t.name.to_string(),
                    offset: Some(info_at),
                });
            }
            raw.push(t);
        }

        let alignment = match metadata.get(ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT as u64,
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(Value::U32(a)) => {
                return Err(GgufError::BadAlignment {
                    alignment: (*a).into(),
                });
            }
            Some(v) => {
                return Err(GgufError::AlignmentType {
                    found: v.type_description(),
                });
            }
        };
        let header_end = self.pos as u64;
        // The aligned end of the header can lie past the end of a file
        // without tensors; then the data section is empty. (It cannot
        // overflow: the header is inside a slice, at most isize::MAX bytes,
        // and the alignment is at most 2^31.)
        let data_offset = align_up(header_end, alignment)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(GgufError::Truncated {
                what: "data section",
                offset: header_end,
                needed: alignment,
                file_len: self.buf.len() as u64,
            })?;
        let data = self.buf.get(data_offset..).unwrap_or(&[]);

        let mut tensors = Vec::with_capacity(raw.len());
        for t in raw {
            if t.offset % alignment != 0 {
                return Err(GgufError::MisalignedTensor {
                    tensor: t.name.to_string(),
                    offset: t.offset,
                    alignment,
                });
            }
            let out_of_bounds = || GgufError::TensorOutOfBounds {
                tensor: t.name.to_string(),
                offset: t.offset,
                size: t.size,
                data_len: data.len() as u64,
            };
            let end = t.offset.checked_add(t.size).ok_or_else(out_of_bounds)?;
            if end > data.len() as u64 {
                return Err(out_of_bounds());
            }
            tensors.push(TensorInfo {
                name: t.name,
                n_dims: t.n_dims,
                dims: t.dims,
                ty: t.ty,
                offset: t.offset,
                n_elements: t.n_elements,
                data: &data[t.offset as usize..end as usize],
            });
        }

        // No two tensors may share bytes.
        let mut by_offset: Vec<&TensorInfo<'a>> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for w in by_offset.windows(2) {
            if w[0].offset + w[0].size() as u64 > w[1].offset {
                return Err(GgufError::OverlappingTensors {
                    first: w[0].name.to_string(),
                    second: w[1].name.to_string(),
                });
            }
        }

        Ok(GgufFile {
            bytes: self.buf,
            version,
            alignment: alignment as usize,
            data_offset,
            metadata,
            tensors,
            tensor_index,
        })
    }

    fn metadata(&mut self, n_kv: u64) -> Result<Metadata<'a>> {
        // `n_kv` was checked against the file size, so these are bounded.
        let mut entries = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv as usize {
            let key_at = self.pos as u64;
            let key = self.string("metadata key")?;
            let type_at = self.pos as u64;
            let type_id = self.u32("metadata value type")?;
            let value = self.value(key, type_id, type_at, 0)?;
            match index.entry(key) {
                Entry::Occupied(_) => {
                    return Err(GgufError::DuplicateKey {
                        key: key.to_string(),
                        offset: Some(key_at),
                    });
                }
                Entry::Vacant(e) => {
                    e.insert(i);
                }
            }
            entries.push((key, value));
        }
        Ok(Metadata { entries, index })
    }

    fn value_type(&self, key: &str, id: u32, at: u64) -> Result<ValueType> {
        ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.to_string(),
            offset: at,
            id,
        })
    }

    /// A value of type `type_id` (read at `type_at`) inside `depth` arrays.
    fn value(&mut self, key: &str, type_id: u32, type_at: u64, depth: usize) -> Result<Value<'a>> {
        let ty = self.value_type(key, type_id, type_at)?;
        Ok(match ty {
            ValueType::String => Value::String(Cow::Borrowed(self.string("metadata string")?)),
            ValueType::Array => Value::Array(self.array(key, depth + 1)?),
            _ => {
                let at = self.pos as u64;
                let size = ty.fixed_size().unwrap_or(0);
                let b = self.take(size, "metadata value")?;
                if ty == ValueType::Bool && b[0] > 1 {
                    return Err(GgufError::InvalidBool {
                        key: key.to_string(),
                        offset: at,
                        byte: b[0],
                    });
                }
                decode_scalar(ty, b).ok_or(GgufError::UnknownValueType {
                    key: key.to_string(),
                    offset: type_at,
                    id: type_id,
                })?
            }
        })
    }

    /// An array (element type, length, elements) at nesting level `depth`
    /// (1 for an array that is a metadata value).
    fn array(&mut self, key: &str, depth: usize) -> Result<Array<'a>> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::NestingTooDeep {
                key: key.to_string(),
                offset: self.pos as u64,
                max: MAX_ARRAY_DEPTH,
            });
        }
        let elem_at = self.pos as u64;
        let elem_id = self.u32("array element type")?;
        let elem = self.value_type(key, elem_id, elem_at)?;
        let len_at = self.pos as u64;
        let len = self.u64("array length")?;
        let remaining = self.remaining() as u64;
        // Every element takes at least `min_encoded_size` bytes, so this bounds
        // all allocation below by the size of the file.
        if len > remaining / elem.min_encoded_size() as u64 {
            return Err(GgufError::LengthOutOfBounds {
                what: "array",
                offset: len_at,
                len,
                remaining,
            });
        }
        let n = len as usize;
        Ok(match elem {
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(Cow::Borrowed(self.string("metadata string")?));
                }
                Array::strings_raw(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array(key, depth + 1)?);
                }
                Array::from_arrays(v)
            }
            _ => {
                let size = elem.fixed_size().unwrap_or(1);
                let at = self.pos;
                let bytes = self.take(n * size, "array data")?;
                if elem == ValueType::Bool {
                    if let Some(i) = bytes.iter().position(|&b| b > 1) {
                        return Err(GgufError::InvalidBool {
                            key: key.to_string(),
                            offset: (at + i) as u64,
                            byte: bytes[i],
                        });
                    }
                }
                Array::scalars_raw(elem, n, bytes)
            }
        })
    }

    fn tensor_info(&mut self) -> Result<RawTensor<'a>> {
        let at = self.pos as u64;
        let name = self.string("tensor name")?;
        if name.len() > MAX_TENSOR_NAME_LEN {
            return Err(GgufError::TensorNameTooLong {
                tensor: name.to_string(),
                offset: Some(at),
                len: name.len() as u64,
            });
        }
        let n_dims = self.u32("tensor dimension count")?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                tensor: name.to_string(),
                offset: Some(at),
                n_dims: n_dims.into(),
            });
        }
        let n_dims = n_dims as usize;
        let mut dims = [1u64; MAX_DIMS];
        for d in &mut dims[..n_dims] {
            *d = self.u64("tensor dimension")?;
        }
        let ty_id = self.u32("tensor type")?;
        let offset = self.u64("tensor offset")?;
        let (ty, n_elements, size) = tensor_geometry(name, &dims[..n_dims], ty_id)?;
        Ok(RawTensor {
            name,
            n_dims,
            dims,
            ty,
            offset,
            n_elements,
            size,
        })
    }
}

/// A tensor info before its data is located.
struct RawTensor<'a> {
    name: &'a str,
    n_dims: usize,
    dims: [u64; MAX_DIMS],
    ty: GgmlType,
    offset: u64,
    n_elements: u64,
    size: u64,
}
