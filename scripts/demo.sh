#!/usr/bin/env bash
# Set up .venv if needed, then run the end-to-end demo on real ultrasound installed with the project (no download):
# curate -> confidence maps -> pretrain -> reconstruct -> fine-tune -> infer -> deploy. Results in ${1:-demo_out}/.
# The deploy stage runs when .venv-deploy exists (scripts/venv_deploy.sh); ULTRAMAE_DEMO_DEPLOY=1 builds it first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh" test
if [ "${ULTRAMAE_DEMO_DEPLOY:-0}" = "1" ] && [ -f "$ROOT/scripts/venv_deploy.sh" ]; then
  bash "$ROOT/scripts/venv_deploy.sh"
fi
cd "$ROOT"
exec "$ROOT/.venv/bin/ultramae" demo "${1:-demo_out}"
