#!/usr/bin/env bash
# Creates (or reuses) a virtualenv with mergekit 0.1.5 for the benchmark's mergekit rows.
# torch is several GB: when the transformers oracle venv exists, its site-packages are appended to
# this venv's path (a .pth file) so torch/transformers are reused instead of downloaded again; pip
# still installs whatever mergekit needs that the oracle lacks, into this venv.
# Prints the venv's bin folder on its last line; exits non-zero when mergekit cannot be installed.
set -euo pipefail
VENV="${ESCALE_MERGEKIT_VENV:-$HOME/.cache/escale/mergekit-venv}"
ORACLE="${ESCALE_ORACLE_VENV:-$HOME/.cache/escale/oracle-venv}"
STAMP="$VENV/.escale-mergekit-ok-0.1.5"
if [ ! -f "$STAMP" ]; then
  py=python3
  [ -x "$ORACLE/bin/python" ] && py="$ORACLE/bin/python"
  # Same interpreter as the oracle so its packages are binary-compatible.
  base=$("$py" -c 'import sys; print(sys.base_prefix)')
  "$base/bin/python3" -m venv "$VENV" 2>/dev/null || "$py" -m venv --without-pip "$VENV"
  if [ -x "$ORACLE/bin/python" ]; then
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    osite=$("$ORACLE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$osite" > "$site/zz-escale-oracle.pth"
  fi
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2 || true
  "$VENV/bin/python" -m pip install --quiet "mergekit==0.1.5" >&2
  "$VENV/bin/mergekit-moe" --help >/dev/null
  "$VENV/bin/mergekit-yaml" --help >/dev/null
  touch "$STAMP"
fi
echo "$VENV/bin"
