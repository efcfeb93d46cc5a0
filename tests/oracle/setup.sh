#!/usr/bin/env bash
# Creates (or reuses) the Python virtualenv of the transformers oracle.
# It is several GB (torch), so it lives outside the clone and is reused when present.
# Prints the path of the venv's python on its last line.
set -euo pipefail
VENV="${ESCALE_ORACLE_VENV:-$HOME/.cache/escale/oracle-venv}"
STAMP="$VENV/.escale-oracle-ok-v1"
if [ ! -f "$STAMP" ]; then
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  # Pinned so that reference numbers do not move under us.
  "$VENV/bin/pip" install --quiet "torch==2.15.0" "transformers==5.24.0" "safetensors==0.8.0" "numpy<3"
  "$VENV/bin/python" -c "import torch, transformers, safetensors; print('oracle ok', torch.__version__, transformers.__version__)" >&2
  touch "$STAMP"
fi
echo "$VENV/bin/python"
