//! The server under load (`cli/tests/load_test.py`, loopback only): 32
//! clients streaming chat completions back to back for 60 seconds
//! (`SPINEL_LOAD_SECS` changes that) against SmolLM2 with 32 batched
//! sessions, then one client alone for a third of that. Every answer is
//! checked token for token against the server's own detokenization of the
//! ids it reports (nothing lost, repeated or interleaved between streams),
//! there are no errors, and the server's resident memory stays flat over the
//! second half (see the script). The
//! throughput and time-to-first-token figures are printed, not asserted
//! (speed lives in benchmarks; this build is the test profile's).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn run_load(base: &str, pid: u32, clients: usize, secs: u64) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/load_test.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(base)
        .args(["--clients", &clients.to_string()])
        .args(["--duration", &secs.to_string()])
        .args(["--pid", &pid.to_string(), "--json"])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "load test with {clients} clients failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn thirty_two_streaming_clients() {
    let secs: u64 = std::env::var("SPINEL_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let model = spinel_runtime::cache::test_model();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spinel"))
        .args(["serve", "--port", "0", "--host", "127.0.0.1", "-c", "512"])
        .args(["--parallel", "32", "-m"])
        .arg(&model)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spinel serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut base = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(i) = line.find("listening on ") {
            base = Some(line[i + "listening on ".len()..].trim().to_string());
            break;
        }
    }
    std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .for_each(|l| eprintln!("server: {l}"))
    });
    let base = base.expect("the server printed its address");
    let pid = child.id();
    let many = std::panic::catch_unwind(|| run_load(&base, pid, 32, secs));
    let one = std::panic::catch_unwind(|| run_load(&base, pid, 1, secs.div_ceil(3)));
    let _ = child.kill();
    let _ = child.wait();
    let (many, one) = (many.unwrap(), one.unwrap());
    eprintln!("32 clients: {many}1 client: {one}");
}
