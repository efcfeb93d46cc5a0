#!/usr/bin/env bash
# escale benchmark harness: one command for every table of BENCHMARKS.md.
#
#   bash bench/run.sh [--runs N] [--only CASE[,CASE]] [--with-mergekit] [--smoke] [--out DIR] [--escale BIN]
#
# Cases: disk, scale_out, scale_up, depth_up, train, eval, data (see bench/README.md).
# Every figure is a ratio against a reference measured in the same invocation (disk floor with dd, mergekit,
# PyTorch, Python tokenizers). Writes DIR/results.json (raw runs + summaries) and DIR/tables.md.
# Large files live in DIR/work and are deleted on exit (--keep to keep them).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/bench/tools"
RUNS=3
REF_RUNS=1
ONLY=""
SMOKE=0
OUT="$ROOT/bench/out"
ESCALE=""
WITH_MERGEKIT=0
KEEP=0
DROP_CACHES=0
TIMEOUT_S=1800
TEXT_MB=100
PAIRS=3
TRAIN_CONFIGS=""
FORCE=0
RECORD=0
ALL_CASES="disk scale_out scale_up depth_up train eval data"
ARGV="$*"

usage() { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; cat <<'EOF'
Options:
  --runs N          runs per escale/floor measurement (default 3; medians, min, max)
  --ref-runs N      runs per slow reference (mergekit; default 1)
  --pairs N         train, eval: interleaved escale/PyTorch pairs per config or batch (default 3)
  --train-configs L train: comma-separated configs (standard, moe, 135m; default all three)
  --force           train: write verdicts even when the machine was busy at the start
  --record          train: also keep the raw JSON in bench/results/ (to commit)
  --only LIST       comma-separated cases to run
  --with-mergekit   install mergekit 0.1.5 into ~/.cache/escale/mergekit-venv (if needed) and run its rows
  --smoke           tiny models, one run, no mergekit, no PyTorch, no Python tokenizers: for the test suite
  --out DIR         output folder (default bench/out)
  --escale BIN      use this escale binary instead of building target/release/escale
  --drop-caches     evict with `echo 1 > /proc/sys/vm/drop_caches` (whole machine) instead of per file
  --text-mb N       MB of text for the data case (default 100)
  --keep            keep the large files in DIR/work
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --ref-runs) REF_RUNS="$2"; shift 2 ;;
    --only) ONLY="${2//,/ }"; shift 2 ;;
    --with-mergekit) WITH_MERGEKIT=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --escale) ESCALE="$2"; shift 2 ;;
    --drop-caches) DROP_CACHES=1; shift ;;
    --text-mb) TEXT_MB="$2"; shift 2 ;;
    --pairs) PAIRS="$2"; shift 2 ;;
    --train-configs) TRAIN_CONFIGS="$2"; shift 2 ;;
    --force) FORCE=1; shift ;;
    --record) RECORD=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ "$SMOKE" = 1 ]; then RUNS=1; REF_RUNS=1; WITH_MERGEKIT=0; TIMEOUT_S=300; fi
CASES="${ONLY:-$ALL_CASES}"
for c in $CASES; do
  case " $ALL_CASES " in *" $c "*) ;; *) echo "bench: unknown case $c (cases: $ALL_CASES)" >&2; exit 2 ;; esac
