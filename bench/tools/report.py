#!/usr/bin/env python3
"""Turns bench/run.sh's raw rows (raw.tsv) into results.json (every run plus summaries, ratios and target
verdicts) and tables.md (the Markdown tables of BENCHMARKS.md). Ratios are always against a reference measured in
the same invocation."""
import argparse
import json
import math
import os
import statistics

GIB_KIB = 1024 * 1024
CASE_TITLES = {
    "disk": "Disk floor (dd)",
    "scale_out": "Scale-out: 1.1B llama -> 8 experts top-2 (mixtral)",
    "scale_up": "Scale-up: 1.1B -> hidden 2560, FFN 7040, 40 heads, 28 layers (aki-pro)",
    "depth_up": "Scale-up depth only: 22 -> 34 layers",
    "train": "Training throughput and memory: escale vs PyTorch eager (f32, AdamW, three configs)",
    "eval": "Evaluation speed: `escale eval` vs PyTorch no_grad (135M-class llama, 512-token windows, whole processes)",
    "data": "Data: tokenization with the Qwen3 tokenizer",
}


def read_raw(path):
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 8:
                continue
            case, variant, run, status, wall, rss, nbytes, note = parts[:8]
            rows.append({"case": case, "variant": variant, "run": int(run), "status": status,
                         "wall_s": float(wall), "peak_rss_kib": int(float(rss or 0)), "bytes": int(float(nbytes or 0)),
                         "note": note})
    return rows


def summarize(rows):
    ok = [r for r in rows if r["status"] == "ok"]
    s = {"runs": rows, "ok_runs": len(ok)}
    statuses = sorted({r["status"] for r in rows})
    s["status"] = "ok" if ok else (statuses[0] if len(statuses) == 1 else "error")
    notes = sorted({r["note"] for r in rows if r["note"]})
    if notes:
        s["note"] = "; ".join(notes)
    if ok:
        walls = [r["wall_s"] for r in ok]
        s["wall_s"] = {"median": statistics.median(walls), "min": min(walls), "max": max(walls)}
        s["peak_rss_kib"] = max(r["peak_rss_kib"] for r in ok)
        s["bytes"] = int(statistics.median([r["bytes"] for r in ok]))
        if s["bytes"] > 0:
            s["mb_per_s"] = s["bytes"] / 1e6 / s["wall_s"]["median"]
    return s


def target(name, value, op, limit, unit=""):
    if value is None or not math.isfinite(value):
        return {"name": name, "value": None, "target": f"{op} {limit}{unit}", "met": None}
    met = value <= limit if op == "<=" else value >= limit if op == ">=" else value < limit
    return {"name": name, "value": value, "target": f"{op} {limit}{unit}", "met": met}


def med(v, key="wall_s"):
    if v and v.get("status") == "ok":
        return v[key]["median"]
    return None


def growth(case, vs, floor_target, rss_target):
    out = {"targets": []}
    e, rd, wr = vs.get("escale"), vs.get("floor_read"), vs.get("floor_write")
    floor = med(rd) + med(wr) if med(rd) is not None and med(wr) is not None else None
    out["floor_s"] = floor
    if floor is not None and med(e) is not None:
        out["ratio_to_floor"] = med(e) / floor
    if floor_target:
        out["targets"].append(target("wall time / disk floor", out.get("ratio_to_floor"), "<=", 1.2, "x"))
    else:
        out["ratio_to_floor_info"] = True
    if rss_target and e and e.get("status") == "ok":
        out["targets"].append(target("peak RSS (GiB)", e["peak_rss_kib"] / GIB_KIB, "<=", 0.5, " GiB"))
    elif rss_target:
        out["targets"].append(target("peak RSS (GiB)", None, "<=", 0.5, " GiB"))
    mk = {k: v for k, v in vs.items() if k.startswith("mergekit") and v.get("status") == "ok"}
    if mk:
        best_name = min(mk, key=lambda k: mk[k]["wall_s"]["median"])
        out["mergekit_best"] = best_name
        if med(e) is not None:
            out["speedup_vs_mergekit"] = mk[best_name]["wall_s"]["median"] / med(e)
    if case == "scale_out":
        sp = out.get("speedup_vs_mergekit")
        t = target("speed-up vs mergekit-moe best", sp, ">=", 2.5, "x")
        if sp is None:
            t["note"] = (vs.get("mergekit") or {}).get("note", "mergekit not measured")
        out["targets"].append(t)
    return out


