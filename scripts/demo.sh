#!/usr/bin/env bash
# Set up .venv if needed, then run the end-to-end demo on real ultrasound installed with the project (no download):
# curate -> confidence maps -> pretrain -> reconstruct -> fine-tune -> infer -> deploy. Results in ${1:-demo_out}/.
# The deploy app needs its own environment, .venv-deploy (MONAI Deploy App SDK + Holoscan): it is built in the
# background while the demo trains (a no-op when it exists), and the deploy stage waits for it (at most
# $ULTRAMAE_DEPLOY_WAIT seconds, default 300). ULTRAMAE_DEMO_DEPLOY=0 skips that stage.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh" test
cd "$ROOT"
if [ "${ULTRAMAE_DEMO_DEPLOY:-1}" != "1" ] || [ ! -f "$ROOT/scripts/venv_deploy.sh" ]; then
  exec "$ROOT/.venv/bin/ultramae" demo "${1:-demo_out}" --deploy false
fi
status="$(mktemp -u "${TMPDIR:-/tmp}/ultramae-demo-deploy.XXXXXX")"
(bash "$ROOT/scripts/venv_deploy.sh" >"$status.log" 2>&1; echo $? >"$status.tmp"; mv "$status.tmp" "$status") &
export ULTRAMAE_DEPLOY_BUILD_STATUS="$status"
rc=0
"$ROOT/.venv/bin/ultramae" demo "${1:-demo_out}" || rc=$?
[ -f "$status" ] || echo "demo.sh: .venv-deploy is still being built in the background (log: $status.log)"
exit "$rc"
