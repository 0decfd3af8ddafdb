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

use std::path::Path;
use std::process::Command;

mod common;

use common::start;

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
    let server = start(&[
        "-c",
        "512",
        "--parallel",
        "32",
        "-m",
        model.to_str().unwrap(),
    ]);
    let (base, pid) = (server.base.as_str(), server.child.id());
    let many = run_load(base, pid, 32, secs);
    let one = run_load(base, pid, 1, secs.div_ceil(3));
    eprintln!("32 clients: {many}1 client: {one}");
}