def train_summary(train_json):
    """bench/train/bench.py's train-results.json: per config the interleaved pairs, a summary (median ratio with
    min-max, each side's median tokens/s, peak RSS and MFU) and verdicts (none when the machine was busy)."""
    if not train_json or not os.path.exists(train_json):
        return None
    with open(train_json) as f:
        raw = json.load(f)
    targets = []
    for name, c in raw.get("configs", {}).items():
        for v in c.get("verdicts", []):
            targets.append({"name": f"{name}: {v['what']}", "value": v["value"], "target": v["what"], "met": v["met"],
                            "text": v["verdict"]})
    return {"raw": raw, "targets": targets}


def eval_summary(eval_jsonl):
    """bench/eval/run.sh's results.jsonl (one line per run: side, batch, wall/user/sys s, peak RSS MB, loss): per
    batch each side's medians and the median of the per-pair wall-time ratios PyTorch / escale (pairs in run order),
    and the targets of issue 16: escale at least as fast as PyTorch no_grad, and batch 4 never slower than batch 1."""
    if not eval_jsonl or not os.path.exists(eval_jsonl):
        return None
    with open(eval_jsonl) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    batches, targets = {}, []
    for b in sorted({r["batch"] for r in rows}):
        e = [r for r in rows if r["side"] == "escale" and r["batch"] == b]
        t = [r for r in rows if r["side"] == "pytorch" and r["batch"] == b]
        if not e or not t:
            continue
        ratios = [y["wall_s"] / x["wall_s"] for x, y in zip(e, t)]
        side = lambda rs, k: statistics.median([r[k] for r in rs])  # noqa: E731
        batches[b] = {"pairs": len(ratios), "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                      "ratio_max": max(ratios), "loss": e[0].get("loss"), "pytorch_loss": t[0].get("loss"),
                      "tokens": e[0].get("tokens"),
                      **{f"{n}_{k}": side(rs, k) for n, rs in (("escale", e), ("pytorch", t))
                         for k in ("wall_s", "user_s", "sys_s", "peak_rss_mb")}}
        targets.append(target(f"batch {b}: PyTorch wall / escale wall", batches[b]["ratio_median"], ">=", 1.0, "x"))
    if len(batches) > 1:
        lo, hi = min(batches), max(batches)
        slower = batches[hi]["escale_wall_s"] / batches[lo]["escale_wall_s"]
        targets.append(target(f"escale wall at batch {hi} / batch {lo}", slower, "<=", 1.0, "x"))
    return {"batches": batches, "targets": targets}


def fmt_s(s):
    w = s.get("wall_s")
    if not w:
        return "-"
    return f"{w['median']:.2f} ({w['min']:.2f}-{w['max']:.2f})"


def fmt_rss(s):
    k = s.get("peak_rss_kib")
    if not k:
        return "-"
    return f"{k / 1024:.0f} MiB" if k < GIB_KIB else f"{k / GIB_KIB:.2f} GiB"


def fmt_gb(n):
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def verdict(t):
    if "text" in t:  # bench/train's verdicts come worded (or withheld on a busy machine)
        return f"{t['name']} = {t['value']:.2f}: {t['text']}"
    if t["met"] is None:
        return f"{t['name']} {t['target']}: not measured"
    v = t["value"]
    return f"{t['name']} = {v:.2f} (target {t['target']}): {'met' if t['met'] else '**NOT met**'}"


VARIANT_LABEL = {
    "escale": "escale",
    "floor_read": "disk floor: cold read of the input (dd)",
    "floor_write": "disk floor: fdatasync'd write of the output size (dd)",
    "mergekit_default": "mergekit-moe 0.1.5 (default)",
    "mergekit_shard1B": "mergekit-moe 0.1.5 (--out-shard-size 1B)",
    "mergekit_passthrough": "mergekit-yaml 0.1.5 passthrough (SOLAR slices)",
    "mergekit": "mergekit",
    "python_tokenizers": "Python tokenizers 0.23 encode_batch",
    "harness": "bench/train/run.sh",
}


