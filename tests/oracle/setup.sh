#!/usr/bin/env bash
# Creates (or reuses) the Python virtualenv of the transformers oracle.
# It is several GB (torch), so it lives outside the clone and is reused when present.
# Prints the path of the venv's python on its last line (everything else goes to stderr).
set -euo pipefail
VENV="${ESCALE_ORACLE_VENV:-$HOME/.cache/escale/oracle-venv}"
STAMP="$VENV/.escale-oracle-ok-v1"
PYTHON="${PYTHON:-python3}"
if [ ! -f "$STAMP" ]; then
  echo "creating the oracle virtualenv at $VENV (torch is a ~4 GB download)" >&2
  mkdir -p "$(dirname "$VENV")"
  if ! "$PYTHON" -m venv "$VENV" >&2; then
    # Debian/Ubuntu pythons without the python3-venv package cannot run `-m venv` with pip;
    # fall back to the virtualenv package from PyPI.
    echo "python3 -m venv failed; trying virtualenv" >&2
    rm -rf "$VENV"
    "$PYTHON" -m pip install --quiet --user virtualenv >&2 || "$PYTHON" -m pip install --quiet virtualenv >&2
    "$PYTHON" -m virtualenv "$VENV" >&2
  fi
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  # Pinned so that reference numbers do not move under us.
  "$VENV/bin/python" -m pip install --progress-bar off --retries 10 --timeout 120 \
    "torch==2.15.0" "transformers==5.24.0" "safetensors==0.8.0" "numpy<3" >&2
  "$VENV/bin/python" -c "import torch, transformers, safetensors; print('oracle ok', torch.__version__, transformers.__version__)" >&2
  touch "$STAMP"
fi
echo "$VENV/bin/python"
