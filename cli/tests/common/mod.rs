//! What the CLI tests share: a `spinel serve` started on a free loopback
//! port and killed when dropped; checking a finished command; running the
//! scripts that fetch or build what a test compares against; scratch folders
//! removed when the test process exits.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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
    /// The server's stderr lines so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `host:port`.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// Waits (at most `timeout`) for a stderr line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM (through `kill`, as an init system would).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits (at most `timeout`) for the server to exit; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts `spinel serve ARGS` on `127.0.0.1:0` and waits for its address;
/// its stderr is echoed (prefixed `server:`) and kept in `Server::log`.
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
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut base = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        eprintln!("server: {line}");
        log.lock().unwrap().push(line.clone());
        if let Some(i) = line.find("listening on ") {
            base = Some(line[i + "listening on ".len()..].trim().to_string());
            break;
        }
    }
    // Keep draining the server's stderr so it never blocks on it.
    let kept = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("server: {line}");
            kept.lock().unwrap().push(line);
        }
    });
    let server = Server {
        child,
        base: base.expect("the server printed its address"),
        log,
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
    let r = http(server, "GET", path, None);
    (r.status_line, r.body)
}

/// A response read by [`http`].
#[derive(Debug)]
pub struct Reply {
    pub status_line: String,
    pub status: u16,
    /// Header lines, `name: value`, names lower-cased.
    pub headers: Vec<String>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.headers
            .iter()
            .find_map(|h| h.strip_prefix(&prefix))
            .map(str::trim)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status_line, self.body))
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

/// One HTTP/1.0 request (the server closes the connection after the
/// response, streamed or not), read to its end.
pub fn http(server: &Server, method: &str, path: &str, body: Option<&str>) -> Reply {
    use std::io::{Read, Write};
    let addr = server.addr();
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the test server");
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default().to_string();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status_line,
        status,
        headers: lines
            .map(|l| match l.split_once(':') {
                Some((k, v)) => format!("{}:{v}", k.to_ascii_lowercase()),
                None => l.to_string(),
            })
            .collect(),
        body: body.to_string(),
    }
}

/// `POST PATH` with a JSON body.
pub fn post(server: &Server, path: &str, body: &serde_json::Value) -> Reply {
    http(server, "POST", path, Some(&body.to_string()))
}

/// The model file the tests serve, and the id the API gives it.
pub fn test_model() -> (PathBuf, String) {
    let model = spinel_runtime::cache::test_model();
    let name = model.file_name().unwrap().to_string_lossy().into_owned();
    let id = name.strip_suffix(".gguf").unwrap_or(&name).to_string();
    (model, id)
}