def table(case, c):
    lines = [f"### {CASE_TITLES.get(case, case)}", ""]
    if case == "eval":
        ev = c.get("eval")
        if not ev:
            lines.append(f"Not measured: {c.get('note', 'no results')}")
            return lines
        lines += ["| batch | tokens | loss escale / PyTorch | wall s escale / PyTorch | user s | sys s | "
                  "peak RSS MB | PyTorch wall / escale wall, median (min-max) |", "|---|---|---|---|---|---|---|---|"]
        for b, r in ev["batches"].items():
            lines.append(f"| {b} | {r['tokens']} | {r['loss'] or 0:.4f} / {r['pytorch_loss'] or 0:.4f} | "
                         f"{r['escale_wall_s']:.1f} / {r['pytorch_wall_s']:.1f} | {r['escale_user_s']:.1f} / "
                         f"{r['pytorch_user_s']:.1f} | {r['escale_sys_s']:.1f} / {r['pytorch_sys_s']:.1f} | "
                         f"{r['escale_peak_rss_mb']:.0f} / {r['pytorch_peak_rss_mb']:.0f} | "
                         f"{r['ratio_median']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}), {r['pairs']} pairs |")
        lines += [""] + [verdict(t) for t in ev["targets"]]
        return lines
    if case == "train":
        t = c.get("train")
        if not t:
            lines.append(f"Not measured: {c.get('note', 'no results')}")
            return lines
        raw = t["raw"]
        m = raw["machine"]
        if raw.get("busy_note"):
            lines += [f"**No verdicts: {raw['busy_note']}.**", ""]
        lines += [f"{raw['pairs']} interleaved pairs per config, {raw['threads']} threads a side; load average "
                  f"{m['loadavg_start']} at the start, {m['loadavg_end']} at the end; MFU against the f32 matmul peak "
                  f"measured in the same run, {raw['peak_gflops']:.0f} GFLOP/s.", "",
                  "| config | escale tokens/s | PyTorch tokens/s | ratio, median (min-max) | escale / PyTorch MFU | "
                  "escale / PyTorch peak RSS | verdicts |", "|---|---|---|---|---|---|---|"]
        for name, cfg in raw["configs"].items():
            sm = cfg["summary"]
            mfu = "-" if sm.get("escale_mfu") is None else f"{100 * sm['escale_mfu']:.1f}% / {100 * sm['pytorch_mfu']:.1f}%"
            verdicts = "; ".join(v["verdict"] for v in cfg["verdicts"]) if not raw.get("busy_note") else "none (busy)"
            lines.append(f"| {cfg['title']} | {sm['escale_tokens_per_s']:,.0f} | {sm['pytorch_tokens_per_s']:,.0f} | "
                         f"{sm['ratio_median']:.2f}x ({sm['ratio_min']:.2f}-{sm['ratio_max']:.2f}) | {mfu} | "
                         f"{fmt_rss({'peak_rss_kib': sm['escale_peak_rss_kib']})} / "
                         f"{fmt_rss({'peak_rss_kib': sm['pytorch_peak_rss_kib']})} | {verdicts} |")
        base = next((c["summary"].get("pytorch_rss_after_import_kib") for c in raw["configs"].values()), None)
        if base:
            lines += ["", f"Peak RSS is each whole process's; PyTorch's holds {fmt_rss({'peak_rss_kib': base})} after "
                          "`import torch` alone, before any model exists."]
    else:
        vs = c["variants"]
        ref_col = {"scale_out": "vs escale", "scale_up": "vs escale", "depth_up": "vs escale", "data": "throughput vs Python",
                   "disk": ""}[case]
        lines += [f"| what | runs | wall s, median (min-max) | peak RSS | size | MB/s | {ref_col} |", "|---|---|---|---|---|---|---|"]
        esc = med(vs.get("escale"))
        for name, s in vs.items():
            label = VARIANT_LABEL.get(name, name)
            if s["status"] != "ok":
                lines.append(f"| {label} | 0 | {s['status'].replace('_', ' ')}: {s.get('note', '')} | | | | |")
                continue
            rel = ""
            if case == "data" and name == "python_tokenizers" and esc:
                rel = "1.00 (reference)"
            elif case == "data" and name == "escale" and c.get("ratio_to_python") is not None:
                rel = f"{c['ratio_to_python']:.2f}x"
            elif case != "data" and case != "disk" and esc and name != "escale" and not name.startswith("floor"):
                rel = f"{s['wall_s']['median'] / esc:.2f}x slower" if s['wall_s']['median'] >= esc else f"{esc / s['wall_s']['median']:.2f}x faster"
            mbs = (f"{s['mb_per_s']:.0f}" if s['mb_per_s'] >= 10 else f"{s['mb_per_s']:.2f}") if s.get("mb_per_s") else "-"
            size = fmt_gb(s["bytes"]) if s.get("bytes") else "-"
            lines.append(f"| {label} | {s['ok_runs']} | {fmt_s(s)} | {fmt_rss(s) if not name.startswith('floor') else '-'} | {size} | {mbs} | {rel} |")
        if c.get("floor_s") is not None:
            r = c.get("ratio_to_floor")
            lines += ["", f"Disk floor (median read + median write): {c['floor_s']:.2f} s"
                      + (f"; escale / floor = **{r:.2f}x**." if r is not None else ".")]
    if c.get("targets"):
        lines += [""] + [f"- {verdict(t)}" for t in c["targets"]]
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--ref-runs", type=int, required=True)
    ap.add_argument("--smoke", type=int, default=0)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--model-note", default="")
    ap.add_argument("--mergekit-note", default="")
    ap.add_argument("--train-json", default="")
    ap.add_argument("--eval-jsonl", default="")
    ap.add_argument("--logs", default="")
    a = ap.parse_args()
    rows = read_raw(a.raw)
    with open(a.machine) as f:
        machine = json.load(f)
    cases = {}
    for case in a.cases.split():
        crow = [r for r in rows if r["case"] == case]
        variants = {}
        for r in crow:
            variants.setdefault(r["variant"], []).append(r)
        vs = {k: summarize(v) for k, v in variants.items()}
        c = {"variants": vs}
        if case == "scale_out":
            c.update(growth(case, vs, True, True))
        elif case == "scale_up":
            c.update(growth(case, vs, True, True))
        elif case == "depth_up":
            c.update(growth(case, vs, False, False))
        elif case == "disk":
            rd, wr = vs.get("floor_read"), vs.get("floor_write")
            c["read_mb_per_s"] = rd.get("mb_per_s") if rd else None
            c["write_mb_per_s"] = wr.get("mb_per_s") if wr else None
        elif case == "data":
            e, p = vs.get("escale"), vs.get("python_tokenizers")
            c["targets"] = []
            ratio = None
            if e and p and e.get("mb_per_s") and p.get("mb_per_s"):
                ratio = e["mb_per_s"] / p["mb_per_s"]
            c["ratio_to_python"] = ratio
            c["targets"].append(target("MB/s vs Python tokenizers", ratio, ">=", 0.9, "x"))
            rss = e["peak_rss_kib"] / GIB_KIB if e and e.get("status") == "ok" else None
            c["targets"].append(target("peak RSS (GiB)", rss, "<", 1.0, " GiB"))
        elif case == "eval":
            ev = eval_summary(a.eval_jsonl)
            if ev:
                c["eval"] = ev
                c["targets"] = ev["targets"]
            else:
                c["note"] = "; ".join(v.get("note", "") for v in vs.values() if v.get("note")) or "not measured"
        elif case == "train":
            t = train_summary(a.train_json)
            if t:
                c["train"] = t
                c["targets"] = t["targets"]
            else:
                c["note"] = "; ".join(v.get("note", "") for v in vs.values() if v.get("note")) or "not measured"
        statuses = [v["status"] for v in vs.values()]
        esc = vs.get("escale") or vs.get("floor_read")
        c["status"] = esc["status"] if esc else ("ok" if "ok" in statuses else (statuses[0] if statuses else "missing"))
        cases[case] = c
    result = {"command": a.command, "smoke": bool(a.smoke), "runs": a.runs, "reference_runs": a.ref_runs,
              "duration_s": a.duration, "machine": machine, "source_model": a.model_note,
              "mergekit": a.mergekit_note or "installed", "cases": cases}
    md = [f"Command: `{a.command}` ({a.runs} runs per escale/floor row, {a.ref_runs} per reference row); "
          f"took {a.duration / 60:.1f} min.", "",
          f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']} RAM, disk {machine['disk']}; "
          f"kernel {machine['kernel']}; peak RSS via {machine['rss_method']}. "
          f"Load average (1/5/15 min) {machine.get('loadavg_start', '?')} at the start, {machine.get('loadavg_end', '?')} at the end "
          f"(the machine is shared with other engineers' builds and tests).", ""]
    if a.smoke:
        md += ["**Smoke mode**: tiny shapes, one run; the numbers and verdicts below say nothing about performance.", ""]
    if a.model_note:
        md += [a.model_note[0].upper() + a.model_note[1:] + ".", ""]
    for case, c in cases.items():
        md += table(case, c) + [""]
        if case == "data" and a.logs and os.path.exists(os.path.join(a.logs, "data-sources.txt")):
            with open(os.path.join(a.logs, "data-sources.txt")) as f:
                c["text"] = f.read().strip()
            md += [f"Text: {c['text']}.", ""]
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2, allow_nan=False, default=lambda x: None)
    with open(os.path.join(a.out, "tables.md"), "w") as f:
        f.write("\n".join(md))


if __name__ == "__main__":
    main()
