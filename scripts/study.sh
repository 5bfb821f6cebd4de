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
STOP_STEP="${STOP_STEP:-$STEPS}" # stop both runs at this step (an epoch end; default: the end of the schedule)
JOBS="${JOBS:-2}"             # fine-tuning processes in parallel (one per core)
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
      --log_every 20 --checkpoint_every 0 --keep_last 1000 --preview_every 0 --tensorboard false) >> "$run/train.log" 2>&1 &
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

[ "${STAGE:-all}" = finetune ] || $S recon "$OUT/pretrain_cwus" "$OUT/pretrain_pixel" --checkpoints 6 --images
[ "${STAGE:-all}" = finetune ] || $S probe "$OUT/pretrain_cwus" "$OUT/pretrain_pixel" --checkpoints 4
# fine-tuning through the project's bundles, on the study's grouped splits (JSON data lists). Every arm gets the
# same encoder (tiny width, 6 blocks, patch 8, 64 px) and the pretraining's input intensity (below).
# Budget fixed in advance, about 40 optimiser steps of batch 24: 100 % of the labels 3 epochs (BUSI) /
# 4 epochs (HC18), 10 % 20 epochs; model.pt is the best validation epoch; evaluate writes the test metrics.json.
$S datalists
# Fine-tuning inputs follow pretraining: a checkpoint that records its input intensity (today's pretraining
# bundle) is normalised as it records (the bundles read it); the study's step-880 checkpoints predate that record
# and were pretrained on [0, 1], so every arm then gets mean 0, std 1. (Our own files: read without weights_only.)
ck="$OUT/pretrain_cwus/checkpoints/checkpoint_step$(printf '%08d' "$STOP_STEP").pt"
INTENSITY="$($PY -c "import sys, torch; m = torch.load(sys.argv[1], map_location='cpu', weights_only=False).get('meta') or {}; print('' if 'intensity' in m else \"{'mean': 0.0, 'std': 1.0}\")" "$ck")"
ft() {  # $1 task, $2 arm, $3 label fraction, $4 seed
  local task=$1 arm=$2 frac=$3 seed=$4 bundle=classification epochs=20 val=5 pre=none dir
  dir="$PWD/$OUT/ft/${task}_${arm}_f${frac}_s${seed}"
  [ -f "$dir/metrics.json" ] && return 0
  [ "$task" = hc18 ] && bundle=segmentation
  [ "$frac" = 1 ] && { epochs=3; val=1; [ "$task" = hc18 ] && epochs=4; }
  [ "$arm" = scratch ] || pre="$PWD/$OUT/pretrain_$arm/checkpoints/checkpoint_step$(printf '%08d' "$STOP_STEP").pt"
  mkdir -p "$dir"
  (cd "bundles/ultramae_$bundle" && $PY -m monai.bundle run --config_file configs/train.json \
      --dataset_dir "$PWD/../../$OUT/datalist_$task.json" --pretrained "$pre" --preset tiny --tubelet "[2,8,8]" \
      --encoder_options "{'embed_dim': 192, 'depth': 6, 'num_heads': 3}" --img_size 64 \
      ${INTENSITY:+--intensity "$INTENSITY"} --batch_size 24 --max_epochs "$epochs" --val_interval "$val" \
      --label_fraction "$frac" --seed "$seed" --num_workers 0 --output_dir "$dir" \
    && $PY -m monai.bundle run --config_file configs/evaluate.json --ckpt "$dir/model.pt" --num_workers 0) \
    > "$dir/run.log" 2>&1
}
export -f ft
export PY OUT STOP_STEP INTENSITY
# seeds outermost, so an interrupted study has whole seeds; JOBS runs at once
for seed in 0 1 2; do for arm in ${ARMS:-scratch cwus pixel}; do for task in busi hc18; do for frac in 0.1 1; do
  echo "$task $arm $frac $seed"
done; done; done; done | xargs -P "$JOBS" -L 1 bash -c 'ft "$@"' _
$S report
