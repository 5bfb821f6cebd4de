#!/usr/bin/env bash
# Create (or refresh) .venv-deploy: the project with its `deploy` extra (MONAI Deploy App SDK, Holoscan, highdicom)
# and the test tools, kept apart from .venv because the SDK pins its own stack. Sourced by test_deploy.sh.
# Exits (or returns) non-zero when the environment cannot be built, e.g. offline.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ULTRAMAE_DEPLOY_VENV:-$ROOT/.venv-deploy}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.ultramae-stamp"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/venv_deploy.sh" | sha256sum | cut -d' ' -f1)-deploy"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  return 0 2>/dev/null || exit 0
fi

"$PY" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required"'
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

bash "$ROOT/scripts/install_torch.sh" "$VENV/bin/python"
"${PIP[@]}" -e "$ROOT[deploy,test]"
echo "$want" > "$STAMP"
