//! A memory-mapped, parsed GGUF file that owns its mapping.

use std::fs::File;
use std::ops::Range;
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
    /// Kept open to advise the kernel about its page cache.
    fd: File,
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
        Ok(MappedGguf {
            file,
            map,
            path,
            fd: f,
        })
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

    /// Asks the kernel to start reading bytes `range` of the file into the
    /// page cache in the background (`MADV_WILLNEED`). Advice only: errors
    /// are ignored.
    pub fn prefetch(&self, range: Range<usize>) {
        let Some(range) = self.clamp(range) else {
            return;
        };
        #[cfg(unix)]
        let _ = self
            .map
            .advise_range(memmap2::Advice::WillNeed, range.start, range.len());
    }

    /// Gives back the memory of the whole pages inside bytes `range`: they
    /// are unmapped from this process (`MADV_DONTNEED`) and dropped from the
    /// page cache where nothing else maps them (`POSIX_FADV_DONTNEED`). The
    /// next read of those bytes reads them from the file again. Errors are
    /// ignored (the memory then just stays).
    pub fn release(&self, range: Range<usize>) {
        let Some(range) = self.clamp(range) else {
            return;
        };
        // Whole pages only: a partial page may hold bytes still in use
        // (they would be read again, but there is no need).
        let page = page_size();
        let start = range.start.div_ceil(page) * page;
        let end = range.end / page * page;
        if start >= end {
            return;
        }
        #[cfg(unix)]
        {
            // SAFETY: the mapping is a read-only shared mapping of a file
            // that does not change while mapped (`open`'s contract), so
            // dropping its pages cannot change what any slice of it reads:
            // the next access faults the same bytes back in from the file.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: plain system call on a file descriptor this value owns;
            // it only drops clean page-cache pages (no memory is touched).
            unsafe {
                libc::posix_fadvise(
                    self.fd.as_raw_fd(),
                    start as libc::off_t,
                    (end - start) as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                );
            }
        }
    }

    /// Bytes of the mapping now in this process's memory (`mincore`), or
    /// `None` where that cannot be asked.
    pub fn resident_bytes(&self) -> Option<u64> {
        #[cfg(unix)]
        {
            let page = page_size();
            let len = self.map.len();
            if len == 0 {
                return Some(0);
            }
            let mut vec = vec![0u8; len.div_ceil(page)];
            // SAFETY: the mapping is `len` bytes from a page-aligned address
            // (mmap's); `vec` has one byte per page of it.
            let rc = unsafe {
                libc::mincore(
                    self.map.as_ptr() as *mut libc::c_void,
                    len,
                    vec.as_mut_ptr().cast(),
                )
            };
            if rc != 0 {
                return None;
            }
            let pages = vec.iter().filter(|&&b| b & 1 != 0).count();
            Some((pages * page).min(len) as u64)
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    /// Reads bytes `range` of the file with ordinary reads (not through the
    /// mapping) and returns the speed in bytes per second; the pages are
    /// then dropped from the cache again. For estimating how fast streamed
    /// weights arrive. `None` on a read error or an empty range.
    pub fn measure_read_speed(&self, range: Range<usize>) -> Option<f64> {
        let range = self.clamp(range)?;
        // From the disk, not from the page cache.
        self.release(range.clone());
        let mut buf = vec![0u8; (1 << 20).min(range.len())];
        let start = std::time::Instant::now();
        let mut pos = range.start;
        while pos < range.end {
            let n = buf.len().min(range.end - pos);
            read_at(&self.fd, &mut buf[..n], pos as u64).ok()?;
            pos += n;
        }
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        self.release(range.clone());
        Some(range.len() as f64 / secs)
    }

    fn clamp(&self, range: Range<usize>) -> Option<Range<usize>> {
        let r = range.start.min(self.map.len())..range.end.min(self.map.len());
        (!r.is_empty()).then_some(r)
    }
}

/// The system's page size (4 KiB where it cannot be asked).
pub fn page_size() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 {
            return p as usize;
        }
    }
    4096
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(not(unix))]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = f;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
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
