#!/usr/bin/env bash
# Set up .venv if needed and run the demo on sample ultrasound shipped with the dependencies.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh" test
cd "$ROOT"
exec "$ROOT/.venv/bin/ultramae" demo "${1:-demo_out}"
