//! `download::download` against a local HTTP server (written here, with
//! `std::net`, so the test controls where the connection drops): a download
//! cut off midway resumes with a `Range` request; a wrong checksum, a
//! truncation and a cancel never leave a file at the destination.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use spinel_runtime::download::{DownloadError, download, part_path};

/// How the server answers.
#[derive(Clone, Copy)]
enum Mode {
    /// The first request gets this many bytes, then the connection drops;
    /// later ones are answered in full (honouring `Range`).
    CutFirstAt(usize),
    /// Every request: 16 KiB every 20 ms.
    Slow,
    /// Whole files only: `Range` ignored (a 200 with the whole body).
    NoRanges,
}

struct Server {
    url: String,
    /// The `Range` header of each request (`None` without one).
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

fn serve(body: Arc<Vec<u8>>, mode: Mode) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/model.gguf", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&ranges);
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.strip_prefix("Range: bytes=") {
                    range = v.trim().trim_end_matches('-').parse::<usize>().ok();
                }
            }
            seen.lock()
                .unwrap()
                .push(range.map(|r| format!("bytes={r}-")));
            let from = match mode {
                Mode::NoRanges => 0,
                _ => range.unwrap_or(0),
            };
            let rest = &body[from..];
            let head = if from > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
                    rest.len(),
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                )
            };
            let _ = stream.write_all(head.as_bytes());
            let _ = match mode {
                Mode::CutFirstAt(n) if i == 0 => stream.write_all(&rest[..n]),
                Mode::Slow => rest.chunks(16 << 10).try_for_each(|c| {
                    std::thread::sleep(Duration::from_millis(20));
                    stream.write_all(c)
                }),
                _ => stream.write_all(rest),
            };
        }
    });
    Server { url, ranges }
}

fn body() -> Arc<Vec<u8>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    Arc::new(
        (0..3 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect(),
    )
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("download-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_cut_off_download_resumes_with_a_range_request() {
    let body = body();
    let server = serve(Arc::clone(&body), Mode::CutFirstAt(1 << 20));
    let dir = scratch("resume");
    let dest = dir.join("model.gguf");
    let sum = sha256(&body);
    let no = AtomicBool::new(false);
    let err = download(&server.url, &dest, Some(&sum), &no, |_, _| {}).unwrap_err();
    assert!(
        matches!(err, DownloadError::Truncated { got, .. } if got == 1 << 20)
            || matches!(err, DownloadError::Network(_)),
        "{err}"
    );
    assert!(!dest.exists(), "a truncated download appeared");
    assert_eq!(std::fs::metadata(part_path(&dest)).unwrap().len(), 1 << 20);

    let mut seen = Vec::new();
    download(
        &server.url,
        &dest,
        Some(&sum.to_uppercase()),
        &no,
        |d, t| seen.push((d, t)),
    )
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), *body);
    assert!(!part_path(&dest).exists());
    let ranges = server.ranges.lock().unwrap().clone();
    assert_eq!(ranges, [None, Some(format!("bytes={}-", 1 << 20))]);
    // Progress starts where the part ended and reaches the total.
    let total = Some(body.len() as u64);
    assert_eq!(seen.first(), Some(&(1 << 20, total)));
    assert_eq!(seen.last(), Some(&(body.len() as u64, total)));
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));
}

#[test]
fn a_server_without_ranges_starts_over() {
    let body = body();
    let server = serve(Arc::clone(&body), Mode::NoRanges);
    let dir = scratch("noranges");
    let dest = dir.join("model.gguf");
    std::fs::write(part_path(&dest), &body[..1000]).unwrap();
    let no = AtomicBool::new(false);
    download(&server.url, &dest, Some(&sha256(&body)), &no, |_, _| {}).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), *body);
}

#[test]
fn a_wrong_checksum_leaves_nothing() {
    let body = body();
    let server = serve(Arc::clone(&body), Mode::NoRanges);
    let dir = scratch("checksum");
    let dest = dir.join("model.gguf");
    let no = AtomicBool::new(false);
    let wrong = sha256(b"something else");
    let err = download(&server.url, &dest, Some(&wrong), &no, |_, _| {}).unwrap_err();
    assert!(matches!(err, DownloadError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains(&wrong), "{err}");
    assert!(!dest.exists() && !part_path(&dest).exists());
}

#[test]
fn a_cancelled_download_never_appears_and_resumes_later() {
    let body = body();
    let server = serve(Arc::clone(&body), Mode::Slow);
    let dir = scratch("cancel");
    let dest = dir.join("model.gguf");
    let cancel = AtomicBool::new(false);
    let err = download(&server.url, &dest, None, &cancel, |done, _| {
        if done >= 64 << 10 {
            cancel.store(true, Ordering::Release);
        }
    })
    .unwrap_err();
    assert!(matches!(err, DownloadError::Cancelled), "{err}");
    assert!(!dest.exists());
    let kept = std::fs::metadata(part_path(&dest)).unwrap().len();
    assert!(kept > 0 && kept < body.len() as u64, "{kept}");
    // Bad URLs and HTTP errors are named.
    let no = AtomicBool::new(false);
    let bad = download("ftp://example.invalid/x", &dest, None, &no, |_, _| {});
    assert!(matches!(bad, Err(DownloadError::BadUrl(_))));
}
