#!/usr/bin/env bash
# The deploy app's tests in .venv-deploy (MONAI Deploy App SDK + Holoscan + highdicom), after the main suite.
# Creates the environment when missing; skips with a message (exit 0) when it cannot be built, e.g. offline.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ULTRAMAE_DEPLOY_VENV:-$ROOT/.venv-deploy}"
if ! bash "$ROOT/scripts/venv_deploy.sh" >"${TMPDIR:-/tmp}/ultramae-venv-deploy.log" 2>&1; then
  echo "test_deploy: SKIPPED: could not build $VENV (offline?); see ${TMPDIR:-/tmp}/ultramae-venv-deploy.log"
  exit 0
fi
ulimit -s 32768 2>/dev/null || true  # Holoscan wants a 32 MB stack
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -n 0 -q -m deploy tests/test_deploy.py "$@"