done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK="$OUT/work"
LOGS="$OUT/logs"
RAW="$OUT/raw.tsv"
rm -rf "$WORK" "$LOGS"
mkdir -p "$WORK" "$LOGS"
: > "$RAW"
rm -f "$OUT/train-results.json" "$OUT/eval/results.jsonl" "$OUT/results.json" "$OUT/tables.md"
cleanup() { [ "$KEEP" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT
T_START=$EPOCHREALTIME
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }
has_case() { case " $CASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
PY=$(command -v python3 || command -v python) || { echo "bench: python3 is required" >&2; exit 1; }
ORACLE_PY="${ESCALE_ORACLE_VENV:-$HOME/.cache/escale/oracle-venv}/bin/python"
SHARED="${ESCALE_SHARED:-$ROOT/../shared}"
[ -d "$SHARED" ] || SHARED=/work/shared
QWEN3="$SHARED/testdata/tokenizers/qwen3/tokenizer.json"

# ---------------------------------------------------------------------------------------------------------------
# Measurement. One row per run in raw.tsv: case variant run status wall_s peak_rss_kib bytes note
# Peak RSS: /usr/bin/time -v when present, else bench/tools/rusage.py (VmHWM polled from /proc + wait4).
TIME_BIN=""
if [ -z "${ESCALE_BENCH_NO_TIME:-}" ] && [ -x /usr/bin/time ] && /usr/bin/time -v true >/dev/null 2>&1; then
  TIME_BIN=/usr/bin/time
fi
RSS_METHOD=${TIME_BIN:+"/usr/bin/time -v"}
RSS_METHOD=${RSS_METHOD:-"bench/tools/rusage.py (VmHWM from /proc every 20 ms, and wait4 ru_maxrss)"}

record() { # case variant run status wall rss bytes note
  local note="${8//$'\t'/ }"; note="${note//$'\n'/ }"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$note" >> "$RAW"
}

# run_timed LOG -- cmd...   sets WALL (s), RSS (KiB), RC
run_timed() {
  local logf=$1; shift; [ "$1" = "--" ] && shift
  local t0 t1
  t0=$EPOCHREALTIME
  if [ -n "$TIME_BIN" ]; then
    timeout "$TIMEOUT_S" "$TIME_BIN" -v -o "$logf.time" "$@" > "$logf" 2>&1
  else
    "$PY" "$TOOLS/rusage.py" "$logf.time" "$TIMEOUT_S" -- "$@" > "$logf" 2>&1
  fi
  RC=$?
  t1=$EPOCHREALTIME
  RSS=$(awk -F': ' '/Maximum resident set size/{print $2}' "$logf.time" 2>/dev/null)
  WALL=$(awk -F': ' '/^Wall seconds/{print $2}' "$logf.time" 2>/dev/null)
  [ -n "$WALL" ] || WALL=$("$PY" -c "print(f'{$t1 - $t0:.4f}')")
  RSS=${RSS:-0}
}

# measure CASE VARIANT RUN BYTES_CMD -- cmd...   records one row. BYTES_CMD (eval'd after the run) prints bytes.
measure() {
  local case=$1 variant=$2 run=$3 bytes_cmd=$4; shift 4; [ "$1" = "--" ] && shift
  local logf="$LOGS/$case.$variant.$run.log" status note="" bytes=0
  log "$case/$variant run $run: $*"
  run_timed "$logf" -- "$@"
  if [ "$RC" = 0 ]; then
    status=ok
    [ -n "$bytes_cmd" ] && bytes=$(eval "$bytes_cmd" 2>/dev/null || echo 0)
  elif grep -q "is not implemented yet" "$logf" 2>/dev/null; then
    status=not_landed; note="command not implemented yet in this checkout"
  else
    status=error; note="exit $RC: $(grep -v '^\s*$' "$logf" | tail -n 3 | tr '\n' ' ' | cut -c1-400)"
  fi
  log "  -> $status ${WALL}s ${RSS} KiB ${note}"
  record "$case" "$variant" "$run" "$status" "$WALL" "$RSS" "$bytes" "$note"
  [ "$status" = ok ]
}

skip() { # case variant note
  log "$1/$2 skipped: $3"
  record "$1" "$2" 0 skipped 0 0 0 "$3"
}

dir_bytes() { # total bytes of the safetensors files in a folder
  local n=0 f
  for f in "$1"/*.safetensors; do [ -f "$f" ] && n=$((n + $(stat -c %s "$f"))); done
  echo "$n"
}

evict() { # cold cache for these files
  if [ "$DROP_CACHES" = 1 ]; then sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null && return; fi
  local f
  for f in "$@"; do
    if [ -d "$f" ]; then evict "$f"/*; elif [ -f "$f" ]; then dd if="$f" iflag=nocache count=0 status=none 2>/dev/null; fi
  done
}

# Disk floor: cold sequential read of the input folder's safetensors, fdatasync'd write of BYTES.
floor_read() { # case run src_dir
  local files=("$3"/*.safetensors)
  evict "${files[@]}"
  measure "$1" floor_read "$2" "dir_bytes $3" -- bash -c 'for f in "$@"; do dd if="$f" of=/dev/null bs=16M status=none || exit 1; done' _ "${files[@]}"
}
floor_write() { # case run bytes
  local bytes=$3 mib=$(( ($3 + 1048575) / 1048576 ))
  [ "$bytes" -gt 0 ] || { record "$1" floor_write "$2" error 0 0 0 "unknown output size"; return 1; }
  measure "$1" floor_write "$2" "stat -c %s $WORK/floor.bin" -- dd if=/dev/zero of="$WORK/floor.bin" bs=1M count="$mib" conv=fdatasync status=none
  rm -f "$WORK/floor.bin"
}

# ---------------------------------------------------------------------------------------------------------------
# Machine description.
machine_json() {
  local cpu mem disk
  cpu=$(lscpu 2>/dev/null | awk -F': *' '/^Model name/{print $2; exit}')
  mem=$(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)
  disk=$(df -h "$OUT" | awk 'NR==2{print $1" ("$2", "$5" used)"}')
  "$PY" - "$cpu" "$mem" "$disk" "$(nproc)" "$(uname -r)" "$RSS_METHOD" "$LOAD_START" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'EOF'
import json, sys
print(json.dumps({"cpu": sys.argv[1], "memory": sys.argv[2], "disk": sys.argv[3], "nproc": int(sys.argv[4]),
                  "kernel": sys.argv[5], "rss_method": sys.argv[6], "loadavg_start": sys.argv[7],
                  "loadavg_end": sys.argv[8]}))
EOF
}

# ---------------------------------------------------------------------------------------------------------------
# escale binary.
if [ -z "$ESCALE" ] && [ "$CASES" = "train" ]; then
  ESCALE=/bin/true  # the training case builds and runs its own binary (bench/train/run.sh)
elif [ -z "$ESCALE" ]; then
  log "building escale (release)"
  (cd "$ROOT" && cargo build --release -p escale) >&2 || { echo "bench: cargo build failed" >&2; exit 1; }
  # A private copy: other people's builds may replace target/release/escale during the run.
  cp "$ROOT/target/release/escale" "$WORK/escale" || exit 1
  ESCALE="$WORK/escale"
fi
[ -x "$ESCALE" ] || { echo "bench: no escale binary at $ESCALE" >&2; exit 1; }
log "escale: $ESCALE"

# Shapes. Full: the 1.1B llama of the issues. Smoke: a tiny model with the same proportions.
if [ "$SMOKE" = 1 ]; then
  SRC_SHAPE=(--layers 4 --hidden 64 --ffn 176 --heads 8 --kv-heads 2 --vocab 512)
  UP_ARGS=(--hidden 80 --intermediate 220 --heads 10 --layers 5 --method aki-pro)
  DEPTH_ARGS=(--layers 6)
  DEPTH_SLICES="0 3 1 4"  # mergekit passthrough slices (not run in smoke)
  TEXT_BYTES=1000000
else
  SRC_SHAPE=(--layers 22 --hidden 2048 --ffn 5632 --heads 32 --kv-heads 4 --vocab 32000)
  UP_ARGS=(--hidden 2560 --intermediate 7040 --heads 40 --layers 28 --method aki-pro)
  DEPTH_ARGS=(--layers 34)
  DEPTH_SLICES="0 17 5 22"  # SOLAR-style: layers [0,17) + [5,22) = 34
  TEXT_BYTES=$((TEXT_MB * 1000000))
fi
SRC="$WORK/src"
MODEL_NOTE=""

make_source() {
  [ -f "$SRC/config.json" ] && return 0
  rm -rf "$SRC"
  "$PY" "$TOOLS/make_model.py" --out "$WORK/src-config" "${SRC_SHAPE[@]}" --config-only || return 1
  log "creating the source model with escale init"
  if "$ESCALE" init --config "$WORK/src-config/config.json" --output "$SRC" --dtype bf16 > "$LOGS/init.log" 2>&1 \
      && ls "$SRC"/*.safetensors >/dev/null 2>&1; then
    MODEL_NOTE="source model: escale init (random, HF initialisation)"
  else
    rm -rf "$SRC"
    log "escale init unavailable ($(tail -n 1 "$LOGS/init.log")); falling back"
    if [ "$SMOKE" = 0 ] && [ -x "$ORACLE_PY" ] && "$ORACLE_PY" -c "import transformers, torch" 2>/dev/null; then
      "$ORACLE_PY" "$TOOLS/make_model.py" --out "$SRC" "${SRC_SHAPE[@]}" --backend transformers >&2 || return 1
      MODEL_NOTE="source model: transformers LlamaForCausalLM random initialisation, bf16 (escale init not available)"
    else
      "$PY" "$TOOLS/make_model.py" --out "$SRC" "${SRC_SHAPE[@]}" --backend plain >&2 || return 1
      MODEL_NOTE="source model: bench/tools/make_model.py plain backend (tiled N(0,0.02) bf16; escale init not available)"
    fi
  fi
  # mergekit-moe loads a tokenizer from the base model folder: give it one (Qwen3's; ids are not used).
  if [ -f "$QWEN3" ] && [ ! -f "$SRC/tokenizer.json" ]; then
    cp "$QWEN3" "$SRC/tokenizer.json"
    echo '{"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}' > "$SRC/tokenizer_config.json"
  fi
  evict "$SRC"
}

MERGEKIT_BIN=""
MERGEKIT_NOTE=""
setup_mergekit() {
  [ -n "$MERGEKIT_BIN$MERGEKIT_NOTE" ] && return 0
  if [ "$SMOKE" = 1 ]; then MERGEKIT_NOTE="not run in smoke mode"; return 0; fi
  if [ "$WITH_MERGEKIT" = 0 ]; then MERGEKIT_NOTE="mergekit not requested (pass --with-mergekit)"; return 0; fi
  log "setting up mergekit 0.1.5"
  local out
  if out=$(bash "$TOOLS/setup_mergekit.sh" 2> "$LOGS/mergekit-setup.log"); then
    MERGEKIT_BIN=$(echo "$out" | tail -n 1)
  else
    MERGEKIT_NOTE="mergekit 0.1.5 could not be installed: $(tail -n 2 "$LOGS/mergekit-setup.log" | tr '\n' ' ' | cut -c1-300)"
  fi
}

# Has this escale subcommand landed? A stub (clap Args with no fields) lists no options or arguments in --help.
# (grep -c, not grep -q: -q exits at the first match, the grep before it then dies of SIGPIPE, and under pipefail
# a landed command read as a stub now and then.)
landed() {
  local n
  n=$("$ESCALE" "$1" --help 2>/dev/null | grep -vE -- '--(help|version)' | grep -cE '^\s+(-[A-Za-z], )?--[a-z]|^Arguments:')
  [ "${n:-0}" -gt 0 ]
}

# A growth case: for each run, floor read (cold) -> escale (cold input) -> floor write of escale's output size.
growth_case() { # case escale-subcommand args...
  local case=$1; shift
  local out="$WORK/$case.out" r bytes
  local is_landed=1
  if ! landed "$1"; then is_landed=0; skip "$case" escale "escale $1 has not landed in this checkout (stub)"; fi
  for r in $(seq 1 "$RUNS"); do
    floor_read "$case" "$r" "$SRC"
    rm -rf "$out"; evict "$SRC"
    if [ "$is_landed" = 1 ] && measure "$case" escale "$r" "dir_bytes $out" -- "$ESCALE" "$@" "$SRC" "$out"; then
      bytes=$(dir_bytes "$out")
      cp "$out/config.json" "$LOGS/$case.out-config.json" 2>/dev/null
    else
      bytes=$(expected_bytes "$case")
    fi
    rm -rf "$out"
    floor_write "$case" "$r" "$bytes"
  done
}

# Output size when escale could not tell us (for the floor row only): bf16 parameter count of the target.
expected_bytes() {
  "$PY" "$TOOLS/make_model.py" --out "$WORK/expected" "${SRC_SHAPE[@]}" --expected-bytes "$1" \
    --target "${UP_ARGS[*]}" --depth "${DEPTH_ARGS[1]}"
}

case_scale_out() {
  make_source || { skip scale_out escale "could not create the source model"; return; }
  growth_case scale_out scale-out --experts 8 --top-k 2
  setup_mergekit
  if [ -z "$MERGEKIT_BIN" ]; then skip scale_out mergekit "$MERGEKIT_NOTE"; return; fi
  local cfg="$WORK/moe.yml" i r out="$WORK/mergekit.out"
  { echo "base_model: $SRC"; echo "gate_mode: random"; echo "dtype: bfloat16"; echo "experts_per_token: 2"
    echo "experts:"; for i in 1 2 3 4 5 6 7 8; do echo "  - source_model: $SRC"; done; } > "$cfg"
  for r in $(seq 1 "$REF_RUNS"); do
    for variant in default shard1B; do
      local extra=(); [ "$variant" = shard1B ] && extra=(--out-shard-size 1B)
      rm -rf "$out"; evict "$SRC"
      # mergekit does not fsync its output; escale and the dd floor do. `sync FILE...` fsyncs just these files.
      measure scale_out "mergekit_$variant" "$r" "dir_bytes $out" -- bash -c \
        '"$0" "$@" && sync "${@: -1}"/*.safetensors' "$MERGEKIT_BIN/mergekit-moe" "${extra[@]}" "$cfg" "$out"
      rm -rf "$out"
    done
  done
}

case_scale_up() {
  make_source || { skip scale_up escale "could not create the source model"; return; }
  growth_case scale_up scale-up "${UP_ARGS[@]}"
}

case_depth_up() {
  make_source || { skip depth_up escale "could not create the source model"; return; }
  growth_case depth_up scale-up "${DEPTH_ARGS[@]}"
  setup_mergekit
  if [ -z "$MERGEKIT_BIN" ]; then skip depth_up mergekit "$MERGEKIT_NOTE"; return; fi
  local s=($DEPTH_SLICES) cfg="$WORK/passthrough.yml" out="$WORK/mergekit.out" r
  cat > "$cfg" <<EOF
slices:
  - sources:
      - model: $SRC
        layer_range: [${s[0]}, ${s[1]}]
  - sources:
      - model: $SRC
        layer_range: [${s[2]}, ${s[3]}]
merge_method: passthrough
dtype: bfloat16
EOF
  for r in $(seq 1 "$REF_RUNS"); do
    rm -rf "$out"; evict "$SRC"
    measure depth_up mergekit_passthrough "$r" "dir_bytes $out" -- bash -c \
      '"$0" "$@" && sync "${@: -1}"/*.safetensors' "$MERGEKIT_BIN/mergekit-yaml" "$cfg" "$out"
    rm -rf "$out"
  done
}

case_disk() {
  # Standalone disk numbers (the growth cases measure their own floors in the same runs).
  make_source || { skip disk floor_read "could not create the source model"; return; }
  local r
  for r in $(seq 1 "$RUNS"); do
    floor_read disk "$r" "$SRC"
    floor_write disk "$r" "$(dir_bytes "$SRC")"
  done
}

case_data() {
  if [ ! -f "$QWEN3" ]; then skip data escale "Qwen3 tokenizer not found at $QWEN3"; return; fi
  local text="$WORK/text.jsonl" src="" r
  # Text: escale's built-in corpus at the benchmark size when make-corpus exists, else the shared corpus cycled.
  if [ "$SMOKE" = 0 ] && landed make-corpus \
      && "$ESCALE" make-corpus --size "$((TEXT_BYTES / 1000000))MB" --seed 1 --output "$WORK/corpus" > "$LOGS/make-corpus.log" 2>&1 \
      && "$PY" "$TOOLS/make_text.py" "$WORK/corpus" --output "$text" --size "$TEXT_BYTES" > "$LOGS/make-text.log" 2>&1; then
    src="escale make-corpus --size $((TEXT_BYTES / 1000000))MB --seed 1"
  elif [ -d "$SHARED/testdata/corpus" ] \
      && "$PY" "$TOOLS/make_text.py" "$SHARED/testdata/corpus" --output "$text" --size "$TEXT_BYTES" > "$LOGS/make-text.log" 2>&1; then
    src="shared corpus (tinyshakespeare + hongloumeng ch. 1-40, 1.8 MB) cycled"
  else
    skip data escale "no text: escale make-corpus unavailable and $SHARED/testdata/corpus missing"; return
  fi
  rm -rf "$WORK/corpus"
  echo "$src; $(tail -n 1 "$LOGS/make-text.log")" > "$LOGS/data-sources.txt"
  landed prepare-data || { skip data escale "escale prepare-data has not landed in this checkout (stub)"; }
  local have_ref=0
  if [ "$SMOKE" = 0 ] && [ -x "$ORACLE_PY" ] && "$ORACLE_PY" -c "import tokenizers" 2>/dev/null; then have_ref=1; fi
  for r in $(seq 1 "$RUNS"); do
    rm -rf "$WORK/tok"; mkdir -p "$WORK/tok"
    landed prepare-data && measure data escale "$r" "stat -c %s $text" -- "$ESCALE" prepare-data "$text" --tokenizer "$QWEN3" --output "$WORK/tok/escale"
    rm -rf "$WORK/tok"; mkdir -p "$WORK/tok"
    if [ "$have_ref" = 1 ]; then
      measure data python_tokenizers "$r" "stat -c %s $text" -- "$ORACLE_PY" "$TOOLS/tok_ref.py" "$text" --tokenizer "$QWEN3" --output "$WORK/tok/ref"
    fi
  done
  rm -rf "$WORK/tok"
  if [ "$have_ref" = 0 ]; then
    if [ "$SMOKE" = 1 ]; then skip data python_tokenizers "not run in smoke mode"
    else skip data python_tokenizers "Python tokenizers unavailable (run tests/oracle/setup.sh)"; fi
  fi
}

case_train() {
  # The training measurement lives in bench/train/ (owned by the trainer): bench/train/run.sh builds its
  # bench_train example (escale's real training loop) and runs it against the PyTorch eager reference
  # (torch_reference.py) interleaved, --pairs pairs per config (standard, MoE, 135M class), measuring tokens/s,
  # peak RSS and MFU against a matmul peak it measures itself. It writes OUT/train/train-results.json (every run)
  # and OUT/train/train-table.md, and gives no verdicts when the machine was busy at the start unless --force.
  local entry="$ROOT/bench/train/run.sh"
  if [ "$SMOKE" = 1 ]; then skip train escale "needs PyTorch and a release build; not run in smoke mode"; return; fi
  if [ ! -x "$ORACLE_PY" ] || ! "$ORACLE_PY" -c "import torch" 2>/dev/null; then
    skip train escale "PyTorch (oracle venv) unavailable: run tests/oracle/setup.sh"; return
  fi
  local extra=(--pairs "$PAIRS" --out "$OUT/train")
  [ -n "$TRAIN_CONFIGS" ] && extra+=(--configs "$TRAIN_CONFIGS")
  [ "$FORCE" = 1 ] && extra+=(--force)
  [ "$RECORD" = 1 ] && extra+=(--record)
  # BENCH_TRAIN_ARGS: extra options for bench/train/bench.py (development, e.g. "--smoke" or "--steps 2").
  [ -n "${BENCH_TRAIN_ARGS:-}" ] && read -r -a more <<< "$BENCH_TRAIN_ARGS" && extra+=("${more[@]}")
  log "train: bash bench/train/run.sh ${extra[*]}"
  if PYTHON="$ORACLE_PY" bash "$entry" "${extra[@]}" > "$LOGS/train.log" 2>&1; then
    cp "$OUT/train/train-results.json" "$OUT/train-results.json"
    record train harness 1 ok 0 0 0 ""
  else
    record train harness 1 error 0 0 0 "bench/train/run.sh failed: $(tail -n 3 "$LOGS/train.log" | tr '\n' ' ' | cut -c1-400)"
  fi
}

case_eval() {
  # Evaluation speed lives in bench/eval/: `escale eval` against PyTorch no_grad (torch_eval.py) on the same
  # random 135M-class llama, text and 512-token windows, at --batch 1 and 4, interleaved --pairs pairs, each run
  # a whole process under /usr/bin/time -v. It writes OUT/eval/results.jsonl (every run) and summary.txt.
  if [ "$SMOKE" = 1 ]; then skip eval escale "needs PyTorch and a 135M-class model; not run in smoke mode"; return; fi
  if [ ! -x "$ORACLE_PY" ] || ! "$ORACLE_PY" -c "import torch, transformers" 2>/dev/null; then
    skip eval escale "PyTorch and transformers (oracle venv) unavailable: run tests/oracle/setup.sh"; return
  fi
  log "eval: bash bench/eval/run.sh --escale $ESCALE --out $OUT/eval --pairs $PAIRS"
  if ESCALE_ORACLE_PYTHON="$ORACLE_PY" bash "$ROOT/bench/eval/run.sh" --escale "$ESCALE" --out "$OUT/eval" \
      --pairs "$PAIRS" > "$LOGS/eval.log" 2>&1; then
    record eval harness 1 ok 0 0 0 ""
  else
    record eval harness 1 error 0 0 0 "bench/eval/run.sh failed: $(tail -n 3 "$LOGS/eval.log" | tr '\n' ' ' | cut -c1-400)"
  fi
}

log "cases: $CASES (runs $RUNS, reference runs $REF_RUNS, smoke $SMOKE); peak RSS via $RSS_METHOD"
for c in $CASES; do "case_$c"; done

T_END=$EPOCHREALTIME
machine_json > "$OUT/machine.json"
"$PY" "$TOOLS/report.py" --raw "$RAW" --out "$OUT" --machine "$OUT/machine.json" --cases "$CASES" \
  --runs "$RUNS" --ref-runs "$REF_RUNS" --smoke "$SMOKE" --duration "$("$PY" -c "print($T_END - $T_START)")" \
  --command "bash bench/run.sh $ARGV" --model-note "$MODEL_NOTE" --mergekit-note "$MERGEKIT_NOTE" \
  --train-json "$OUT/train-results.json" --eval-jsonl "$OUT/eval/results.jsonl" --logs "$LOGS" || exit 1
log "wrote $OUT/results.json and $OUT/tables.md"
