#!/usr/bin/env python3
"""Spinel against llama.cpp on the same GGUF files, side by side.

For every model, thread count and test (ppP, tgN, at depth -d) it runs
`spinel bench` and `llama-bench` in rounds (--rounds, at least 3), the order
alternating from round to round (spinel first, then llama.cpp first ...),
each process doing -r timed runs after one warm-up run (both tools warm up
as llama-bench does). Each row has both speeds, the median of the per-round
ratios (spinel / llama.cpp) with their min..max spread, and each process's
peak RSS. Then,
per model and thread count, the time from process start to the first
generated token: the wall time of `spinel run -n 1` and `llama-completion
-n 1` on the same short prompt (greedy, same context), which ends right
after that token (median of --ttft-runs).

    benches/compare/compare.py                 # SmolLM2 files + the 1B-shaped synthetic ones, -t 1,2
    benches/compare/compare.py -m x.gguf -d 4096 -p 512 -n 128   # deep in the context
    benches/compare/compare.py -m a.gguf,b.gguf -t 2 -r 5 --rounds 3 --json out.json

Timings on a shared machine are noisy: alternating the two tools test by
test keeps them under the same load, and the load average is printed.
Peak RSS is the child's ru_maxrss (from wait4), in MiB.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(os.environ.get("SPINEL_BENCH_MODELS", Path.home() / ".cache/spinel/bench"))
DEFAULT_MODELS = [
    BENCH_DIR / f"SmolLM2-135M-Instruct.{q}.gguf" for q in ("Q4_0", "Q4_1", "Q8_0", "Q4_K_M")
]
# Llama 3.2 1B's shape with random weights (`spinel synth llama-1b`, then
# `spinel quantize`): written on first use.
SYNTHETIC_1B = [BENCH_DIR / f"llama3.2-1b-shape.{q}.gguf" for q in ("Q4_0", "Q8_0", "Q4_K_M")]


def spinel_runtime_test_model():
    """The demo model (scripts/fetch-model.sh prints its path)."""
    out = subprocess.run([ROOT / "scripts/fetch-model.sh"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def ensure_synthetic(spinel, path):
    """Writes a 1B-shaped synthetic model of the quantization in its name."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    q8 = path.with_name("llama3.2-1b-shape.Q8_0.gguf")
    if not q8.exists():
        # SmolLM2's tokenizer, so both tools load it and `run` can prompt it.
        tok = spinel_runtime_test_model()
        subprocess.run([spinel, "synth", "llama-1b", "--tokenizer-from", tok, "-o", q8], check=True,
                       stdout=subprocess.DEVNULL)
    if path != q8:
        qtype = path.name.split(".")[-2].lower()
        subprocess.run([spinel, "quantize", "--type", qtype, q8, path], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
PROMPT = "The capital of France is"


def run_measured(cmd):
    """Runs cmd, reaping it with wait4: (stdout, wall seconds, peak RSS MiB)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.perf_counter() - start
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed with status {p.returncode}")
    return out.decode(), secs, ru.ru_maxrss / 1024.0


def llama_bin():
    script = ROOT.parent / "shared/peers/llama-cpp.sh"
    return Path(subprocess.run([script], capture_output=True, text=True, check=True).stdout.strip())


def bench_pair(spinel, llama, model, threads, p, n, d, reps, llama_first):
    """One round, in the given order; (samples_ts, rss, row) for each tool."""
    res = {}
    for tool in (("llama", "spinel") if llama_first else ("spinel", "llama")):
        common = ["-m", model, "-p", p, "-n", n, "-d", d, "-t", threads, "-r", reps]
        if tool == "spinel":
            cmd = [spinel, "bench", "--json"] + common
        else:
            cmd = [llama / "llama-bench", "-o", "json"] + common
        out, _, rss = run_measured([str(c) for c in cmd])
        rows = json.loads(out)
        assert len(rows) == 1, rows
        res[tool] = (rows[0]["samples_ts"], rss, rows[0])
    return res


def ttft(spinel, llama, model, threads, runs):
    """Median wall seconds and peak RSS of a one-token generation."""
    cmds = {
        "spinel": [spinel, "run", "-m", model, "-p", PROMPT, "-n", "1", "-t", threads,
                   "-c", "128", "--temp", "0"],
        "llama": [llama / "llama-completion", "-m", model, "-p", PROMPT, "-n", "1", "-t", threads,
                  "-c", "128", "--temp", "0", "-no-cnv"],
    }
    res = {k: ([], []) for k in cmds}
    for _ in range(runs):
        for k, cmd in cmds.items():
            _, secs, rss = run_measured([str(c) for c in cmd])
            res[k][0].append(secs)
            res[k][1].append(rss)
    return {k: (statistics.median(v[0]), max(v[1])) for k, v in res.items()}


def fmt_ts(samples):
    m = statistics.mean(samples)
    sd = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return m, f"{m:9.2f} ± {sd:6.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--models", help="comma-separated GGUF files (default: SmolLM2 Q4_0/Q4_1/Q8_0/"
                    "Q4_K_M and the 1B-shaped synthetic Q4_0/Q8_0/Q4_K_M)")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-t", "--threads", default="1,2")
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("-d", "--n-depth", type=int, default=0, help="tokens already in the cache")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per test (at least 3)")
    ap.add_argument("--ttft-runs", type=int, default=5)
    ap.add_argument("--spinel", default=str(ROOT / "target/release/spinel"))
    ap.add_argument("--llama-bin", help="llama.cpp's bin dir (default: ../shared/peers/llama-cpp.sh)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.rounds < 3:
        sys.exit("--rounds must be at least 3: the ratio is the median of the rounds'")

    spinel = Path(a.spinel)
    if not spinel.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "spinel-cli"], cwd=ROOT, check=True)
    llama = Path(a.llama_bin) if a.llama_bin else llama_bin()
    models = [Path(m) for m in a.models.split(",")] if a.models else DEFAULT_MODELS + SYNTHETIC_1B
    for m in models:
        if m in SYNTHETIC_1B:
            ensure_synthetic(spinel, m)
    threads = [int(t) for t in a.threads.split(",")]
    tests = [(a.n_prompt, 0)] if a.n_prompt > 0 else []
    tests += [(0, a.n_gen)] if a.n_gen > 0 else []

    load0 = os.getloadavg()
    results = []
    print(f"| {'model':<28} | {'test':>6} | {'t':>2} | {'spinel t/s':>18} | {'llama.cpp t/s':>18} "
          f"| {'ratio':>6} | {'round spread':>13} | {'RSS MiB s/l':>11} |")
    print(f"| {'-'*28} | {'-'*5}: | -: | {'-'*17}: | {'-'*17}: | {'-'*5}: | {'-'*12}: | {'-'*10}: |")
    for model in models:
        for t in threads:
            for p, n in tests:
                s_all, l_all, ratios, rss = [], [], [], {"spinel": 0.0, "llama": 0.0}
                for i in range(a.rounds):
                    r = bench_pair(spinel, llama, model, t, p, n, a.n_depth, a.repetitions, i % 2 == 1)
                    s_all += r["spinel"][0]
                    l_all += r["llama"][0]
                    ratios.append(statistics.mean(r["spinel"][0]) / statistics.mean(r["llama"][0]))
                    for k in rss:
                        rss[k] = max(rss[k], r[k][1])
                sm, ss = fmt_ts(s_all)
                lm, ls = fmt_ts(l_all)
                test = f"pp{p}" if n == 0 else f"tg{n}"
                test += f"@d{a.n_depth}" if a.n_depth else ""
                name = model.name.removeprefix("SmolLM2-135M-Instruct.").removesuffix(".gguf")
                rr = f"{min(ratios):.2f}..{max(ratios):.2f}"
                ratio = statistics.median(ratios)
                print(f"| {name:<28} | {test:>6} | {t:>2} | {ss} | {ls} | {ratio:6.2f} | {rr:>13} "
                      f"| {rss['spinel']:4.0f}/{rss['llama']:4.0f} |", flush=True)
                results.append({"model": str(model), "test": test, "n_threads": t,
                                "spinel_samples_ts": s_all, "llama_samples_ts": l_all,
                                "ratio": ratio, "round_ratios": ratios, "n_depth": a.n_depth,
                                "spinel_rss_mib": rss["spinel"], "llama_rss_mib": rss["llama"]})
    print()
    print(f"| {'model':<28} | {'t':>2} | {'spinel start→1st token':>22} | {'llama.cpp':>10} "
          f"| {'RSS MiB s/l':>11} |")
    print(f"| {'-'*28} | -: | {'-'*21}: | {'-'*9}: | {'-'*10}: |")
    for model in models:
        for t in threads:
            r = ttft(spinel, llama, model, t, a.ttft_runs)
            name = model.name.removeprefix("SmolLM2-135M-Instruct.").removesuffix(".gguf")
            print(f"| {name:<28} | {t:>2} | {r['spinel'][0] * 1e3:19.0f} ms | {r['llama'][0] * 1e3:7.0f} ms "
                  f"| {r['spinel'][1]:4.0f}/{r['llama'][1]:4.0f} |", flush=True)
            results.append({"model": str(model), "test": "start_to_first_token", "n_threads": t,
                            "spinel_s": r["spinel"][0], "llama_s": r["llama"][0],
                            "spinel_rss_mib": r["spinel"][1], "llama_rss_mib": r["llama"][1]})
    load1 = os.getloadavg()
    print(f"\nload average: {load0[0]:.2f} at start, {load1[0]:.2f} at end ({os.cpu_count()} CPUs); "
          f"spinel {spinel}, llama.cpp {llama}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
