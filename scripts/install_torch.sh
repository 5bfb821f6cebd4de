#!/usr/bin/env bash
# Install torch into the environment whose python is "$1", unless it imports already: with an NVIDIA GPU the
# default (CUDA) build, else the CPU build, from a local CPU wheel in pip's find-links when the machine has one,
# else from PyTorch's CPU index (never the CUDA stack). ULTRAMAE_TORCH overrides the requirement.
# Used by venv.sh, venv_deploy.sh and venv_label.sh.
set -euo pipefail
PYBIN="$1"
"$PYBIN" -c 'import torch' 2>/dev/null && exit 0
PIP=("$PYBIN" -m pip install --disable-pip-version-check -q)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "${PIP[@]}" "${ULTRAMAE_TORCH:-torch>=2.8}"
else
  links="$("$PYBIN" -m pip config get global.find-links 2>/dev/null || true)"
  if [ -n "$links" ] && ls "$links"/torch-*+cpu-* >/dev/null 2>&1; then
    "${PIP[@]}" "${ULTRAMAE_TORCH:-torch==2.13.0}"
  else
    "${PIP[@]}" "${ULTRAMAE_TORCH:-torch==2.13.0}" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
