//! `spinel serve`'s limits with the real model (SmolLM2-135M-Instruct Q4_1):
//!
//! * slow clients: 300 connections sending a header byte by byte do not
//!   keep a normal request from being answered, and are closed after the
//!   header timeout;
//! * a client that stops reading a long stream is dropped after the write
//!   timeout: its generation is cancelled and its session (the only one)
//!   serves the next request;
//! * a full queue answers 503 with `Retry-After`; a request's deadline ends
//!   its generation (`finish_reason: "length"`);
//! * SIGTERM: new connections are refused, a short generation finishes, a
//!   long one is cancelled after the grace period, both streams end with
//!   `[DONE]`, and the server exits 0;
//! * `/metrics` is Prometheus text whose counters follow the requests.
//!
//! Times are bounds on what must happen (with generous slack), never
//! speed measurements.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod common;

use common::{Server, get, http, post, start, test_model};
use serde_json::{Value, json};

fn chat(content: &str, max_tokens: usize, stream: bool) -> Value {
    json!({
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens, "ignore_eos": true, "temperature": 0, "stream": stream,
    })
}

fn health(server: &Server) -> Value {
    let (status, body) = get(server, "/health");
    assert!(status.contains(" 200 "), "{status}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits (at most `secs`) until `/health` satisfies `cond`.
fn until(server: &Server, secs: u64, what: &str, cond: impl Fn(&Value) -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let h = health(server);
        if cond(&h) {
            return;
        }
        assert!(Instant::now() < end, "{what}: still {h} after {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/metrics` parsed: every sample by its name and labels. Checks the text
/// format on the way: each sample's family has a `# TYPE` line before it,
/// names are valid, values are numbers.
fn metrics(server: &Server) -> HashMap<String, f64> {
    let r = http(server, "GET", "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in r.body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE NAME KIND");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(types.insert(name.into(), kind.into()).is_none(), "{line}");
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("no # TYPE before {line}"));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{line}");
        }
        let v: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
        samples.insert(key.to_string(), v);
    }
    samples
}

fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[test]
fn metrics_are_prometheus_text_that_follows_the_requests() {
    let (model, _) = test_model();
    let server = start(&[
        "-m",
        model.to_str().unwrap(),
        "-c",
        "512",
        "-t",
        "2",
        "--metrics",
    ]);
    let before = metrics(&server);
    for name in [
        "spinel_tokens_generated_total",
        "spinel_prompt_tokens_total",
        "spinel_requests_waiting",
        "spinel_requests_running",
        "spinel_decode_steps_total",
        "spinel_speculative_drafted_tokens_total",
        "spinel_speculative_accepted_tokens_total",
        "spinel_time_to_first_token_seconds_count",
    ] {
        assert!(before.contains_key(name), "{name} missing: {before:?}");
    }
    let r = post(&server, "/v1/chat/completions", &chat("Hi!", 6, false));
    assert_eq!(r.status, 200, "{}", r.body);
    let usage = r.json()["usage"].clone();
    let after = metrics(&server);
    let chat_ok = "spinel_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}";
    assert_eq!(metric(&after, chat_ok), metric(&before, chat_ok) + 1.0);
    let grew = |k: &str| metric(&after, k) - metric(&before, k);
    assert_eq!(
        grew("spinel_tokens_generated_total"),
        usage["completion_tokens"].as_f64().unwrap()
    );
    assert_eq!(
        grew("spinel_prompt_tokens_total"),
        usage["prompt_tokens"].as_f64().unwrap()
    );
    assert_eq!(grew("spinel_time_to_first_token_seconds_count"), 1.0);
    assert_eq!(
        grew("spinel_time_to_first_token_seconds_bucket{le=\"+Inf\"}"),
        1.0
    );
    assert!(grew("spinel_decode_steps_total") >= 5.0, "{after:?}");
    // The batch-size histogram covers every pass and every decode row.
    let passes = metric(&after, "spinel_batch_rows_count");
    assert_eq!(passes, metric(&after, "spinel_decode_steps_total"));
    assert_eq!(
        metric(&after, "spinel_batch_rows_sum"),
        metric(&after, "spinel_decode_rows_total")
    );
    assert_eq!(
        metric(&after, "spinel_batch_rows_bucket{le=\"+Inf\"}"),
        passes
    );
    // One client at a time: no pass had more than one sequence.
    assert_eq!(metric(&after, "spinel_batch_rows_bucket{le=\"1\"}"), passes);
    assert!(
        metric(
            &after,
            "spinel_requests_total{endpoint=\"/metrics\",status=\"200\"}"
        ) >= 1.0
    );
    let r = http(&server, "GET", "/nowhere", None);
    assert_eq!(r.status, 404);
    let m = metrics(&server);
    assert_eq!(
        metric(
            &m,
            "spinel_requests_total{endpoint=\"other\",status=\"404\"}"
        ),
        1.0
    );
}

/// A client sending a long header one byte at a time.
struct Slow {
    sock: TcpStream,
    sent: usize,
    closed: Option<Instant>,
}

#[test]
fn slow_clients_do_not_hold_up_a_request_and_are_closed_after_the_header_timeout() {
    let (model, _) = test_model();
    let server = start(&[
        "-m",
        model.to_str().unwrap(),
        "-c",
        "512",
        "-t",
        "2",
        "--timeout-header",
        "2",
        // Bytes keep arriving, so only the header timeout can close them.
        "--timeout-idle",
        "60",
        "--metrics",
    ]);
    let header = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(1000)
    );
    let started = Instant::now();
    let mut slow: Vec<Slow> = (0..300)
        .map(|_| {
            let sock = TcpStream::connect(server.addr()).expect("connect");
            sock.set_nonblocking(true).unwrap();
            Slow {
                sock,
                sent: 0,
                closed: None,
            }
        })
        .collect();
    let driver = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while slow.iter().any(|s| s.closed.is_none()) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "slow clients still open after 60 s"
            );
            for s in slow.iter_mut().filter(|s| s.closed.is_none()) {
                if s.sent < header.len()
                    && s.sock.write(&header.as_bytes()[s.sent..=s.sent]).is_ok()
                {
                    s.sent += 1;
                }
                match s.sock.read(&mut buf) {
                    Ok(0) => s.closed = Some(Instant::now()),
                    // A 408 before the close.
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => s.closed = Some(Instant::now()),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        slow
    });
    // All 300 are connected at once...
    let end = Instant::now() + Duration::from_secs(20);
    while metric(&metrics(&server), "spinel_connections") < 300.0 {
        assert!(
            Instant::now() < end,
            "the server never held 300 connections"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...and a normal request is answered meanwhile.
    let t0 = Instant::now();
    let r = post(&server, "/v1/chat/completions", &chat("Hi!", 4, false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);
    eprintln!(
        "normal request answered in {:.2} s beside 300 slow clients",
        t0.elapsed().as_secs_f64()
    );
    let slow = driver.join().unwrap();
    for s in &slow {
        let open = s.closed.unwrap().duration_since(started);
        // Closed by the 2 s header timeout, not before it, and not much
        // after (the driver notices within a round of 100 ms per client).
        assert!(open >= Duration::from_millis(1900), "closed after {open:?}");
        assert!(open < Duration::from_secs(30), "closed after {open:?}");
        assert!(s.sent < 1000, "a slow client sent its whole header");
    }
    let m = metrics(&server);
    assert_eq!(metric(&m, "spinel_connections"), 1.0);
    assert_eq!(metric(&m, "spinel_header_timeouts_total"), 300.0);
    assert_eq!(metric(&m, "spinel_idle_timeouts_total"), 0.0);
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_its_session_freed() {
    let (model, _) = test_model();
    let server = start(&[
        "-m",
        model.to_str().unwrap(),
        "-c",
        "4096",
        "-t",
        "2",
        "--parallel",
        "1",
        "--timeout-write",
        "2",
        // A small kernel send buffer: writes block after some KiB, not
        // after the megabytes autotuning allows on loopback.
        "--send-buffer",
        "16384",
        "--metrics",
    ]);
    // A long stream (~1 MB of events) whose client never reads.
    let body = chat("Write a long story about a dragon.", 4000, true).to_string();
    // A receive window of a few KiB: the stream stalls at once instead of
    // after filling the default buffers.
    let mute = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    mute.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = server.addr().parse().unwrap();
    mute.connect(&addr.into()).unwrap();
    let mut mute: TcpStream = mute.into();
    write!(
        mute,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    until(&server, 60, "the stream never started", |h| h["busy"] == 1);
    until(&server, 300, "the stalled stream kept its session", |h| {
        h["busy"] == 0
    });
    let m = metrics(&server);
    assert_eq!(metric(&m, "spinel_write_timeouts_total"), 1.0, "{m:?}");
    let generated = metric(&m, "spinel_tokens_generated_total");
    assert!(
        (1.0..4000.0).contains(&generated),
        "cancelled before its end: {generated} tokens"
    );
    // The only session serves the next request.
    let r = post(&server, "/v1/chat/completions", &chat("Hi!", 4, false));
    assert_eq!(r.status, 200, "{}", r.body);
    // The stalled client never closed its socket: the server did.
    mute.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let end = mute.read_to_end(&mut sink);
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "{end:?}"
    );
}

#[test]
fn a_full_queue_answers_503_and_a_deadline_ends_a_generation() {
    let (model, _) = test_model();
    let server = start(&[
        "-m",
        model.to_str().unwrap(),
        "-c",
        "8192",
        "-t",
        "2",
        "--parallel",
        "1",
        "--queue",
        "1",
        "--timeout-request",
        "4",
        "--metrics",
    ]);
    std::thread::scope(|s| {
        let server = &server;
        // A: longer than its 4 s deadline allows.
        let a = s.spawn(move || {
            post(
                server,
                "/v1/chat/completions",
                &chat("Tell a story.", 8000, false),
            )
        });
        until(server, 60, "A never started", |h| h["busy"] == 1);
        std::thread::sleep(Duration::from_secs(1));
        // B waits in the queue (its one place).
        let b = s.spawn(move || post(server, "/v1/chat/completions", &chat("Hi!", 4, false)));
        until(server, 10, "B never queued", |h| h["waiting"] == 1);
        // C finds the queue full.
        let c = post(server, "/v1/chat/completions", &chat("Hi!", 4, false));
        assert_eq!(c.status, 503, "{}", c.body);
        assert_eq!(c.header("retry-after"), Some("1"), "{:?}", c.headers);
        let e = c.json();
        assert_eq!(e["error"]["code"], "server_busy", "{e}");
        assert_eq!(e["error"]["type"], "server_error", "{e}");

        let a = a.join().unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        let a = a.json();
        assert_eq!(a["choices"][0]["finish_reason"], "length", "{a}");
        let n = a["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((1..8000).contains(&n), "the deadline stopped A: {n} tokens");
        let b = b.join().unwrap();
        assert_eq!(b.status, 200, "{}", b.body);
    });
    let m = metrics(&server);
    assert_eq!(
        metric(
            &m,
            "spinel_requests_total{endpoint=\"/v1/chat/completions\",status=\"503\"}"
        ),
        1.0
    );
}

/// Streams a chat completion on a raw connection; sends `()` on `first`
/// at its first content event; returns the events.
fn stream_events(addr: &str, body: &Value, first: std::sync::mpsc::Sender<()>) -> Vec<Value> {
    let mut sock = TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    write!(
        sock,
        "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut events = Vec::new();
    let mut signalled = false;
    for line in BufReader::new(sock).lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            events.push(Value::Null);
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if !signalled
            && v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        {
            signalled = true;
            let _ = first.send(());
        }
        events.push(v);
    }
    events
}

#[test]
fn sigterm_drains_then_cancels_and_exits_zero() {
    let (model, _) = test_model();
    let mut server = start(&[
        "-m",
        model.to_str().unwrap(),
        "-c",
        "4096",
        "-t",
        "2",
        "--parallel",
        "2",
        "--shutdown-grace",
        "3",
    ]);
    // Metrics are off without --metrics.
    assert_eq!(http(&server, "GET", "/metrics", None).status, 501);
    let addr = server.addr().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let (short, long) = {
        let (a1, a2, t1, t2) = (addr.clone(), addr.clone(), tx.clone(), tx);
        let short = std::thread::spawn(move || {
            stream_events(&a1, &chat("Name three colors.", 24, true), t1)
        });
        let long = std::thread::spawn(move || {
            stream_events(&a2, &chat("Write a long story.", 3000, true), t2)
        });
        (short, long)
    };
    for _ in 0..2 {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("both streams started");
    }
    let signalled = Instant::now();
    server.terminate();
    assert!(server.wait_log("shutting down", Duration::from_secs(10)));
    let refused = TcpStream::connect(&addr);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused),
        "a new connection during shutdown: {refused:?}"
    );
    let status = server
        .wait_exit(Duration::from_secs(3 + 15))
        .expect("the server exits after the grace period");
    assert!(status.success(), "exit status {status}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "the long stream got its grace: {took:?}"
    );
    for (name, events, want) in [
        ("short", short.join().unwrap(), Some(24)),
        ("long", long.join().unwrap(), None),
    ] {
        assert_eq!(events.last(), Some(&Value::Null), "{name} ends with [DONE]");
        let last = &events[events.len() - 2];
        let finish = &last["choices"][0]["finish_reason"];
        let n = last["usage"]["completion_tokens"].as_u64().unwrap();
        match want {
            // Finished within the grace period.
            Some(n_want) => assert_eq!((finish.as_str(), n), (Some("length"), n_want), "{last}"),
            // Cancelled after it.
            None => assert!(finish == "stop" && n < 3000, "{last}"),
        }
    }
    assert!(server.wait_log("cancelling 1 requests", Duration::ZERO));
}
