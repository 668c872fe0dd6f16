#!/usr/bin/env bash
# Every GPU figure of the project in one run, for a short lease of a CUDA machine:
#   issue 11: bench_infer --gpu (model-only, sequential loop, roadseg infer; e2e / model-only)
#   issue 13: bench_train speed options on CUDA (bf16, channels_last, torch.compile)
#   Ray Train on the GPU: a 1-GPU DDP run with bf16 AMP and channels_last, end to end.
# A machine without the project's packages gets them from .gpu/gpusite.tar.xz (Python wheels unpacked
# for that machine's Python); .gpu/vtest.avi is OpenCV's sample video. Figures land in $OUT.
set -u
OUT=${OUT:-/tmp/roadseg-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -f .gpu/gpusite.tar.xz ]; then
  tar -xJf .gpu/gpusite.tar.xz -C /tmp && export PYTHONPATH=$PWD:/tmp/gpusite
fi
PY=${PY:-python3}
VIDEO=${VIDEO:-.gpu/vtest.avi}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, ray, av; print('torch', torch.__version__, 'ray', ray.__version__, 'av', av.__version__, torch.cuda.get_device_name(0))"

echo "== infer on the GPU (issue 11)"
timeout "${INFER_S:-120}" $PY benchmarks/bench_infer.py --gpu --video "$VIDEO" --frames 400 --copies 2 \
  --model unet --base-channels 64 --size 576x768 --batch-size 16 --no-s3 --no-peer 2>&1 | tee "$OUT/infer.txt"

echo "== training speed options on the GPU (issue 13)"
timeout "${TRAIN_S:-100}" $PY benchmarks/bench_train.py --gpu --amp bf16 --channels-last --compile --model unet \
  --base-channels 64 --height 512 --width 1024 --batch-size 8 --steps 15 --warmup 3 2>&1 | tee "$OUT/train.txt"

echo "== Ray Train DDP on the GPU: bf16, channels_last"
W=/tmp/roadseg-gpu-run
rs() { $PY -m roadseg_dist.cli "$@"; }
timeout "${RAY_S:-90}" bash -c "
  $PY -m roadseg_dist.cli synth $W/bdd --train 32 --val 8 --height 128 --width 224 --videos 0 &&
  $PY -m roadseg_dist.cli shard $W/bdd $W/shards --split train && $PY -m roadseg_dist.cli shard $W/bdd $W/shards --split val &&
  $PY -m roadseg_dist.cli train --data $W/shards --storage $W/runs --name gpu --gpu --num-workers 1 --amp bf16 \
     --channels-last --epochs 2 --batch-size 8 --crop 128x224 --model unet --base-channels 32" 2>&1 | tail -15 | tee "$OUT/raytrain.txt"
