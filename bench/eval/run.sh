#!/usr/bin/env bash
# Eval speed: `escale eval` against a PyTorch no_grad reference (torch_eval.py) on the same random 135M-class llama,
# tokenizer, text and windows, interleaved (escale, PyTorch, escale, PyTorch, ...), for each --batch.
#
#   bash bench/eval/run.sh [--escale BIN] [--out DIR] [--tokens 4097] [--window 512] [--batches "1 4"] [--pairs 3]
#
# Each run is timed as a whole process with /usr/bin/time -v (wall, user, sys, peak RSS; the model load and the
# tokenizer are in both sides' figures); PyTorch also reports its eval loop alone. Prints one JSON line per run to
# OUT/results.jsonl and a summary (medians over the pairs, and the median of the per-pair wall-time ratios).
# The model (OUT/model, ~270 MB) is made once with make_model.py in the oracle venv and reused.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
escale="$root/target/release/escale"
out="$root/bench/out/eval"
tokens=4097
window=512
batches="1 4"
pairs=3
py="${ESCALE_ORACLE_PYTHON:-/root/.cache/escale/oracle-venv/bin/python}"
while [ $# -gt 0 ]; do
  case "$1" in
    --escale) escale="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --tokens) tokens="$2"; shift 2 ;;
    --window) window="$2"; shift 2 ;;
    --batches) batches="$2"; shift 2 ;;
    --pairs) pairs="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$escale" ] || { echo "no escale binary at $escale (cargo build --release -p escale, or --escale BIN)" >&2; exit 2; }
"$py" -c "import torch, transformers, tokenizers" || { echo "need torch, transformers and tokenizers in $py" >&2; exit 2; }
shared="$root/../shared/testdata"
[ -d "$shared" ] || { echo "test data not found at $shared (tokenizer and text)" >&2; exit 2; }
mkdir -p "$out"
model="$out/model"
[ -f "$model/model.safetensors" ] || "$py" "$here/make_model.py" --out "$model" --tokenizer "$shared/models/stories260K/tokenizer.json" >/dev/null
text="$shared/corpus/en/tinyshakespeare.txt"
results="$out/results.jsonl"
: > "$results"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$out/load.txt"

# timed NAME BATCH CMD...: runs CMD under /usr/bin/time -v, appends a JSON line with its figures (and the
# command's own last JSON line, if any) to $results.
timed() {
  local name="$1" batch="$2"; shift 2
  local log="$out/$name-b$batch.log"
  /usr/bin/time -v "$@" >"$log.out" 2>"$log.time"
  "$py" - "$name" "$batch" "$log.out" "$log.time" >>"$results" <<'PY'
import json, sys
name, batch, out, tm = sys.argv[1:5]
f = {}
for line in open(tm):
    k, _, v = line.strip().rpartition(": ")
    f[k] = v
h, m, s = ([0, 0] + f["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":"))[-3:]
rec = {"side": name, "batch": int(batch), "wall_s": int(h) * 3600 + int(m) * 60 + float(s),
       "user_s": float(f["User time (seconds)"]), "sys_s": float(f["System time (seconds)"]),
       "peak_rss_mb": int(f["Maximum resident set size (kbytes)"]) / 1024}
last = [l for l in open(out).read().splitlines() if l.strip()]
try:
    own = json.loads("".join(last[last.index("{"):])) if "{" in last else json.loads(last[-1])
    rec["tokens"] = own.get("tokens"); rec["loss"] = own.get("loss")
    if "loop_s" in own:
        rec["loop_s"] = own["loop_s"]
except Exception:
    pass
print(json.dumps(rec))
PY
  tail -n1 "$results"
}

for p in $(seq 1 "$pairs"); do
  for b in $batches; do
    timed escale "$b" "$escale" eval "$model" --text "$text" --window "$window" --batch "$b" --max-tokens "$tokens" --json
    timed pytorch "$b" "$py" "$here/torch_eval.py" "$model" "$text" --window "$window" --batch "$b" --max-tokens "$tokens"
  done
done

"$py" - "$results" <<'PY' | tee "$out/summary.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = statistics.median
print("| side | batch | tokens | loss | wall s | user s | sys s | peak RSS MB | PyTorch loop s |")
print("|---|---|---|---|---|---|---|---|---|")
for b in sorted({r["batch"] for r in rows}):
    for side in ("escale", "pytorch"):
        rs = [r for r in rows if r["side"] == side and r["batch"] == b]
        loop = f'{med([r["loop_s"] for r in rs]):.1f}' if all("loop_s" in r for r in rs) else "-"
        print(f'| {side} | {b} | {rs[0].get("tokens")} | {rs[0].get("loss") or 0:.4f} | {med([r["wall_s"] for r in rs]):.1f} | '
              f'{med([r["user_s"] for r in rs]):.1f} | {med([r["sys_s"] for r in rs]):.1f} | {med([r["peak_rss_mb"] for r in rs]):.0f} | {loop} |')
    e = [r for r in rows if r["side"] == "escale" and r["batch"] == b]
    t = [r for r in rows if r["side"] == "pytorch" and r["batch"] == b]
    ratios = [y["wall_s"] / x["wall_s"] for x, y in zip(e, t)]
    print(f"batch {b}: PyTorch wall / escale wall, median of {len(ratios)} pairs {med(ratios):.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}); >1 means escale is faster")
PY
