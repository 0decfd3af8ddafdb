//! The web chat page at `/` end to end in headless Chromium: Debian's
//! `chromium` (`.ci/run` installs it) driven by npm's `playwright-core`
//! (installed into the cache on first use), against `spinel serve` with the
//! real model: type a question, see the answer stream in with tokens/s,
//! press Stop, see it stop (and the server free the session), ask again; no
//! request leaves the server. With a vision model (the dev Llama 4 of
//! `../shared/testdata/vision`, converted here): attach an image, see it
//! sent and encoded. See `cli/tests/web/chat_page.cjs`.
//!
//! A missing `chromium`, `node` or `npm` fails the test (never a skip).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::start;

const PLAYWRIGHT_CORE: &str = "1.65.1";

fn playwright_core() -> PathBuf {
    let prefix = spinel_runtime::cache::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("npm")
        .join(format!("playwright-core-{PLAYWRIGHT_CORE}"));
    let dir = prefix.join("node_modules/playwright-core");
    if !dir.join("package.json").is_file() {
        let status = Command::new("npm")
            .args(["install", "--silent", "--prefix"])
            .arg(&prefix)
            .arg(format!("playwright-core@{PLAYWRIGHT_CORE}"))
            .status()
            .expect("npm is needed for the web page test (apt-get install npm)");
        assert!(status.success(), "npm install playwright-core failed");
    }
    dir
}

fn chromium() -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        chromium.is_file(),
        "no Chromium at {} (apt-get install chromium, or set CHROMIUM)",
        chromium.display()
    );
    chromium
}

/// Runs `chat_page.cjs` against `server` (with `extra` arguments); its
/// stdout must contain `ok`.
fn run_page(server: common::Server, extra: &[&Path], ok: &str) {
    let chromium = chromium();
    let pw = playwright_core();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web/chat_page.cjs");
    let out = Command::new("node")
        .arg(script)
        .arg(&server.base)
        .arg(&pw)
        .args(extra)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node is needed for the web page test (apt-get install nodejs)");
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(ok),
        "the web page test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");
}

#[test]
fn chat_page_streams_and_stops_in_headless_chromium() {
    let model = spinel_runtime::cache::test_model();
    let server = start(&[
        "-c",
        "2048",
        "-t",
        "2",
        "--ignore-eos",
        "-m",
        model.to_str().unwrap(),
    ]);
    run_page(server, &[], "ok web chat page");
}

#[test]
fn chat_page_attaches_an_image_in_headless_chromium() {
    let vision = match std::env::var_os("SPINEL_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
    }
    .join("vision");
    let dir = common::scratch_dir("web-vision");
    let model = dir.join("llama4.gguf");
    let convert = Command::new(env!("CARGO_BIN_EXE_spinel"))
        .arg("convert")
        .arg(vision.join("dev/llama4_vision"))
        .arg("-o")
        .arg(&model)
        .output()
        .expect("run spinel convert");
    common::ok("spinel convert", convert);
    let mmproj = dir.join("llama4.mmproj.gguf");
    let server = start(&[
        "-c",
        "256",
        "-t",
        "2",
        "-m",
        model.to_str().unwrap(),
        "--mmproj",
        mmproj.to_str().unwrap(),
    ]);
    let image = vision.join("images/landscape_300x200.png");
    run_page(server, &[&image], "ok web chat page with an image");
}
