#!/usr/bin/env bash
# Create (or refresh) .venv-deploy: the project with its `deploy` extra (MONAI Deploy App SDK, Holoscan, highdicom)
# and the test tools, kept apart from .venv because the SDK pins its own stack. Run by test_deploy.sh and demo.sh.
# The same recipe as .venv (scripts/venv.sh), in another folder with other extras. Exits non-zero when the
# environment cannot be built, e.g. offline.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ULTRAMAE_VENV="${ULTRAMAE_DEPLOY_VENV:-$ROOT/.venv-deploy}" source "$ROOT/scripts/venv.sh" "deploy,test"
