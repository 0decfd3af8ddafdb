//! What the CLI tests share: a `spinel serve` started on a free loopback
//! port and killed when dropped; checking a finished command; running the
//! scripts that fetch or build what a test compares against; scratch folders
//! removed when the test process exits.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

/// Asserts that a finished command succeeded, naming it and showing its
/// stderr when it did not; returns its (stdout, stderr).
pub fn ok(what: &str, out: Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stderr}",
        out.status
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// The largest absolute difference between two equally long vectors.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs a set-up script (a path relative to the `cli` crate) that fetches or
/// builds something once per machine and prints where it is; returns that
/// path. Fails naming the script when it fails.
pub fn script(rel: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed; this test needs what it provides:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The folder of llama.cpp's tools, built once per machine by
/// `../shared/peers/llama-cpp.sh` (~10 minutes, then cached under
/// `~/.cache/spinel-peers`).
pub fn llama_cpp_bin() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| script("../../shared/peers/llama-cpp.sh"))
}

static SCRATCH: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn remove_scratch() {
    if let Ok(dirs) = SCRATCH.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

unsafe extern "C" {
    fn atexit(f: extern "C" fn()) -> std::ffi::c_int;
}

/// A fresh scratch folder `spinel-NAME-PID` for this test process in cargo's
/// scratch space for tests (`target/tmp`: the build's disk, not a possibly
/// small `/tmp`), removed when the process exits (the test harness exits
/// through `exit`, pass or fail). The quantization tests write gigabytes
/// there, so folders of the same NAME left by processes that are gone (a
/// killed run) are removed first.
pub fn scratch_dir(name: &str) -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let prefix = format!("spinel-{name}-");
    let procfs = Path::new("/proc/self").exists();
    if let Ok(entries) = std::fs::read_dir(&tmp).map(|d| d.filter(|_| procfs)) {
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tmp.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let mut dirs = SCRATCH.lock().unwrap();
    if dirs.is_empty() {
        // SAFETY: `remove_scratch` is a plain `extern "C" fn()` that never
        // unwinds (it ignores every error), as `atexit` requires.
        unsafe { atexit(remove_scratch) };
    }
    dirs.push(dir.clone());
    dir
}

pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `spinel serve ARGS` on `127.0.0.1:0` and waits for its address;
/// its stderr is echoed (prefixed `server:`).
pub fn start(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spinel"))
        .arg("serve")
        .args(["--port", "0", "--host", "127.0.0.1"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spinel serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut base = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        eprintln!("server: {line}");
        if let Some(i) = line.find("listening on ") {
            base = Some(line[i + "listening on ".len()..].trim().to_string());
            break;
        }
    }
    // Keep draining the server's stderr so it never blocks on it.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("server: {line}");
        }
    });
    let server = Server {
        child,
        base: base.expect("the server printed its address"),
    };
    assert!(
        server.base.starts_with("http://127.0.0.1:"),
        "{}",
        server.base
    );
    server
}

/// `GET PATH` from a test server (HTTP/1.0, so the body is neither chunked
/// nor kept alive); returns the status line and the body.
pub fn get(server: &Server, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let addr = server.base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the test server");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}
