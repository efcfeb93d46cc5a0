#!/usr/bin/env python3
"""Training throughput and memory: escale's real training loop (the `bench_train` example) against the PyTorch
eager reference (torch_reference.py), interleaved: for each config, escale, PyTorch, escale, PyTorch, ...
(`--pairs` pairs), each run its own process, measured with `/usr/bin/time -v` (or wait4) for peak RSS.

Per config it reports the median of the per-pair tokens/s ratios (escale / PyTorch) with min-max, each side's
median tokens/s, MFU against an f32 matmul peak measured in the same run, and each side's peak RSS. It records
the load average at the start and end and refuses to write verdicts when the machine was busy at the start
(1-minute load average above 0.75 per core, 1.5 on 2 cores) unless --force.

This script needs only the Python standard library; PyTorch runs in the interpreter given by --python.
Usually called through bench/train/run.sh, which builds the escale side first.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# Shapes as the issue states them. Steps: enough for a stable median, small enough that 3 configs x 3 pairs stay
# under ~15 minutes on a quiet 2-core machine (the 135M config takes seconds per step on each side).
SHAPE_KEYS = ("hidden", "layers", "heads", "kv-heads", "ffn", "vocab", "seq-len", "batch", "experts", "top-k", "tied")
STANDARD = {"hidden": 256, "layers": 6, "heads": 8, "kv-heads": 4, "ffn": 704, "vocab": 4096, "seq-len": 256,
            "batch": 8, "experts": 0, "top-k": 2, "tied": 0}
CONFIGS = {
    "standard": {"title": "standard (d=256, 6 layers, 8/4 heads, FFN 704, vocab 4096, seq 256, batch 8)",
                 "shape": STANDARD, "warmup": 2, "steps": 10, "targets": [1.0, 1.3]},
    "moe": {"title": "MoE form of the standard config (8 experts, top-2)",
            "shape": {**STANDARD, "experts": 8}, "warmup": 2, "steps": 10, "targets": [1.0]},
    "135m": {"title": "135M class (d=576, 30 layers, 9/3 heads, FFN 1536, vocab 49152, tied, seq 256, micro-batch 4)",
             "shape": {"hidden": 576, "layers": 30, "heads": 9, "kv-heads": 3, "ffn": 1536, "vocab": 49152,
                       "seq-len": 256, "batch": 4, "experts": 0, "top-k": 2, "tied": 1},
             "warmup": 1, "steps": 5, "targets": [1.0]},
}
# --smoke: the same three kinds at toy sizes, one pair, so the plumbing can be checked in seconds.
SMOKE_SHAPE = {"hidden": 64, "layers": 2, "heads": 4, "kv-heads": 2, "ffn": 128, "vocab": 512, "seq-len": 32,
               "batch": 2, "experts": 0, "top-k": 2, "tied": 0}
SMOKE_CONFIGS = {
    "standard": {**CONFIGS["standard"], "title": "standard (toy shape)", "shape": SMOKE_SHAPE, "warmup": 1, "steps": 2},
    "moe": {**CONFIGS["moe"], "title": "MoE, 4 experts top-2 (toy shape)", "shape": {**SMOKE_SHAPE, "experts": 4},
            "warmup": 1, "steps": 2},
    "135m": {**CONFIGS["135m"], "title": "tied embeddings (toy shape)", "shape": {**SMOKE_SHAPE, "tied": 1, "vocab": 1024},
             "warmup": 1, "steps": 2},
}

PEAK_SNIPPET = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
a @ b
best = min((lambda t0: (a @ b, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
print(2 * 2048 ** 3 / best / 1e9)
"""


