//! The one error type of GGUF reading, writing and metadata access.

use std::fmt;
use std::io;
use std::path::PathBuf;

use spinel_quant::GgmlType;

/// What went wrong with a GGUF file, and where.
///
/// Offsets are byte offsets from the start of the file. Names read from the
/// file (keys, tensor names) are shown escaped (`{:?}`), so a hostile name
/// cannot forge terminal output.
#[derive(Debug)]
#[non_exhaustive]
pub enum GgufError {
    /// Opening, mapping or writing a file failed.
    Io { path: PathBuf, source: io::Error },
    /// The file ends inside `what`, which starts at `offset` and needs
    /// `needed` bytes.
    Truncated {
        what: &'static str,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    /// The file does not start with `GGUF`.
    BadMagic { found: [u8; 4] },
    /// A GGUF version other than 2 or 3 (version 1 used 32-bit lengths and is
    /// not read).
    UnsupportedVersion { version: u32 },
    /// A big-endian GGUF file (version field byte-swapped); only
    /// little-endian files are read.
    BigEndian { version: u32 },
    /// A string or array length at `offset` larger than the rest of the file
    /// could hold.
    LengthOutOfBounds {
        what: &'static str,
        offset: u64,
        len: u64,
        remaining: u64,
    },
    /// The metadata or tensor count at `offset` is more than the rest of the
    /// file could hold (`max` entries of the smallest possible size).
    CountTooLarge {
        what: &'static str,
        offset: u64,
        count: u64,
        max: u64,
    },
    /// A key, string or tensor name that is not UTF-8.
    InvalidUtf8 { what: &'static str, offset: u64 },
    /// A metadata value type id that GGUF does not define.
    UnknownValueType { key: String, offset: u64, id: u32 },
    /// A bool stored as a byte other than 0 or 1.
    InvalidBool { key: String, offset: u64, byte: u8 },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`](super::MAX_ARRAY_DEPTH).
    NestingTooDeep {
        key: String,
        offset: u64,
        max: usize,
    },
    /// A metadata key that occurs twice (`offset`: where in the file; `None`
    /// when the writer was given it).
    DuplicateKey { key: String, offset: Option<u64> },
    /// `general.alignment` is not a `UINT32`.
    AlignmentType { found: String },
    /// `general.alignment` is not a nonzero power of two.
    BadAlignment { alignment: u64 },
    /// A tensor name longer than [`MAX_TENSOR_NAME_LEN`](super::MAX_TENSOR_NAME_LEN)
    /// bytes (ggml's `GGML_MAX_NAME` limit).
    TensorNameTooLong {
        tensor: String,
        offset: Option<u64>,
        len: u64,
    },
    /// A tensor name that occurs twice.
    DuplicateTensor { tensor: String, offset: Option<u64> },
    /// More than [`MAX_DIMS`](super::MAX_DIMS) dimensions.
    TooManyDims {
        tensor: String,
        offset: Option<u64>,
        n_dims: u64,
    },
    /// A dimension of size zero.
    ZeroDim { tensor: String, dim: usize },
    /// A dimension, or the product of the dimensions (the element count), or
    /// the byte size, beyond what ggml can address (`i64::MAX`) or this
    /// machine's `usize`.
    SizeOverflow { tensor: String, dims: Vec<u64> },
    /// A tensor type id that Spinel does not support (`name` is ggml's name
    /// for it, when ggml defines one).
    UnknownTensorType {
        tensor: String,
        id: u32,
        name: Option<&'static str>,
    },
    /// The row length `ne0` is not a multiple of the type's block size.
    RowNotBlockMultiple {
        tensor: String,
        ty: GgmlType,
        ne0: u64,
    },
    /// Tensor data that does not lie inside the data section.
    TensorOutOfBounds {
        tensor: String,
        offset: u64,
        size: u64,
        data_len: u64,
    },
    /// A tensor offset that is not a multiple of the alignment.
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    /// Two tensors whose data overlap.
    OverlappingTensors { first: String, second: String },
    /// Tensor data handed to the writer whose length does not match the
    /// tensor's type and dimensions.
    TensorDataSize {
        tensor: String,
        expected: u64,
        actual: u64,
    },
    /// A metadata key that is not there.
    MissingKey { key: String },
    /// A metadata value of another type than the getter asked for.
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufError::*;
        match self {
            Io { path, source } => write!(f, "{}: {source}", path.display()),
            Truncated {
                what,
                offset,
                needed,
                file_len,
            } => write!(
                f,
                "truncated file: {what} at offset {offset} needs {needed} bytes, \
                 but the file ends at {file_len}"
            ),
            BadMagic { found } => write!(
                f,
                "not a GGUF file: magic is {:?}, expected \"GGUF\"",
                String::from_utf8_lossy(found)
            ),
            UnsupportedVersion { version } => write!(
                f,
                "unsupported GGUF version {version} (only versions 2 and 3 are read)"
            ),
            BigEndian { version } => write!(
                f,
                "big-endian GGUF file (version {version}); only little-endian files are read"
            ),
            LengthOutOfBounds {
                what,
                offset,
                len,
                remaining,
            } => write!(
                f,
                "{what} at offset {offset} claims length {len}, \
                 but only {remaining} bytes follow in the file"
            ),
            CountTooLarge {
                what,
                offset,
                count,
                max,
            } => write!(
                f,
                "{what} count {count} at offset {offset} is absurd: \
                 the rest of the file can hold at most {max}"
            ),
            InvalidUtf8 { what, offset } => {
                write!(f, "{what} at offset {offset} is not valid UTF-8")
            }
            UnknownValueType { key, offset, id } => write!(
                f,
                "metadata {key:?}: unknown value type {id} at offset {offset}"
            ),
            InvalidBool { key, offset, byte } => write!(
                f,
                "metadata {key:?}: bool at offset {offset} is {byte}, not 0 or 1"
            ),
            NestingTooDeep { key, offset, max } => write!(
                f,
                "metadata {key:?}: arrays nested more than {max} deep at offset {offset}"
            ),
            DuplicateKey { key, offset } => {
                write!(f, "duplicate metadata key {key:?}{}", At(*offset))
            }
            AlignmentType { found } => {
                write!(f, "general.alignment must be a UINT32, found {found}")
            }
            BadAlignment { alignment } => write!(
                f,
                "general.alignment {alignment} is not a nonzero power of two"
            ),
            TensorNameTooLong {
                tensor,
                offset,
                len,
            } => write!(
                f,
                "tensor name{} is {len} bytes, more than the {} ggml allows: {tensor:?}",
                At(*offset),
                super::MAX_TENSOR_NAME_LEN
            ),
            DuplicateTensor { tensor, offset } => {
                write!(f, "duplicate tensor {tensor:?}{}", At(*offset))
            }
            TooManyDims {
                tensor,
                offset,
                n_dims,
            } => write!(
                f,
                "tensor {tensor:?}{} has {n_dims} dimensions, at most {} are allowed",
                At(*offset),
                super::MAX_DIMS
            ),
            ZeroDim { tensor, dim } => write!(f, "tensor {tensor:?}: dimension {dim} is zero"),
            SizeOverflow { tensor, dims } => write!(
                f,
                "tensor {tensor:?}: dimensions {dims:?} overflow the element count or byte size"
            ),
            UnknownTensorType { tensor, id, name } => match name {
                Some(n) if n.starts_with("Q4_0_") => write!(
                    f,
                    "tensor {tensor:?}: type {n} (id {id}) is llama.cpp's old ARM-repacked \
                     Q4_0, which Spinel does not load; requantize the original model with \
                     `spinel quantize IN OUT.gguf --type q4_0` (Spinel's ARM kernels read plain \
                     Q4_0)"
                ),
                Some(n) => write!(
                    f,
                    "tensor {tensor:?}: type {n} (id {id}) is not supported by Spinel \
                     (see the README's compatibility table)"
                ),
                None => write!(f, "tensor {tensor:?}: unknown tensor type id {id}"),
            },
            RowNotBlockMultiple { tensor, ty, ne0 } => write!(
                f,
                "tensor {tensor:?}: row length {ne0} is not a multiple of the {ty} block size {}",
                ty.block_size()
            ),
            TensorOutOfBounds {
                tensor,
                offset,
                size,
                data_len,
            } => write!(
                f,
                "tensor {tensor:?}: data at offset {offset} with {size} bytes lies outside \
                 the {data_len}-byte data section"
            ),
            MisalignedTensor {
                tensor,
                offset,
                alignment,
            } => write!(
                f,
                "tensor {tensor:?}: data offset {offset} is not a multiple of the alignment {alignment}"
            ),
            OverlappingTensors { first, second } => {
                write!(f, "tensors {first:?} and {second:?} overlap")
            }
            TensorDataSize {
                tensor,
                expected,
                actual,
            } => write!(
                f,
                "tensor {tensor:?}: {actual} bytes of data given, its type and shape need {expected}"
            ),
            MissingKey { key } => write!(f, "metadata key {key:?} is missing"),
            WrongType {
                key,
                expected,
                found,
            } => write!(f, "metadata {key:?} is {found}, expected {expected}"),
        }
    }
}

/// Formats `" at offset N"` when there is an offset.
struct At(Option<u64>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(o) => write!(f, " at offset {o}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for GgufError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GgufError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
