//! Writing the output file with [`GgufWriter`] while streaming tensor data.
//!
//! `GgufWriter` holds every tensor's bytes before it writes; a 16 GB model
//! converted that way needs 16 GB of memory. So the header comes from a
//! `GgufWriter` given the real metadata and tensor table but placeholder
//! data (slices of one zeroed buffer that is never read or written), and
//! the data section is then produced tensor by tensor, row batch by row
//! batch, straight into the file. The layout of the data section is fixed by
//! GGUF (each tensor at the next multiple of the alignment, in table order);
//! the finished file is re-opened and every tensor's offset and size checked
//! against what was streamed, so a disagreement cannot go unnoticed.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use spinel_quant::{GgmlType, Kernels};

use crate::gguf::{GgufWriter, MappedGguf, Value};

use super::checkpoint::Checkpoint;
use super::error::ConvertError;
use super::plan::OutTensor;
use super::{Progress, ProgressEvent};

type Result<T> = std::result::Result<T, ConvertError>;

/// Elements converted per batch (16 MiB of f32).
const BATCH_ELEMS: usize = 1 << 22;

/// Counts bytes and drops them.
struct Count(u64);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Passes the first `remaining` bytes on and drops the rest (without
/// reading them).
struct Prefix<'w, W: Write> {
    inner: &'w mut W,
    remaining: u64,
}

impl<W: Write> Write for Prefix<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        if n > 0 {
            self.inner.write_all(&buf[..n])?;
            self.remaining -= n as u64;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn align_up(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

/// Writes `kv` and `tensors` to `out` (through `out.part`, renamed at the
/// end, so a failed conversion leaves no half-written `out`).
pub fn write(
    out: &Path,
    kv: &[(String, Value<'static>)],
    tensors: &[OutTensor],
    ckpt: &Checkpoint,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<u64> {
    let max_bytes = tensors.iter().map(OutTensor::n_bytes).max().unwrap_or(0);
    // calloc'd: its pages are never touched, so this costs address space,
    // not memory.
    let zeros = vec![0u8; max_bytes];
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.add_kv(k.as_str(), v.clone())?;
    }
    for t in tensors {
        w.add_tensor(t.name.as_str(), &t.dims, t.ty, &zeros[..t.n_bytes()])?;
    }
    let alignment = w.alignment() as u64;
    let mut count = Count(0);
    w.write_to(&mut count).expect("counting cannot fail");
    let data_len: u64 = tensors
        .iter()
        .map(|t| align_up(t.n_bytes() as u64, alignment))
        .sum();
    let header_len = count.0 - data_len;

    let part = part_path(out);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConvertError::Io { path, source }
    };
    let result = (|| -> Result<()> {
        let f = File::create(&part).map_err(io_err(&part))?;
        let mut f = BufWriter::with_capacity(1 << 20, f);
        w.write_to(Prefix {
            inner: &mut f,
            remaining: header_len,
        })
        .map_err(io_err(&part))?;
        drop(w);

        let bytes_total: u64 = tensors.iter().map(|t| t.n_bytes() as u64).sum();
        let mut bytes_done = 0u64;
        let kernels = Kernels::get();
        let mut out_buf = Vec::new();
        let pad = vec![0u8; alignment as usize];
        for (index, t) in tensors.iter().enumerate() {
            let event = |bytes_done| Progress {
                event: ProgressEvent::Tensor,
                index,
                count: tensors.len(),
                name: &t.name,
                ty: t.ty,
                bytes_done,
                bytes_total,
            };
            progress(event(bytes_done));
            let row_len = t.row_len();
            let row_bytes =
                t.ty.row_size(row_len)
                    .expect("type chosen for this row length");
            let from_float = kernels.of(t.ty).from_float;
            let mut written = 0usize;
            t.produce(ckpt, BATCH_ELEMS, &mut |rows: &[f32]| -> Result<()> {
                let n_rows = rows.len() / row_len;
                out_buf.resize(n_rows * row_bytes, 0);
                convert_rows(from_float, t.ty, rows, row_len, &mut out_buf, row_bytes);
                f.write_all(&out_buf).map_err(io_err(&part))?;
                written += out_buf.len();
                bytes_done += out_buf.len() as u64;
                progress(Progress {
                    event: ProgressEvent::Bytes,
                    ..event(bytes_done)
                });
                Ok(())
            })?;
            assert_eq!(
                written,
                t.n_bytes(),
                "tensor {} produced a wrong size",
                t.name
            );
            let padding = (align_up(written as u64, alignment) - written as u64) as usize;
            f.write_all(&pad[..padding]).map_err(io_err(&part))?;
        }
        let f = f.into_inner().map_err(|e| ConvertError::Io {
            path: part.clone(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(io_err(&part))?;
        drop(f);
        verify_layout(&part, kv.len(), tensors, header_len, alignment)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, out).map_err(io_err(out))?;
    Ok(header_len + data_len)
}

/// Converts whole rows of f32 to `ty`, splitting big batches over threads.
fn convert_rows(
    from_float: fn(&[f32], &mut [u8]),
    ty: GgmlType,
    rows: &[f32],
    row_len: usize,
    out: &mut [u8],
    row_bytes: usize,
) {
    let n_rows = rows.len() / row_len;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Plain copies are memory-bound; only spread real conversions.
    if ty == GgmlType::F32 || threads == 1 || rows.len() < 1 << 16 || n_rows < 2 {
        for (src, dst) in rows
            .chunks_exact(row_len)
            .zip(out.chunks_exact_mut(row_bytes))
        {
            from_float(src, dst);
        }
        return;
    }
    let per = n_rows.div_ceil(threads);
    std::thread::scope(|s| {
        for (src, dst) in rows
            .chunks(per * row_len)
            .zip(out.chunks_mut(per * row_bytes))
        {
            s.spawn(move || {
                for (r, o) in src
                    .chunks_exact(row_len)
                    .zip(dst.chunks_exact_mut(row_bytes))
                {
                    from_float(r, o);
                }
            });
        }
    });
}

fn part_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    out.with_file_name(name)
}

/// Re-reads the written header and checks that it puts every tensor where
/// the data was streamed.
fn verify_layout(
    path: &Path,
    n_kv: usize,
    tensors: &[OutTensor],
    header_len: u64,
    alignment: u64,
) -> Result<()> {
    // SAFETY: `path` is the `.part` file this conversion just wrote and
    // closed; nothing else writes it before it is renamed.
    let m = unsafe { MappedGguf::open(path) }?;
    let f = m.file();
    let mismatch = |what: String| ConvertError::Io {
        path: path.to_path_buf(),
        source: io::Error::other(format!("written file does not match its header: {what}")),
    };
    if f.data_offset() as u64 != header_len {
        return Err(mismatch(format!(
            "data section at {}, streamed at {header_len}",
            f.data_offset()
        )));
    }
    if f.metadata().len() != n_kv || f.tensors().len() != tensors.len() {
        return Err(mismatch("entry counts".into()));
    }
    let mut offset = 0u64;
    for (info, t) in f.tensors().iter().zip(tensors) {
        if info.name() != t.name || info.offset() != offset || info.size() != t.n_bytes() {
            return Err(mismatch(format!("tensor {:?}", t.name)));
        }
        offset += align_up(t.n_bytes() as u64, alignment);
    }
    Ok(())
}