def log(msg):
    print(f"[bench-train {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def run_measured(cmd, log_path, time_bin):
    """Runs cmd as its own process; returns (rc, stdout, usage dict). Peak RSS from `/usr/bin/time -v` when
    available, else wait4's ru_maxrss of the child (an upper bound by this script's own few tens of MB: the child
    starts as a copy of it until exec)."""
    load1 = loadavg()[0]
    started = time.perf_counter()
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf, open(log_path, "w") as logf:
        full = [time_bin, "-v", "-o", tf.name] + cmd if time_bin else cmd
        proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=logf, text=True)
        out = proc.stdout.read()
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        usage = {"wall_s": round(time.perf_counter() - started, 3), "load1_before": load1,
                 "peak_rss_kib": ru.ru_maxrss, "user_s": ru.ru_utime, "sys_s": ru.ru_stime}
        if time_bin:
            fields = {}
            for line in tf.read().splitlines():
                key, _, val = line.strip().rpartition(": ")
                fields[key] = val
            usage["peak_rss_kib"] = int(fields.get("Maximum resident set size (kbytes)", 0))
            usage["cpu_percent"] = fields.get("Percent of CPU this job got", "")
    with open(log_path, "a") as logf:
        logf.write(out)
    return rc, out, usage


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def shape_args(shape):
    return [x for k in SHAPE_KEYS for x in (f"--{k}", str(shape[k]))]


def measure_side(side, a, cfg, pair, logs):
    shape = cfg["shape"]
    common = shape_args(shape) + ["--steps", str(cfg["steps"]), "--warmup", str(cfg["warmup"]), "--threads", str(a.threads)]
    if side == "escale":
        cmd = [a.escale_bin] + common
    else:
        cmd = [a.python, os.path.join(HERE, "torch_reference.py")] + common
    log_path = os.path.join(logs, f"{cfg['name']}.{side}.{pair}.log")
    log(f"{cfg['name']} pair {pair}: {side}")
    rc, out, usage = run_measured(cmd, log_path, a.time_bin)
    res = last_json(out) if rc == 0 else None
    if res is None:
        tail = open(log_path).read().strip().splitlines()[-3:]
        raise SystemExit(f"bench-train: {side} failed on {cfg['name']} (exit {rc}); log {log_path}:\n" + "\n".join(tail))
    res.update(usage)
    log(f"  -> {res['tokens_per_s']:,.1f} tokens/s, peak RSS {usage['peak_rss_kib'] / 1024:,.0f} MiB, {usage['wall_s']:.0f} s")
    return res


def summarize(cfg, pairs, peak_gflops):
    ratios = [p["ratio"] for p in pairs]
    e_tps = [p["escale"]["tokens_per_s"] for p in pairs]
    t_tps = [p["pytorch"]["tokens_per_s"] for p in pairs]
    e_rss = [p["escale"]["peak_rss_kib"] for p in pairs]
    t_rss = [p["pytorch"]["peak_rss_kib"] for p in pairs]
    flops_per_token = pairs[0]["escale"]["flops_per_token"]
    mfu = lambda tps: flops_per_token * tps / (peak_gflops * 1e9) if peak_gflops else None
    s = {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
         "escale_tokens_per_s": statistics.median(e_tps), "pytorch_tokens_per_s": statistics.median(t_tps),
         "escale_peak_rss_kib": int(statistics.median(e_rss)), "pytorch_peak_rss_kib": int(statistics.median(t_rss)),
         "escale_peak_rss_kib_max": max(e_rss), "pytorch_peak_rss_kib_max": max(t_rss),
         "flops_per_token": flops_per_token,
         "pytorch_rss_after_import_kib": pairs[0]["pytorch"].get("rss_after_import_kib")}
    s["memory_ratio"] = s["escale_peak_rss_kib"] / s["pytorch_peak_rss_kib"] if s["pytorch_peak_rss_kib"] else None
    s["escale_mfu"] = mfu(s["escale_tokens_per_s"])
    s["pytorch_mfu"] = mfu(s["pytorch_tokens_per_s"])
    return s


def verdicts(cfg, s, busy_note):
    out = []
    for target in cfg["targets"]:
        met = s["ratio_median"] >= target
        out.append({"what": f"tokens/s >= {target:.1f}x PyTorch eager (median of pairs)", "value": round(s["ratio_median"], 3),
                    "met": None if busy_note else met,
                    "verdict": busy_note or (f">= {target:.1f}x met" if met else f">= {target:.1f}x NOT met")})
    if s["memory_ratio"] is not None:
        met = s["memory_ratio"] <= 1.0
        out.append({"what": "peak RSS <= PyTorch's (medians)", "value": round(s["memory_ratio"], 3),
                    "met": None if busy_note else met,
                    "verdict": busy_note or ("memory <= PyTorch met" if met else "memory <= PyTorch NOT met")})
    return out


