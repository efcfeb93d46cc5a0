#!/usr/bin/env bash
# Training throughput and memory: escale's real training loop (the `bench_train` example, which calls
# escale_train::train) against the PyTorch eager reference (torch_reference.py), interleaved pair by pair, on
# three configs: standard (d=256, 6 layers, 8/4 heads, FFN 704, vocab 4096, seq 256, batch 8), its MoE form
# (8 experts, top-2) and the 135M class (d=576, 30 layers, 9/3 heads, FFN 1536, vocab 49152, tied, batch 4).
#
#   bash bench/train/run.sh [--pairs 3] [--configs standard,moe,135m] [--force] [--record] [--out DIR] ...
#
# Everything after the options below goes to bench/train/bench.py (see `--help` there). Env: PYTHON (interpreter
# with torch, default the oracle venv), BENCH_TRAIN_BIN (use this bench_train binary, no build).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$HOME/.cache/escale/oracle-venv/bin/python}"
bin="${BENCH_TRAIN_BIN:-}"
if [ -z "$bin" ]; then
  cd "$root"
  echo "[bench-train] building bench_train (release)" >&2
  cargo build --release -q -p escale-train --example bench_train >&2
  target="${CARGO_TARGET_DIR:-$root/target}"
  # A private copy: other builds may replace the binary while the benchmark runs.
  private="$(mktemp -d)"
  trap 'rm -rf "$private"' EXIT
  cp "$target/release/examples/bench_train" "$private/bench_train"
  bin="$private/bench_train"
fi
"$python" "$here/bench.py" --escale-bin "$bin" --python "$python" --command "bash bench/train/run.sh $*" "$@"
