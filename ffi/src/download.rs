//! Model download for every language: the runtime's resumable, checked,
//! atomic download ([`spinel_runtime::download`]) on its own thread,
//! reporting to a foreign listener, with a handle to cancel or wait.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use spinel_runtime::download::{DownloadError, download};

use crate::{Finished, SpinelError, call_foreign, spawn_job};

/// Told how a download goes.
#[uniffi::export(with_foreign)]
pub trait DownloadListener: Send + Sync {
    /// Bytes on the disk so far (a resumed download starts above 0) and the
    /// file's size when the server says it.
    fn on_progress(&self, downloaded_bytes: u64, total_bytes: Option<u64>);
    /// The file is at its destination, checked.
    fn on_complete(&self);
    /// `Download` (network or HTTP: call again to resume), `ChecksumMismatch`,
    /// `Cancelled` or `Io`.
    fn on_error(&self, error: SpinelError);
}

/// A download in progress.
#[derive(Debug, Default, uniffi::Object)]
pub struct DownloadHandle {
    cancel: AtomicBool,
    finished: Finished,
}

#[uniffi::export]
impl DownloadHandle {
    /// Stops the download; the part on the disk is kept, so the next
    /// `download_model` of the same destination resumes it.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }

    pub fn is_finished(&self) -> bool {
        self.finished.is_set()
    }

    /// Blocks until the listener has been told the end.
    pub fn wait_for_completion(&self) {
        self.finished.wait();
    }
}

impl From<DownloadError> for SpinelError {
    fn from(e: DownloadError) -> Self {
        let reason = e.to_string();
        match e {
            DownloadError::Checksum { .. } => SpinelError::ChecksumMismatch { reason },
            DownloadError::Cancelled => SpinelError::Cancelled { reason },
            DownloadError::Io { .. } => SpinelError::Io { reason },
            DownloadError::BadUrl(_) => SpinelError::InvalidArgument { reason },
            DownloadError::Http { .. }
            | DownloadError::Network(_)
            | DownloadError::Truncated { .. }
            | DownloadError::TooLarge { .. } => SpinelError::Download { reason },
        }
    }
}

/// Downloads `url` to `destination` on a thread of its own: the bytes go
/// to `destination.part` (resumed with a `Range` request if one is there),
/// the SHA-256 is checked when `expected_sha256` (hex) is given, and only a
/// complete, checked file is renamed to `destination`.
#[uniffi::export]
pub fn download_model(
    url: String,
    destination: String,
    expected_sha256: Option<String>,
    listener: Arc<dyn DownloadListener>,
) -> Result<Arc<DownloadHandle>, SpinelError> {
    let handle = Arc::new(DownloadHandle::default());
    let (job, done) = (Arc::clone(&handle), Arc::clone(&handle));
    let dest = PathBuf::from(destination);
    spawn_job(
        "spinel-download",
        listener,
        move |listener| {
            download(
                &url,
                &dest,
                expected_sha256.as_deref(),
                &job.cancel,
                |d, t| {
                    // A throwing listener must not stop the download.
                    let _ = call_foreign(|| listener.on_progress(d, t));
                },
            )
            .map_err(SpinelError::from)
        },
        |listener, outcome| match outcome {
            Ok(()) => listener.on_complete(),
            Err(e) => listener.on_error(e),
        },
        move || done.finished.set(),
    )?;
    Ok(handle)
}
