//! A panic in a generation, injected by a test-only build: the request
//! gets a 500 (a streamed one: an error event, then the end of the stream),
//! the session is reset (the next request finds nothing cached), and the
//! server keeps serving.
//!
//! Needs the `fault-injection` feature, which the shipping binary lacks:
//!
//!     cargo test -p spinel-cli --features fault-injection --test serve_faults
//!
//! (`scripts/test.sh` runs it; Cargo.toml declares the feature as this
//! test's requirement, so a build without it does not compile the test.)

mod common;

use common::{post, start, test_model};
use serde_json::{Value, json};

/// What makes the server panic after a request's first token (see
/// `cli/src/serve/generate.rs`).
const PANIC_MAGIC: &str = "spinel-fault-injection:panic";

fn ask(content: &str, stream: bool) -> Value {
    json!({
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8, "temperature": 0, "stream": stream,
    })
}

#[test]
fn a_panicking_generation_is_a_500_and_the_server_goes_on() {
    let (model, _) = test_model();
    let server = start(&[
        "-m",
        model.to_str().unwrap(),
        "-c",
        "1024",
        "-t",
        "2",
        "--parallel",
        "1",
        "--metrics",
    ]);
    let question = format!("Say hello. {PANIC_MAGIC}");
    let r = post(&server, "/v1/chat/completions", &ask(&question, false));
    assert_eq!(r.status, 500, "{}", r.body);
    let e = r.json();
    assert_eq!(e["error"]["type"], "server_error", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("panicked")),
        "{e}"
    );

    // Streamed: the head went out with the first token; the panic is an
    // error event and the stream ends.
    let r = post(&server, "/v1/chat/completions", &ask(&question, true));
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let err: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(err["error"]["type"], "server_error", "{err}");

    // The same conversation without the magic: the only session serves it,
    // and it was reset (nothing of the earlier prompt is in its cache).
    let r = post(&server, "/v1/chat/completions", &ask("Say hello.", false));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{v}"
    );
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{v}"
    );
    // And it caches again from there.
    let r = post(&server, "/v1/chat/completions", &ask("Say hello.", false));
    let cached = r.json()["usage"]["prompt_tokens_details"]["cached_tokens"].clone();
    assert!(cached.as_u64().is_some_and(|n| n > 0), "{cached}");

    let m = common::http(&server, "GET", "/metrics", None).body;
    assert!(
        m.lines().any(|l| l == "spinel_generation_panics_total 2"),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l
                == "spinel_requests_total{endpoint=\"/v1/chat/completions\",status=\"500\"} 1"),
        "{m}"
    );
}

/// What makes a request hold its session for 3 s before generating (see
/// `cli/src/serve/generate.rs`).
const HOLD_MAGIC: &str = "spinel-fault-injection:hold";

#[test]
fn a_request_still_queued_at_its_deadline_gets_503() {
    let (model, _) = test_model();
    let server = start(&[
        "-m",
        model.to_str().unwrap(),
        "-c",
        "1024",
        "-t",
        "2",
        "--parallel",
        "1",
        "--timeout-request",
        "1",
        "--metrics",
    ]);
    std::thread::scope(|s| {
        let server = &server;
        // A holds the only session for 3 s, past every deadline.
        let a = s.spawn(move || {
            post(
                server,
                "/v1/chat/completions",
                &ask(&format!("Say hello. {HOLD_MAGIC}"), false),
            )
        });
        let busy = std::time::Instant::now();
        let busy_now = || {
            let h: Value = serde_json::from_str(&common::get(server, "/health").1).unwrap();
            h["busy"] == 1
        };
        while !busy_now() {
            assert!(busy.elapsed().as_secs() < 30, "A never took the session");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // B queues behind it and gives up at its 1 s deadline.
        let b = post(server, "/v1/chat/completions", &ask("Say hello.", false));
        assert_eq!(b.status, 503, "{}", b.body);
        assert_eq!(b.header("retry-after"), Some("1"), "{:?}", b.headers);
        let e = b.json();
        assert_eq!(e["error"]["code"], "queue_timeout", "{e}");
        // A's own deadline passed while it held the session: it still
        // answers, stopped early.
        let a = a.join().unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["choices"][0]["finish_reason"], "length");
    });
    let m = common::http(&server, "GET", "/metrics", None).body;
    assert!(
        m.lines()
            .any(|l| l
                == "spinel_requests_total{endpoint=\"/v1/chat/completions\",status=\"503\"} 1"),
        "{m}"
    );
}
