//! GGUF files: a zero-copy reader, a memory-mapped owner and a writer.
//!
//! GGUF (ggml's model format) is a header — magic `GGUF`, version, tensor
//! count, metadata count, typed key-value metadata, tensor infos — followed by
//! a data section that starts at the end of the header rounded up to the
//! alignment. See ggml's `docs/gguf.md`.
//!
//! * [`GgufFile::parse`] reads a file held in memory and borrows from it.
//! * [`MappedGguf::open`] maps a file and parses it once.
//! * [`GgufWriter`] builds version-3 files.
//!
//! # What is accepted
//!
//! Versions 2 and 3, little-endian (version 1, with 32-bit lengths, and
//! big-endian files are refused with a named error). Parsing checks
//! everything up front with checked arithmetic, and every problem is a
//! [`GgufError`] naming the place (byte offset, key or tensor name); hostile
//! input never panics, and nothing is allocated from a count in the file
//! beyond what the rest of the file could actually hold.
//!
//! Choices where the specification and ggml leave room:
//!
//! * `general.alignment` must be a `UINT32` that is a nonzero power of two
//!   (ggml's and the `gguf` Python package's rule; the specification's "a
//!   multiple of 8" is not enforced, so 1, 2 and 4 are accepted as ggml
//!   accepts them). Default [`DEFAULT_ALIGNMENT`].
//! * Tensors may appear in any order in the data section (ggml insists on
//!   file order); each must start at a multiple of the alignment, lie inside
//!   the data section, and overlap no other tensor. Padding after the last
//!   tensor is not required.
//! * A tensor has at most [`MAX_DIMS`] dimensions, none of them zero, and an
//!   element count and byte size that fit in `i64` (as in ggml). A tensor
//!   with no dimensions is a scalar with one element, as in ggml.
//! * Tensor names are at most [`MAX_TENSOR_NAME_LEN`] bytes (ggml's
//!   `GGML_MAX_NAME` including its NUL), unique, and UTF-8. Metadata keys are
//!   unique and UTF-8.
//! * Arrays may nest (ggml itself does not read nested arrays) up to
//!   [`MAX_ARRAY_DEPTH`] levels.
//! * Only tensor types that `spinel_quant::GgmlType` supports are accepted;
//!   others are refused by name ([`GgufError::UnknownTensorType`]).

mod error;
mod mmap;
mod reader;
mod value;
mod writer;

pub use error::GgufError;
pub use mmap::MappedGguf;
pub(crate) use mmap::page_size;
pub use reader::{GgufFile, Metadata, TensorInfo};
pub use value::{Array, Scalar, Value, ValueType};
pub use writer::GgufWriter;

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The alignment of files that do not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// The metadata key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// The longest tensor name, in bytes (ggml's `GGML_MAX_NAME` is 64 including
/// the terminating NUL).
pub const MAX_TENSOR_NAME_LEN: usize = 63;
/// How deep arrays of arrays may nest; an array that is a metadata value is
/// at depth 1.
pub const MAX_ARRAY_DEPTH: usize = 8;
