//! Saving a chat session (conversation + KV cache) to a file and restoring
//! it, on the real model (SmolLM2-135M-Instruct Q4_1):
//!
//! * a restored session holds the same conversation and cached tokens, its
//!   next turn processes only the new tokens and answers exactly as the
//!   original session's next turn (the cache bytes are the same);
//! * files that are not session files, truncated, corrupted, of another KV
//!   type or key rotation, or longer than the context are refused with a clear error, and the
//!   session stays usable (empty).

use std::path::PathBuf;
use std::sync::Arc;

use spinel_runtime::engine::{Engine, EngineError, GenerateOptions, Session, SessionOptions};
use spinel_runtime::model::KvType;
use spinel_runtime::sampling::SamplingParams;

mod common;

fn engine() -> Arc<Engine> {
    common::test_engine()
}

fn session(n_ctx: usize, kv_type: KvType) -> Session {
    session_kv(n_ctx, kv_type, kv_type)
}

fn session_kv(n_ctx: usize, kv_type: KvType, kv_type_v: KvType) -> Session {
    engine()
        .session(&SessionOptions {
            n_ctx: Some(n_ctx),
            n_threads: Some(2),
            kv_type,
            kv_type_v: Some(kv_type_v),
            ..SessionOptions::default()
        })
        .unwrap()
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(n),
        ..GenerateOptions::default()
    }
}

/// A scratch folder of one test, removed when dropped (pass or panic).
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("spinel-session-file-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn file_error(e: EngineError) -> String {
    match e {
        EngineError::SessionFile { reason, .. } => reason,
        e => panic!("expected a session file error, got {e}"),
    }
}

#[test]
fn a_restored_session_goes_on_where_it_stopped() {
    // A transposed f16 V cache, and Q8_0 keys with Q4_0 values (rows of
    // other sizes, values by position).
    for (k, v) in [(KvType::F16, KvType::F16), (KvType::Q8_0, KvType::Q4_0)] {
        restored_session_goes_on(k, v);
    }
}

fn restored_session_goes_on(k: KvType, v: KvType) {
    let mut a = session_kv(256, k, v);
    a.set_system("You are a helpful assistant.");
    a.chat("What is the capital of France?", &greedy(8), |_| {})
        .unwrap();
    let dir = Scratch::new("goes-on");
    let path = dir.file("chat.session");
    a.save(&path).unwrap();

    let mut b = session_kv(256, k, v);
    b.restore(&path).unwrap();
    assert_eq!(b.messages(), a.messages());
    assert_eq!(b.cached_tokens(), a.cached_tokens());
    let held = a.cached_tokens().len();

    let next = "And of Italy?";
    let ga = a.chat(next, &greedy(8), |_| {}).unwrap();
    let gb = b.chat(next, &greedy(8), |_| {}).unwrap();
    assert_eq!(gb.generated_ids, ga.generated_ids);
    assert_eq!(gb.text, ga.text);
    // Only the tokens after the restored cache were processed.
    assert_eq!(gb.stats.cached_tokens, ga.stats.cached_tokens);
    assert!(
        gb.stats.cached_tokens >= held - 1,
        "{} of {held}",
        gb.stats.cached_tokens
    );
    assert_eq!(b.messages(), a.messages());
}

#[test]
fn bad_session_files_are_refused() {
    let mut a = session(64, KvType::F16);
    a.chat("Hi!", &greedy(4), |_| {}).unwrap();
    let dir = Scratch::new("refused");
    let good = dir.file("good.session");
    a.save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let mut s = session(64, KvType::F16);
    let refused = |name: &str, data: &[u8], s: &mut Session| {
        let p = dir.file(name);
        std::fs::write(&p, data).unwrap();
        let e = file_error(s.restore(&p).unwrap_err());
        assert!(s.cached_tokens().is_empty() && s.messages().is_empty());
        e
    };
    let e = refused("text.session", b"hello, I am not a session", &mut s);
    assert!(e.contains("not a Spinel session file"), "{e}");
    let e = refused("empty.session", b"", &mut s);
    assert!(e.contains("truncated"), "{e}");
    for cut in [12, 40, bytes.len() / 2, bytes.len() - 1] {
        let e = refused("cut.session", &bytes[..cut], &mut s);
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
    }
    let mut flipped = bytes.clone();
    let i = bytes.len() - 100;
    flipped[i] ^= 0x40;
    let e = refused("flipped.session", &flipped, &mut s);
    assert!(e.contains("checksum"), "{e}");
    let mut longer = bytes.clone();
    longer.push(0);
    let e = refused("longer.session", &longer, &mut s);
    assert!(e.contains("trailing"), "{e}");

    let e = file_error(session(64, KvType::F32).restore(&good).unwrap_err());
    assert!(
        e.contains("K cache type (F16) is not this session's (F32)"),
        "{e}"
    );
    let e = file_error(
        session_kv(64, KvType::F16, KvType::Q8_0)
            .restore(&good)
            .unwrap_err(),
    );
    assert!(
        e.contains("V cache type (F16) is not this session's (Q8_0)"),
        "{e}"
    );
    // Same types, keys rotated (R3): the cache holds other bytes.
    let mut rotated = engine()
        .session(&SessionOptions {
            n_ctx: Some(64),
            n_threads: Some(2),
            kv_type: KvType::F16,
            kv_rotation: Some(true),
            ..SessionOptions::default()
        })
        .unwrap();
    let e = file_error(rotated.restore(&good).unwrap_err());
    assert!(
        e.contains("its keys are not rotated, this session's are rotated (KV rotation)"),
        "{e}"
    );
    let e = file_error(session(4, KvType::F16).restore(&good).unwrap_err());
    assert!(e.contains("context"), "{e}");
    let e = file_error(s.restore(&dir.file("missing.session")).unwrap_err());
    assert!(!e.is_empty());

    // Still usable, and the good file still restores.
    s.restore(&good).unwrap();
    assert_eq!(s.cached_tokens(), a.cached_tokens());
    s.chat("Bye!", &greedy(2), |_| {}).unwrap();
}
