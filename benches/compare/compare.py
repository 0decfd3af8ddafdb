#!/usr/bin/env python3
"""Spinel against llama.cpp on the same GGUF files, side by side.

For every model, thread count and test (ppP, tgN) it runs `spinel bench` and
`llama-bench` alternately (--rounds times each, -r timed runs per process,
after each tool's own warm-up), then prints one row per test with both
speeds, their ratio (spinel / llama.cpp) and each process's peak RSS. Then,
per model and thread count, the time from process start to the first
generated token: the wall time of `spinel run -n 1` and `llama-completion
-n 1` on the same short prompt (greedy, same context), which ends right
after that token (median of --ttft-runs).

    benches/compare/compare.py                 # the four SmolLM2 files, -t 1,2
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


def bench_pair(spinel, llama, model, threads, p, n, reps):
    """One alternation: spinel then llama.cpp; (samples_ts, rss) for each."""
    res = {}
    for tool in ("spinel", "llama"):
        if tool == "spinel":
            cmd = [spinel, "bench", "--json", "-m", model, "-p", p, "-n", n, "-t", threads, "-r", reps]
        else:
            cmd = [llama / "llama-bench", "-o", "json", "-m", model, "-p", p, "-n", n, "-t", threads, "-r", reps]
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
    ap.add_argument("-m", "--models", default=",".join(map(str, DEFAULT_MODELS)))
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-t", "--threads", default="1,2")
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="alternations per test")
    ap.add_argument("--ttft-runs", type=int, default=5)
    ap.add_argument("--spinel", default=str(ROOT / "target/release/spinel"))
    ap.add_argument("--llama-bin", help="llama.cpp's bin dir (default: ../shared/peers/llama-cpp.sh)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    spinel = Path(a.spinel)
    if not spinel.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "spinel-cli"], cwd=ROOT, check=True)
    llama = Path(a.llama_bin) if a.llama_bin else llama_bin()
    models = [Path(m) for m in a.models.split(",")]
    threads = [int(t) for t in a.threads.split(",")]
    tests = [(a.n_prompt, 0)] if a.n_prompt > 0 else []
    tests += [(0, a.n_gen)] if a.n_gen > 0 else []

    load0 = os.getloadavg()
    results = []
    print(f"| {'model':<28} | {'test':>6} | {'t':>2} | {'spinel t/s':>18} | {'llama.cpp t/s':>18} "
          f"| {'ratio':>6} | {'rounds':>13} | {'RSS MiB s/l':>11} |")
    print(f"| {'-'*28} | {'-'*5}: | -: | {'-'*17}: | {'-'*17}: | {'-'*5}: | {'-'*12}: | {'-'*10}: |")
    for model in models:
        for t in threads:
            for p, n in tests:
                s_all, l_all, ratios, rss = [], [], [], {"spinel": 0.0, "llama": 0.0}
                for _ in range(a.rounds):
                    r = bench_pair(spinel, llama, model, t, p, n, a.repetitions)
                    s_all += r["spinel"][0]
                    l_all += r["llama"][0]
                    ratios.append(statistics.mean(r["spinel"][0]) / statistics.mean(r["llama"][0]))
                    for k in rss:
                        rss[k] = max(rss[k], r[k][1])
                sm, ss = fmt_ts(s_all)
                lm, ls = fmt_ts(l_all)
                test = f"pp{p}" if n == 0 else f"tg{n}"
                name = model.name.removeprefix("SmolLM2-135M-Instruct.").removesuffix(".gguf")
                rr = f"{min(ratios):.2f}..{max(ratios):.2f}" if len(ratios) > 1 else f"{ratios[0]:.2f}"
                print(f"| {name:<28} | {test:>6} | {t:>2} | {ss} | {ls} | {sm / lm:6.2f} | {rr:>13} "
                      f"| {rss['spinel']:4.0f}/{rss['llama']:4.0f} |", flush=True)
                results.append({"model": str(model), "test": test, "n_threads": t,
                                "spinel_samples_ts": s_all, "llama_samples_ts": l_all,
                                "ratio": sm / lm, "round_ratios": ratios,
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
