//! A memory-mapped, parsed GGUF file that owns its mapping.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::GgufError;
use super::reader::GgufFile;

/// A GGUF file mapped into memory and parsed once.
///
/// Tensor data is never copied: [`GgufFile::tensors`] hand out slices of the
/// mapping. Get at the parsed file with [`MappedGguf::file`].
pub struct MappedGguf {
    // Field order matters: `file` borrows from `map`'s memory, and fields drop
    // in declaration order, so `file` goes first.
    file: GgufFile<'static>,
    map: Mmap,
    path: PathBuf,
}

impl MappedGguf {
    /// Maps and parses the GGUF file at `path`.
    ///
    /// # Safety
    ///
    /// The file must not be modified or truncated — by this process or any
    /// other — while the returned value (or anything borrowed from it) lives.
    /// A mapped file that changes underneath breaks the immutability that
    /// `&[u8]` promises (undefined behaviour), and a truncated one makes reads
    /// fault with `SIGBUS`. Model files that nothing writes to are fine.
    pub unsafe fn open(path: impl AsRef<Path>) -> Result<MappedGguf, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let f = File::open(&path).map_err(io)?;
        // SAFETY: the caller guarantees the file is not modified or truncated
        // while the mapping lives (this function's contract).
        let map = unsafe { Mmap::map(&f) }.map_err(io)?;
        // SAFETY: the slice covers exactly the mapping, which `Self` owns and
        // which stays at the same address when `Self` moves (an `Mmap` is a
        // pointer to memory the kernel owns). It is unmapped only when `Self`
        // drops, after `file` (field order). The `'static` never escapes:
        // `file()` hands out `&'s GgufFile<'s>` tied to a borrow of `self`, and
        // `GgufFile` is covariant with no interior mutability.
        let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
        let file = GgufFile::parse(bytes)?;
        Ok(MappedGguf { file, map, path })
    }

    /// The parsed file; its tensor data borrows from the mapping.
    pub fn file(&self) -> &GgufFile<'_> {
        &self.file
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The length of the file in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the file is empty (never true for a file that parsed).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl std::fmt::Debug for MappedGguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedGguf")
            .field("path", &self.path)
            .field("len", &self.map.len())
            .field("version", &self.file.version())
            .field("metadata", &self.file.metadata().len())
            .field("tensors", &self.file.tensors().len())
            .finish()
    }
}
