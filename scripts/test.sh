#!/usr/bin/env bash
# Set up .venv if needed, lint, and run the whole test suite (real-data tests skip without ../shared/data).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh" test
cd "$ROOT"
"$ROOT/.venv/bin/ruff" check ultramae_monai tests benchmarks bundles
"$ROOT/.venv/bin/python" -m pytest -n "${ULTRAMAE_TEST_WORKERS:-2}" --dist loadfile -q "$@"
"$ROOT/scripts/test_deploy.sh"
"$ROOT/scripts/test_label.sh"