def mib(kib):
    return f"{kib / 1024:,.0f} MiB" if kib < 1024 * 1024 else f"{kib / 1024 / 1024:.2f} GiB"


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown(result):
    m = result["machine"]
    lines = [f"Command: `{result['command']}`; {result['duration_s'] / 60:.1f} min; {result['pairs']} interleaved pairs "
             f"(escale, PyTorch, escale, ...) per config, {result['threads']} threads each side.",
             f"Machine: {m['nproc']} CPUs ({m['cpu']}); load average (1/5/15 min) {m['loadavg_start']} at the start, "
             f"{m['loadavg_end']} at the end. f32 matmul peak measured in this run (PyTorch 2048^3, best of 5): "
             f"{result['peak_gflops']:.1f} GFLOP/s. Peak RSS via {result['rss_method']}.", ""]
    if result.get("busy_note"):
        lines += [f"**No verdicts: {result['busy_note']}.**", ""]
    lines += ["| config | steps (warm-up) | escale tokens/s | PyTorch tokens/s | ratio, median (min-max) | escale MFU | "
              "PyTorch MFU | escale peak RSS | PyTorch peak RSS | verdicts |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in result["configs"].items():
        s = c["summary"]
        v = "; ".join(x["verdict"] for x in c["verdicts"]) if not result.get("busy_note") else "none (busy)"
        lines.append(f"| {c['title']} | {c['steps']} ({c['warmup']}) | {s['escale_tokens_per_s']:,.0f} | "
                     f"{s['pytorch_tokens_per_s']:,.0f} | **{s['ratio_median']:.2f}x** ({s['ratio_min']:.2f}-{s['ratio_max']:.2f}) | "
                     f"{pct(s['escale_mfu'])} | {pct(s['pytorch_mfu'])} | {mib(s['escale_peak_rss_kib'])} | "
                     f"{mib(s['pytorch_peak_rss_kib'])} | {v} |")
    base = next((c["summary"].get("pytorch_rss_after_import_kib") for c in result["configs"].values()), None)
    if base:
        lines += ["", f"Peak RSS is each whole process's. PyTorch's process holds {mib(base)} after `import torch` "
                      "alone (its libraries), before any model exists; that is part of its figure."]
    return "\n".join(lines) + "\n"


def machine_cpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def settle(threshold, max_wait):
    """Waits (up to max_wait s) for the 1-minute load average to drop to the threshold: a build that just
    finished (run.sh's own) keeps it high for a minute or two after the CPUs are idle."""
    deadline = time.monotonic() + max_wait
    while loadavg()[0] > threshold and time.monotonic() < deadline:
        log(f"1-min load average {loadavg()[0]:.2f} > {threshold:.2f}: waiting for the machine to settle")
        time.sleep(10)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--escale-bin", required=True, help="the release bench_train example binary")
    ap.add_argument("--python", default=os.path.expanduser("~/.cache/escale/oracle-venv/bin/python"),
                    help="interpreter with torch for the reference")
    ap.add_argument("--pairs", type=int, help="interleaved escale/PyTorch pairs per config (default 3; 1 with --smoke)")
    ap.add_argument("--configs", default="standard,moe,135m", help="comma-separated: standard, moe, 135m")
    ap.add_argument("--steps", type=int, help="measured steps per run (default: per config)")
    ap.add_argument("--warmup", type=int, help="warm-up steps per run (default: per config)")
    ap.add_argument("--threads", type=int, default=2, help="threads for each side (default 2)")
    ap.add_argument("--force", action="store_true", help="write verdicts even when the machine was busy at the start")
    ap.add_argument("--settle", type=float, default=120, help="max seconds to wait for a quiet machine first (default 120)")
    ap.add_argument("--smoke", action="store_true", help="toy shapes, one pair: checks the plumbing only")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "train"), help="output folder")
    ap.add_argument("--record", action="store_true", help="also copy the JSON to bench/results/ (to commit)")
    ap.add_argument("--command", default="", help="the command line to record (run.sh passes its own)")
    a = ap.parse_args()
    table = SMOKE_CONFIGS if a.smoke else CONFIGS
    names = [n.strip() for n in a.configs.split(",") if n.strip()]
    for n in names:
        if n not in table:
            ap.error(f"unknown config {n} (configs: {', '.join(table)})")
    if a.pairs is None:
        a.pairs = 1 if a.smoke else 3
    if a.pairs < 1:
        ap.error("--pairs must be at least 1")
    if not os.access(a.escale_bin, os.X_OK):
        ap.error(f"--escale-bin {a.escale_bin}: not an executable")
    a.time_bin = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    os.makedirs(a.out, exist_ok=True)
    logs = os.path.join(a.out, "logs")
    os.makedirs(logs, exist_ok=True)

    nproc = os.cpu_count() or 1
    threshold = 0.75 * nproc
    if not a.smoke and a.settle > 0:
        settle(threshold, a.settle)
    started = time.perf_counter()
    load_start = loadavg()
    busy_note = "smoke mode: toy shapes, the numbers say nothing about performance" if a.smoke else None
    if load_start[0] > threshold and not a.force and not a.smoke:
        busy_note = (f"the 1-minute load average was {load_start[0]:.2f} at the start, above {threshold:.2f} "
                     f"({nproc} CPUs): the machine was busy; rerun on a quiet machine or pass --force")
    log(f"load average at start: {load_start}; {'busy: no verdicts' if busy_note else 'quiet enough'}")
    peak = subprocess.run([a.python, "-c", PEAK_SNIPPET, str(a.threads)], capture_output=True, text=True, check=True)
    peak_gflops = float(peak.stdout.strip().splitlines()[-1])
    log(f"f32 matmul peak: {peak_gflops:.1f} GFLOP/s")

    result = {"command": a.command or " ".join(sys.argv), "smoke": a.smoke, "pairs": a.pairs, "threads": a.threads,
              "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "peak_gflops": peak_gflops, "rss_method": "/usr/bin/time -v" if a.time_bin else "wait4 ru_maxrss",
              "machine": {"nproc": nproc, "cpu": machine_cpu(), "kernel": platform.release(),
                          "loadavg_start": " ".join(f"{x:.2f}" for x in load_start), "busy_threshold": threshold},
              "busy_note": busy_note, "configs": {}}
    for name in names:
        cfg = dict(table[name], name=name)
        if a.steps:
            cfg["steps"] = a.steps
        if a.warmup is not None:
            cfg["warmup"] = a.warmup
        pairs = []
        for pair in range(1, a.pairs + 1):
            e = measure_side("escale", a, cfg, pair, logs)
            t = measure_side("pytorch", a, cfg, pair, logs)
            pairs.append({"pair": pair, "escale": e, "pytorch": t, "ratio": e["tokens_per_s"] / t["tokens_per_s"]})
            log(f"  pair {pair} ratio {pairs[-1]['ratio']:.3f}")
        s = summarize(cfg, pairs, peak_gflops)
        result["configs"][name] = {"title": cfg["title"], "shape": cfg["shape"], "steps": cfg["steps"],
                                   "warmup": cfg["warmup"], "pairs": pairs, "summary": s,
                                   "verdicts": verdicts(cfg, s, busy_note)}
    load_end = loadavg()
    result["machine"]["loadavg_end"] = " ".join(f"{x:.2f}" for x in load_end)
    result["duration_s"] = round(time.perf_counter() - started, 1)
    md = markdown(result)
    json_path = os.path.join(a.out, "train-results.json")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(a.out, "train-table.md"), "w") as f:
        f.write(md)
    if a.record:
        rec_dir = os.path.join(ROOT, "bench", "results")
        os.makedirs(rec_dir, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        shutil.copy(json_path, os.path.join(rec_dir, f"train-{stamp}.json"))
    sys.stderr.write(md)
    print(json.dumps({n: {"ratio": round(c["summary"]["ratio_median"], 3),
                          "escale_tokens_per_s": round(c["summary"]["escale_tokens_per_s"], 1),
                          "pytorch_tokens_per_s": round(c["summary"]["pytorch_tokens_per_s"], 1)}
                      for n, c in result["configs"].items()}))


if __name__ == "__main__":
    main()
