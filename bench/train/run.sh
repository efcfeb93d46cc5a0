#!/usr/bin/env bash
# Training throughput: escale (candle, the real training loop) vs a PyTorch eager reference,
# same model and shapes (LLaMA-style d=256, 6 layers, 8 heads / 4 KV, FFN 704, vocab 4096,
# seq 256, batch 8, f32, AdamW), both in this invocation on this machine.
# Usage: bench/train/run.sh [extra options passed to both, e.g. --steps 10]
# Env: PYTHON (default: the oracle venv), PEAK_GFLOPS (machine f32 matmul peak, default 160).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$HOME/.cache/escale/oracle-venv/bin/python}"
peak="${PEAK_GFLOPS:-160}"
cd "$root"
cargo build --release -q -p escale-train --example bench_train
escale=$("$root/target/release/examples/bench_train" --peak-gflops "$peak" "$@")
torch=$("$python" "$here/torch_reference.py" "$@")
echo "escale:  $escale"
echo "pytorch: $torch"
"$python" - "$escale" "$torch" <<'PY'
import json, sys
e, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"escale_tokens_per_s": round(e["tokens_per_s"], 1),
                  "pytorch_tokens_per_s": round(t["tokens_per_s"], 1),
                  "ratio": round(e["tokens_per_s"] / t["tokens_per_s"], 3),
                  "escale_mfu": round(e["mfu"], 3),
                  "pytorch_mfu": round(e["mfu"] * t["tokens_per_s"] / e["tokens_per_s"], 3)}))
PY
