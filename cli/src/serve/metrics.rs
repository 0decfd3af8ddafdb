//! `GET /metrics` (with `--metrics`): counters, gauges and histograms in
//! Prometheus's text format, as llama.cpp's server offers them. Counted
//! always (a few atomics per request); shown only when asked for.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use spinel_runtime::engine::BatchStats;

/// A histogram with fixed bucket bounds (seconds).
struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative), then above all.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut total = 0;
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => b.to_string(),
                None => "+Inf".into(),
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// The batcher's passes by their decode rows, as a histogram.
fn render_batch_sizes(out: &mut String, g: &Gauges) {
    let name = "spinel_batch_rows";
    let _ = writeln!(
        out,
        "# HELP {name} Sequences per batched forward pass (continuous batching).\n# TYPE {name} histogram"
    );
    let mut total = 0;
    for (i, n) in g.rows_per_step.iter().enumerate() {
        total += n;
        let le = BatchStats::ROW_BOUNDS
            .get(i)
            .map_or("+Inf".to_string(), u64::to_string);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
    }
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {total}", g.decode_rows);
}

const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The server's counters (see the [module docs](self)).
pub struct Metrics {
    /// Answered requests by (endpoint, status).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    drafted_tokens: AtomicU64,
    accepted_tokens: AtomicU64,
    panics: AtomicU64,
    write_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
    header_timeouts: AtomicU64,
    ttft: Histogram,
    queue_wait: Histogram,
}

/// What one finished generation adds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Generated {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub drafted_tokens: usize,
    pub accepted_tokens: usize,
}

/// The gauges, read when the metrics are rendered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub sessions: usize,
    pub running: usize,
    pub waiting: usize,
    pub max_waiting: usize,
    pub connections: usize,
    pub decode_steps: u64,
    pub decode_rows: u64,
    /// Batched passes by decode rows (the batcher's slots).
    pub rows_per_step: [u64; 8],
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            cached_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            drafted_tokens: AtomicU64::new(0),
            accepted_tokens: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
            idle_timeouts: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            ttft: Histogram::new(LATENCY_BOUNDS),
            queue_wait: Histogram::new(LATENCY_BOUNDS),
        }
    }

    /// A request answered with `status` on `endpoint` (a known route, or
    /// `other`: the label's values stay few).
    pub fn request(&self, endpoint: &'static str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((endpoint, status)).or_default() += 1;
    }

    pub fn generated(&self, g: Generated) {
        let add = |c: &AtomicU64, n: usize| c.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.prompt_tokens, g.prompt_tokens);
        add(&self.cached_tokens, g.cached_tokens);
        add(&self.generated_tokens, g.generated_tokens);
        add(&self.drafted_tokens, g.drafted_tokens);
        add(&self.accepted_tokens, g.accepted_tokens);
    }

    /// Time from a request's arrival to its first generated token.
    pub fn first_token(&self, d: Duration) {
        self.ttft.observe(d);
    }

    /// Time a request waited for a session.
    pub fn queued(&self, d: Duration) {
        self.queue_wait.observe(d);
    }

    pub fn panicked(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    pub fn write_timed_out(&self) {
        self.write_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn idle_timed_out(&self) {
        self.idle_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn header_timed_out(&self) {
        self.header_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP spinel_requests_total HTTP requests answered, by endpoint and status.\n\
             # TYPE spinel_requests_total counter\n",
        );
        for ((endpoint, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "spinel_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        let counters: [(&str, &str, u64); 12] = [
            (
                "spinel_prompt_tokens_total",
                "Prompt tokens of finished generations (cached ones included).",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "spinel_prompt_tokens_cached_total",
                "Prompt tokens found in a session's KV cache (not processed).",
                self.cached_tokens.load(Ordering::Relaxed),
            ),
            (
                "spinel_tokens_generated_total",
                "Tokens generated.",
                self.generated_tokens.load(Ordering::Relaxed),
            ),
            (
                "spinel_speculative_drafted_tokens_total",
                "Tokens drafted by speculative decoding.",
                self.drafted_tokens.load(Ordering::Relaxed),
            ),
            (
                "spinel_speculative_accepted_tokens_total",
                "Drafted tokens the model accepted.",
                self.accepted_tokens.load(Ordering::Relaxed),
            ),
            (
                "spinel_decode_steps_total",
                "Batched decode steps (forward passes) of the sessions.",
                g.decode_steps,
            ),
            (
                "spinel_decode_rows_total",
                "Sequences in those steps (rows / steps: the mean batch size).",
                g.decode_rows,
            ),
            (
                "spinel_generation_panics_total",
                "Generations that panicked (their sessions were reset).",
                self.panics.load(Ordering::Relaxed),
            ),
            (
                "spinel_write_timeouts_total",
                "Connections dropped because the client stopped reading.",
                self.write_timeouts.load(Ordering::Relaxed),
            ),
            (
                "spinel_idle_timeouts_total",
                "Connections closed after sending nothing for the idle timeout.",
                self.idle_timeouts.load(Ordering::Relaxed),
            ),
            (
                "spinel_header_timeouts_total",
                "Connections closed because a request header did not arrive in time.",
                self.header_timeouts.load(Ordering::Relaxed),
            ),
            (
                "spinel_queue_capacity",
                "Most requests that may wait for a session (--queue).",
                g.max_waiting as u64,
            ),
        ];
        for (name, help, v) in counters {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        let gauges = [
            ("spinel_sessions", "Sessions (--parallel).", g.sessions),
            (
                "spinel_requests_running",
                "Requests holding a session.",
                g.running,
            ),
            (
                "spinel_requests_waiting",
                "Requests waiting for a session (the queue's depth).",
                g.waiting,
            ),
            ("spinel_connections", "Open connections.", g.connections),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        render_batch_sizes(&mut out, g);
        self.ttft.render(
            &mut out,
            "spinel_time_to_first_token_seconds",
            "From a request's arrival to its first generated token (queue wait included).",
        );
        self.queue_wait.render(
            &mut out,
            "spinel_queue_wait_seconds",
            "Time requests waited for a session.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.request("/v1/chat/completions", 200);
        m.request("/v1/chat/completions", 200);
        m.request("other", 404);
        m.first_token(Duration::from_millis(30));
        m.first_token(Duration::from_secs(100));
        m.generated(Generated {
            prompt_tokens: 10,
            generated_tokens: 5,
            ..Generated::default()
        });
        let text = m.render(&Gauges {
            sessions: 2,
            ..Gauges::default()
        });
        for line in [
            "spinel_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2",
            "spinel_requests_total{endpoint=\"other\",status=\"404\"} 1",
            "# TYPE spinel_tokens_generated_total counter",
            "spinel_tokens_generated_total 5",
            "spinel_prompt_tokens_total 10",
            "# TYPE spinel_sessions gauge",
            "spinel_sessions 2",
            "spinel_time_to_first_token_seconds_bucket{le=\"0.025\"} 0",
            "spinel_time_to_first_token_seconds_bucket{le=\"0.05\"} 1",
            "spinel_time_to_first_token_seconds_bucket{le=\"60\"} 1",
            "spinel_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2",
            "spinel_time_to_first_token_seconds_sum 100.03",
            "spinel_time_to_first_token_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // Every sample line belongs to a family declared by a TYPE line.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert!(text.contains(&format!("# TYPE {family} ")), "{l}");
        }
    }
}
