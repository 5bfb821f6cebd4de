#!/usr/bin/env bash
# The UltraMAE study (issue 16), end to end on a CPU: splits, curation, two pretraining runs, reconstruction
# error, linear probes, 36 fine-tuning runs, report. Outputs under study_out/ (git-ignored); docs/results.md and
# docs/images/study_*.png are rewritten. Each step is skipped when its output exists, so a re-run resumes.
# One thread per process: on a shared 2-core machine, 2 OpenMP threads per process ran 8x slower (measured).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH="$PWD"
PY="${PY:-$PWD/.venv/bin/python}"
OUT="${OUT:-study_out}"
DATA="${DATA:-../shared/data}"
STEPS="${STEPS:-880}"         # pretraining LR schedule length (optimiser steps) per target
STOP_STEP="${STOP_STEP:-264}" # ... stopped at this step (an epoch end, 12 x 22 steps): what the session allowed
FT_STEPS="${FT_STEPS:-40}"    # fine-tuning optimiser steps per run
JOBS="${JOBS:-4}"             # fine-tuning processes in parallel
S="$PY scripts/study.py --data $DATA --out $OUT"

[ -f "$OUT/split_busi.json" ] || $S split --seed 0
[ -d "$OUT/pool" ] || $S pool
[ -f "$OUT/curated/summary.json" ] || $PY -m ultramae_monai.cli curate "$OUT/pool" "$OUT/curated" --workers 2 \
    --max_side 80 --group_regex '(\d{3})_\d?HC\.png$' --salt "${ULTRAMAE_SALT:-ultramae-study-0000}"
[ -f "$OUT/labelled_64.npz" ] || $S labelled --size 64

# the encoder of every arm: tiny width (192, 3 heads), 6 blocks, patch 8 at 64 px (64 tokens)
echo '{"preset": "tiny", "embed_dim": 192, "depth": 6, "num_heads": 3, "tubelet": [2, 8, 8]}' > "$OUT/arch.json"
pretrain() {  # $1 = target
  local run="$PWD/$OUT/pretrain_$1"
  mkdir -p "$run"
  printf '{"preset": "tiny", "embed_dim": 192, "depth": 6, "num_heads": 3, "img_size": 64, "tubelet": [2, 8, 8], "target": "%s", "mask_ratio_image": 0.75, "decoder_depth": 2, "decoder_dim": 128}\n' "$1" > "$run/study_arch.json"
  (cd bundles/ultramae_pretrain && exec $PY -m monai.bundle run --config_file configs/train.json \
      --dataset_dir "$PWD/../../$OUT/curated" --output_dir "$run" --preset tiny --network_def#embed_dim 192 \
      --network_def#depth 6 --network_def#num_heads 3 --target "$1" --img_size 64 --tubelet "[2,8,8]" \
      --mask_ratio_image 0.75 --decoder_depth 2 --decoder_dim 128 --crop_scale "[0.5,1.0]" --batch_size 32 \
      --max_steps "$STEPS" --max_epochs 1000 --warmup_epochs 3 --base_lr 0.012 --num_workers 0 --amp none \
      --log_every 20 --checkpoint_every 0 --keep_last 1000 --preview_every 0 --tensorboard false) > "$run/train.log" 2>&1 &
  local pid=$!
  # the checkpoint of STOP_STEP is deterministic (CPU, fixed seeds; the trainer resumes bit-exactly), so stopping
  # the run once it exists reproduces the study's encoders
  local ck; ck="$run/checkpoints/checkpoint_step$(printf '%08d' "$STOP_STEP").pt"
  while kill -0 "$pid" 2>/dev/null && [ ! -f "$ck" ]; do sleep 10; done
  sleep 5; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  echo "$STOP_STEP" > "$OUT/pretrain_step.txt"
}
[ -f "$OUT/pretrain_cwus/done" ] || { pretrain cwus && touch "$OUT/pretrain_cwus/done"; } &
[ -f "$OUT/pretrain_pixel/done" ] || { pretrain pixel && touch "$OUT/pretrain_pixel/done"; } &
wait
[ "${STAGE:-all}" = pretrain ] && exit 0

$S recon "$OUT/pretrain_cwus" "$OUT/pretrain_pixel" --checkpoints 6 --images
$S probe "$OUT/pretrain_cwus" "$OUT/pretrain_pixel" --checkpoints 4
# one process per (task, arm, fraction) running its 3 seeds; JOBS of them at once
for arm in scratch cwus pixel; do for task in busi hc18; do for frac in 0.1 1; do
  echo "$S finetune --task $task --arm $arm --fraction $frac --seed 0 1 2 --steps $FT_STEPS"
done; done; done | xargs -P "$JOBS" -I{} sh -c '{}'
$S report
