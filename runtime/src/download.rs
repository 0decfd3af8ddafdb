//! Fetching a model file over HTTP(S): resumable, checked, atomic.
//!
//! The bytes go to `DEST.part`. An interrupted download (a dropped
//! connection, a cancel, the app killed) leaves the part, and the next call
//! asks for the rest with a `Range` request (a server that answers the whole
//! file instead starts it over). When the body is complete its SHA-256 is
//! checked against the expected one, the part is flushed to the disk and
//! renamed to `DEST`: a truncated, corrupted or cancelled download never
//! appears at `DEST`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Why a download failed.
#[derive(Debug)]
pub enum DownloadError {
    /// Not an `http://` or `https://` URL, or a malformed one.
    BadUrl(String),
    /// The server answered with an error status.
    Http { status: u16, url: String },
    /// The connection failed or dropped; the part is kept for a resume.
    Network(String),
    /// The body ended before the length the server announced; the part is
    /// kept for a resume.
    Truncated { got: u64, expected: u64 },
    /// The file is complete but its SHA-256 is not the expected one; the
    /// part is deleted.
    Checksum { expected: String, got: String },
    /// Stopped by the caller; the part is kept for a resume.
    Cancelled,
    /// Reading or writing the local file failed.
    Io { path: PathBuf, reason: String },
    /// A [`fetch`] body is longer than its limit.
    TooLarge { limit: u64 },
}

impl fmt::Display for DownloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownloadError::BadUrl(u) => write!(f, "not an http(s) URL: {u:?}"),
            DownloadError::Http { status, url } => write!(f, "HTTP {status} from {url}"),
            DownloadError::Network(e) => write!(f, "network error (resumable): {e}"),
            DownloadError::Truncated { got, expected } => write!(
                f,
                "the download ended after {got} of {expected} bytes (resumable)"
            ),
            DownloadError::Checksum { expected, got } => write!(
                f,
                "SHA-256 mismatch: expected {expected}, the file has {got}"
            ),
            DownloadError::Cancelled => write!(f, "the download was cancelled"),
            DownloadError::Io { path, reason } => write!(f, "{}: {reason}", path.display()),
            DownloadError::TooLarge { limit } => {
                write!(f, "the body is larger than the {limit}-byte limit")
            }
        }
    }
}

impl std::error::Error for DownloadError {}

/// Idle time after which a stalled connection counts as dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most time between two progress reports.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Fetches a small file (an image a request points at) into memory: at
/// most `limit` bytes, within `timeout` in all, following redirects.
pub fn fetch(url: &str, limit: u64, timeout: Duration) -> Result<Vec<u8>, DownloadError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(DownloadError::BadUrl(url.to_string()));
    }
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    let resp = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(status, _)) => {
            return Err(DownloadError::Http {
                status,
                url: url.to_string(),
            });
        }
        Err(e) => return Err(DownloadError::Network(e.to_string())),
    };
    let mut body = Vec::new();
    resp.into_reader()
        .take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|e| DownloadError::Network(e.to_string()))?;
    if body.len() as u64 > limit {
        return Err(DownloadError::TooLarge { limit });
    }
    Ok(body)
}

/// `DEST.part`: where a file is written before it is renamed to `DEST`
/// (downloads, saved sessions).
pub fn part_path(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

/// Downloads `url` to `dest` (see the module docs), calling `progress`
/// with `(bytes so far, total if known)` as it goes and checking
/// `cancel` between reads. `expected_sha256` is hex (any case).
pub fn download(
    url: &str,
    dest: &Path,
    expected_sha256: Option<&str>,
    cancel: &AtomicBool,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<(), DownloadError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(DownloadError::BadUrl(url.to_string()));
    }
    let part = part_path(dest);
    let io = |e: std::io::Error| DownloadError::Io {
        path: part.clone(),
        reason: e.to_string(),
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&part)
        .map_err(io)?;
    let have = file.metadata().map_err(io)?.len();
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(READ_TIMEOUT)
        .timeout_read(READ_TIMEOUT)
        .build();
    let mut req = agent.get(url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        // The part already holds the whole file: check it.
        Err(ureq::Error::Status(416, _)) if have > 0 => {
            return finish(file, &part, dest, expected_sha256);
        }
        Err(ureq::Error::Status(status, _)) => {
            return Err(DownloadError::Http {
                status,
                url: url.to_string(),
            });
        }
        Err(e) => return Err(DownloadError::Network(e.to_string())),
    };
    let resumed = have > 0 && resp.status() == 206;
    let start = if resumed {
        have
    } else {
        // A whole file (the server ignored the range, or there was none).
        file.set_len(0).map_err(io)?;
        0
    };
    let length: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let total = length.map(|n| n + start);
    let mut body = resp.into_reader();
    let mut done = start;
    progress(done, total);
    let mut buf = vec![0u8; 1 << 16];
    let mut last = Instant::now();
    loop {
        if cancel.load(Ordering::Acquire) {
            return Err(DownloadError::Cancelled);
        }
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(DownloadError::Network(e.to_string())),
        };
        file.write_all(&buf[..n]).map_err(io)?;
        done += n as u64;
        if last.elapsed() >= PROGRESS_EVERY {
            progress(done, total);
            last = Instant::now();
        }
    }
    progress(done, total);
    if let Some(expected) = total.filter(|&t| done < t) {
        return Err(DownloadError::Truncated {
            got: done,
            expected,
        });
    }
    finish(file, &part, dest, expected_sha256)
}

/// Checks the complete part's hash, syncs it and renames it to `dest`.
fn finish(
    mut file: File,
    part: &Path,
    dest: &Path,
    expected_sha256: Option<&str>,
) -> Result<(), DownloadError> {
    let io = |path: &Path, e: std::io::Error| DownloadError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(expected) = expected_sha256 {
        file.seek(SeekFrom::Start(0)).map_err(|e| io(part, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(|e| io(part, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if !got.eq_ignore_ascii_case(expected.trim()) {
            drop(file);
            let _ = std::fs::remove_file(part);
            return Err(DownloadError::Checksum {
                expected: expected.trim().to_ascii_lowercase(),
                got,
            });
        }
    }
    file.sync_all().map_err(|e| io(part, e))?;
    drop(file);
    std::fs::rename(part, dest).map_err(|e| io(dest, e))
}
