#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv (or $ULTRAMAE_VENV) with the extras given as $1.
# Sourced by demo.sh, test.sh and venv_deploy.sh.
# On a machine without an NVIDIA GPU it installs the CPU build of torch, never the CUDA stack.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ULTRAMAE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
EXTRAS="${1:-test}"
STAMP="$VENV/.ultramae-stamp"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/venv.sh" | sha256sum | cut -d' ' -f1)-$EXTRAS"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  return 0 2>/dev/null || exit 0
fi

"$PY" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required"'
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

bash "$ROOT/scripts/install_torch.sh" "$VENV/bin/python"
"${PIP[@]}" -e "$ROOT[$EXTRAS]"
echo "$want" > "$STAMP"
