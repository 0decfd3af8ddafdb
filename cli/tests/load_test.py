"""A bounded load test of a running `spinel serve` (loopback only).

Usage: load_test.py BASE_URL --clients N --duration SECS [--pid PID]
                    [--max-tokens LO,HI] [--json]

N client threads stream chat completions back to back for SECS seconds.
Every answer is checked: the streamed deltas, concatenated, must equal the
server's own detokenization of the token ids it reports for that answer
(`return_tokens`, `/detokenize`), and there must be exactly `max_tokens` of
them (`ignore_eos`) — a lost, repeated or foreign (interleaved) token fails
the check. With `--pid`, the server's resident memory is sampled each
second. It must stay flat over the second half of the run (grow by less
than 24 MiB, ~5%): by then every session's cache has been filled as far as it
will be (every client's first answer is the longest) and the HTTP threads and
the allocator's per-thread caches have reached their working size, so what
grows then is a leak.

Prints a summary (JSON with --json): requests, errors, generated tokens and
tokens/s in total, time to first token p50/p99, memory. Exits non-zero on
any error.
"""

import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
import urllib.parse

PROMPTS = [
    "Tell me about the moon.",
    "Write a short poem about rain.",
    "What is a compiler?",
    "List some fruits.",
    "Explain photosynthesis simply.",
    "Describe a busy street.",
    "Why is the sky blue?",
    "Give advice for learning to cook.",
]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Client(threading.Thread):
    def __init__(self, base, index, deadline, lo, hi, warm):
        super().__init__(daemon=True)
        self.warm = warm
        u = urllib.parse.urlparse(base)
        self.host, self.port = u.hostname, u.port
        self.index, self.deadline, self.lo, self.hi = index, deadline, lo, hi
        self.rng = random.Random(index)
        self.ttfts, self.tokens, self.requests, self.errors = [], 0, 0, []

    def post(self, path, body, timeout=300):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        return c, c.getresponse()

    def one(self, longest=False):
        n = self.hi if longest else self.rng.randint(self.lo, self.hi)
        prompt = max(PROMPTS, key=len) if longest else self.rng.choice(PROMPTS)
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "stream": True, "max_tokens": n, "ignore_eos": True, "return_tokens": True,
            "temperature": 0.8, "seed": self.rng.randrange(1 << 30),
        }
        t0 = time.monotonic()
        conn, r = self.post("/v1/chat/completions", body)
        if r.status != 200:
            raise RuntimeError(f"status {r.status}: {r.read()[:200]!r}")
        text, tokens, first, done, usage = [], None, None, False, None
        for raw in r:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                break
            ev = json.loads(data)
            if "error" in ev:
                raise RuntimeError(f"error event: {ev['error']}")
            for ch in ev.get("choices", []):
                piece = ch.get("delta", {}).get("content")
                if piece:
                    if first is None:
                        first = time.monotonic() - t0
                    text.append(piece)
            if "tokens" in ev:
                tokens = ev["tokens"]
            usage = ev.get("usage") or usage
        conn.close()
        if not done:
            raise RuntimeError("the stream ended without [DONE]")
        if tokens is None or len(tokens) != n:
            raise RuntimeError(f"asked for {n} tokens, got {tokens and len(tokens)}")
        if usage is None or usage["completion_tokens"] != n:
            raise RuntimeError(f"usage {usage} for {n} tokens")
        conn, r = self.post("/detokenize", {"tokens": tokens})
        want = json.loads(r.read())["content"]
        conn.close()
        got = "".join(text)
        if got != want:
            raise RuntimeError(f"streamed text differs from its tokens: {got[:80]!r} vs {want[:80]!r}")
        self.requests += 1
        self.tokens += n
        if first is not None:
            self.ttfts.append(first)

    def run(self):
        try:
            self.one(longest=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            self.errors.append(f"client {self.index}: {e}")
        self.warm.wait()
        while time.monotonic() < self.deadline:
            try:
                self.one()
            except Exception as e:  # noqa: BLE001 - every failure is reported
                self.errors.append(f"client {self.index}: {e}")
                time.sleep(0.1)


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--pid", type=int)
    ap.add_argument("--max-tokens", default="16,64")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    lo, hi = map(int, a.max_tokens.split(","))

    start = time.monotonic()
    deadline = start + a.duration
    warm = threading.Barrier(a.clients + 1)
    clients = [Client(a.base, i, deadline, lo, hi, warm) for i in range(a.clients)]
    for c in clients:
        c.start()
    warm.wait()
    rss = []
    while any(c.is_alive() for c in clients):
        if a.pid:
            rss.append((time.monotonic(), rss_kib(a.pid)))
        time.sleep(1)
    for c in clients:
        c.join()
    wall = time.monotonic() - start

    errors = [e for c in clients for e in c.errors]
    ttfts = [t for c in clients for t in c.ttfts]
    tokens = sum(c.tokens for c in clients)
    summary = {
        "clients": a.clients,
        "seconds": round(wall, 1),
        "requests": sum(c.requests for c in clients),
        "errors": len(errors),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_ms": ttfts and round(1000 * statistics.median(ttfts), 1),
        "ttft_p99_ms": ttfts and round(1000 * percentile(ttfts, 99), 1),
    }
    if rss:
        half = [k for t, k in rss if t >= start + a.duration / 2] or [rss[-1][1]]
        summary["rss_warm_mib"] = round(rss[0][1] / 1024, 1)
        summary["rss_half_mib"] = round(half[0] / 1024, 1)
        summary["rss_end_mib"] = round(rss[-1][1] / 1024, 1)
        summary["rss_max_mib"] = round(max(k for _, k in rss) / 1024, 1)
        if half[-1] - half[0] > 24 * 1024:
            errors.append(f"resident memory grew from {half[0]} KiB to {half[-1]} KiB in the second half")
            summary["errors"] = len(errors)
    if a.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k:>16}: {v}")
    for e in errors[:20]:
        print("ERROR", e, file=sys.stderr)
    if errors or summary["requests"] == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
