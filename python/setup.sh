#!/usr/bin/env bash
# Creates (or extends) the Python virtualenv escale's Megatron-Core bridge runs in, and prints the
# path of its python on the last line (everything else goes to stderr).
#
#   bash python/setup.sh                     # ~/.cache/escale/megatron-venv (torch is a ~4 GB download)
#   ESCALE_MEGATRON_VENV=DIR bash python/setup.sh
#                                            # use or extend the venv at DIR; CI points it at the
#                                            # transformers oracle's venv, which already has torch
#   PYTHON=python3.12 bash python/setup.sh   # the interpreter a new venv is made from
#
# megatron-core is pinned per Python version: 0.16.1 is the newest that installs on Python 3.11,
# 0.19.2 needs Python >= 3.12. escale's bridge is checked against both (python/escale_megatron).
# Then: export ESCALE_MEGATRON_PYTHON=<printed path>, or rely on the default venv path.
set -euo pipefail
VENV="${ESCALE_MEGATRON_VENV:-$HOME/.cache/escale/megatron-venv}"
STAMP="$VENV/.escale-megatron-ok-v1"
PYTHON="${PYTHON:-python3}"
if [ ! -f "$STAMP" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating the megatron-core virtualenv at $VENV" >&2
    mkdir -p "$(dirname "$VENV")"
    if ! "$PYTHON" -m venv "$VENV" >&2; then
      echo "python -m venv failed; trying virtualenv" >&2
      rm -rf "$VENV"
      "$PYTHON" -m pip install --quiet --user virtualenv >&2 || "$PYTHON" -m pip install --quiet virtualenv >&2
      "$PYTHON" -m virtualenv "$VENV" >&2
    fi
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  else
    echo "adding megatron-core to the virtualenv at $VENV" >&2
  fi
  minor=$("$VENV/bin/python" -c 'import sys; print(sys.version_info[0] * 100 + sys.version_info[1])')
  if [ "$minor" -lt 311 ]; then
    echo "megatron-core needs Python >= 3.11; $VENV has $("$VENV/bin/python" --version)" >&2
    exit 1
  elif [ "$minor" -eq 311 ]; then
    MCORE="megatron-core==0.16.1"
  else
    MCORE="megatron-core==0.19.2"
  fi
  # torch only when the venv has none (the oracle's venv already holds torch 2.15).
  TORCH=()
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    TORCH=("torch==2.15.0")
  fi
  "$VENV/bin/python" -m pip install --progress-bar off --retries 10 --timeout 120 \
    "${TORCH[@]}" "$MCORE" "safetensors==0.8.0" "psutil==7.2.2" "numpy<3" >&2
  "$VENV/bin/python" -c "import torch, megatron.core, safetensors, psutil; from importlib.metadata import version; print('megatron-core', version('megatron-core'), 'torch', torch.__version__)" >&2
  touch "$STAMP"
fi
echo "$VENV/bin/python"
