#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md ("GPU" section) in one run, each step under its own time limit,
# results in $OUT (JSON + logs). Run from the repository root on a CUDA machine:
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh
# Inputs (not in the repository; see docs/benchmarks.md for how they are made): .gpu/us224.npy (64 real
# ultrasound images at 224 px), .gpu/us224_cpu_maps.npy (their CPU maps), .gpu/us256_pool.npz (400 real
# stills), .gpu/Case3_US-before.nii.gz (RESECT, CC BY 4.0) and .gpu/resect_case3_map_sub4.npy (its CPU map,
# every 4th voxel), .gpu/before (the solver tree before the two-block fronts, for the before/after row).
# Python wheels missing on the machine go in .whl/ (installed into /tmp/site). The whole script stays under
# the device's 10 minutes a command (about 9 with the default limits).
set -uo pipefail
OUT="${OUT:-/tmp/gpu_out}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  mkdir -p /tmp/site/av && : >/tmp/site/av/__init__.py  # PyAV is imported by the video reader, unused here
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, never stop the session
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "=== $name exit $? after ${SECONDS}s total"
  tail -n 4 "$OUT/$name.log"
}
# first the rows docs/benchmarks.md still lacks: MONAI fp32 against ours fp32 (bench_network's CUDA defaults
# start with that pair), then the 2D maps by batch with the profile, the device pipeline before/after, the
# end-to-end ratio; the 3D map (measured and within its targets) only with VOLUME=1
step network "${LIMIT_NETWORK:-260}" python3 benchmarks/bench_network.py --device cuda --steps 8 --warmup 3 \
  --timeout 120 --json "$OUT/network.json"
step confmap2d "${LIMIT_CONFMAP:-100}" python3 benchmarks/bench_confmap_gpu.py --images .gpu/us224.npy \
  --reference .gpu/us224_cpu_maps.npy --batches 1 16 64 128 256 --vit-batch 64 --budget 1.0 --profile-batch 64 \
  --json "$OUT/confmap2d.json"
if [ -d .gpu/before ]; then
  step device_before_after "${LIMIT_BEFORE_AFTER:-80}" python3 benchmarks/bench_confmap_before_after.py \
    --device-batch 64 --device cuda --images .gpu/us224.npy --before-tree .gpu/before --rounds 3
fi
step end_to_end "${LIMIT_E2E:-75}" python3 benchmarks/bench_pretrain_throughput.py --pool .gpu/us256_pool.npz \
  --count 2400 --data /tmp/e2e_data --presets base --img_size 224 --batch 256 --workers 12 --steps 5 \
  --rounds 3 --warmup 2 --json "$OUT/end_to_end.json"
if [ "${VOLUME:-0}" = 1 ]; then
  step confmap3d "${LIMIT_VOLUME:-75}" python3 benchmarks/bench_confmap_gpu.py --volume .gpu/Case3_US-before.nii.gz \
    --volume-reference .gpu/resect_case3_map_sub4.npy --save-volume-sub4 "$OUT/volume_sub4.npy"
fi
echo "done in ${SECONDS}s"
