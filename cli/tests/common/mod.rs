//! A `spinel serve` started for a test on a free loopback port, killed when
//! dropped (shared by the server tests).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

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
