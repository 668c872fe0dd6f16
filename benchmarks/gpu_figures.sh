#!/usr/bin/env bash
# Every GPU figure of the project in one run, for a short lease of a bare CUDA machine:
#   issue 21: bench_infer --gpu --hd on 720p H.264 (vtest's frames scaled up, B-frames): unet-resnet18 at
#             360x640 and the classic U-Net at 576x768; model-only, sequential loop, roadseg infer,
#             e2e / model-only, frames/s per GPU, the hops' bytes, the actor's CPU per frame, GPU
#             utilisation sampled by nvidia-smi every 0.5 s while each runs
#   issue 13: bench_train speed options on CUDA (bf16, channels_last, torch.compile)
#   issue 27: `roadseg train --gpu` through Ray Train: 1 GPU with bf16 and with fp16 AMP, channels_last,
#             a checkpoint resumed on the GPU, and DDP over all GPUs when there are several; for each
#             run images/s per GPU, GPU utilisation sampled by nvidia-smi every 0.5 s while it trains,
#             and the ingest CPUs per GPU the defaults chose.
# A machine without the project's packages gets them from .gpu/gpusite.tar.xz (Python wheels unpacked
# for that machine's Python); .gpu/vtest.avi is OpenCV's sample video. Figures land in $OUT.
# SKIP_BENCH=1 runs only the training part; DEVICE=--cpu with a stub nvidia-smi checks the script itself.
set -u
OUT=${OUT:-/tmp/roadseg-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -f .gpu/gpusite.tar.xz ]; then
  tar -xJf .gpu/gpusite.tar.xz -C /tmp && export PYTHONPATH=$PWD:/tmp/gpusite
fi
PY=${PY:-python3}
VIDEO=${VIDEO:-.gpu/vtest.avi}
DEVICE=${DEVICE:---gpu}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
NGPU=$(nvidia-smi -L | grep -c GPU)
$PY -c "import torch, ray, av; print('torch', torch.__version__, 'ray', ray.__version__, 'av', av.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"

if [ -z "${SKIP_BENCH:-}" ]; then
  infer() {  # NAME [bench_infer flags]: one bench_infer --gpu --hd run, nvidia-smi sampled meanwhile
    local name=$1; shift
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$OUT/$name-smi.csv" & local smi=$!
    timeout "${INFER_S:-150}" $PY benchmarks/bench_infer.py --gpu --hd --video "$VIDEO" --frames 400 --copies 2 \
      --no-s3 --no-peer "$@" > "$OUT/$name.txt" 2>&1
    echo "exit $?" >> "$OUT/$name.txt"; kill $smi
    cat "$OUT/$name.txt"
    $PY -c "import sys; u=[float(x) for x in open(sys.argv[1]) if x.strip().replace('.','').isdigit()]; b=[x for x in u if x>0]; \
print(f'  GPU utilisation: mean {sum(u)/max(1,len(u)):.0f} % over the bench, {sum(b)/max(1,len(b)):.0f} % while busy')" "$OUT/$name-smi.csv"
  }
  echo "== infer on the GPU (issue 21): 720p H.264 input"
  infer infer-r18 --model unet-resnet18 --size 360x640 --batch-size 16 2>&1 | tee "$OUT/infer.txt"
  infer infer-unet --model unet --base-channels 64 --size 576x768 --batch-size 16 2>&1 | tee -a "$OUT/infer.txt"
  echo "== training speed options on the GPU (issue 13)"
  timeout "${TRAIN_S:-100}" $PY benchmarks/bench_train.py --gpu --amp bf16 --channels-last --compile --model unet \
    --base-channels 64 --height 512 --width 1024 --batch-size 8 --steps 15 --warmup 3 2>&1 | tee "$OUT/train.txt"
fi

echo "== roadseg train $DEVICE through Ray Train (issue 27): 720x1280 JPEG shards, 512x1024 crops"
W=/tmp/roadseg-gpu-run
rs() { $PY -m roadseg_dist.cli "$@"; }
[ -f $W/shards/val-index.parquet ] || { rs synth $W/bdd --train "${IMAGES:-192}" --val 8 --height 720 --width 1280 --videos 0 &&
  rs shard $W/bdd $W/shards --split train && rs shard $W/bdd $W/shards --split val; } > "$OUT/data.txt" 2>&1
run() {  # NAME WORKERS AMP EPOCHS [more flags]: one `roadseg train`, nvidia-smi sampled meanwhile
  local name=$1 workers=$2 amp=$3 epochs=$4; shift 4
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
    > "$OUT/$name-smi.csv" & local smi=$!
  timeout "${RUN_S:-150}" $PY -m roadseg_dist.cli train --data $W/shards --storage $W/runs --name "$name" $DEVICE \
    --num-workers "$workers" --amp "$amp" --channels-last --epochs "$epochs" --batch-size 8 --crop "${CROP:-512x1024}" \
    --model unet --base-channels "${BASE:-32}" "$@" > "$OUT/$name.txt" 2>&1
  echo "exit $?" >> "$OUT/$name.txt"; kill $smi
  $PY - "$W/runs/$name" "$OUT/$name" "$workers" <<'EOF'
import csv, json, pathlib, sys
run, out, workers = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
log = pathlib.Path(out + ".txt").read_text().splitlines()
records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
util = [float(r[1]) for r in csv.reader(open(out + "-smi.csv")) if len(r) > 2 and r[1].strip().replace(".", "").isdigit()]
busy = [u for u in util if u > 0]
print(f"{run.name}: {log[-1]}; epochs {[r['epoch'] for r in records]}"
      + "".join(f"; epoch {r['epoch']}: {r['images_per_s'] / workers:.1f} images/s per GPU, val mIoU {r['val_miou']:.3f}"
                + (f" (restored from {r['restored_from_epoch']})" if r.get("restored_from_epoch") else "") for r in records))
print(f"  GPU utilisation (nvidia-smi, every 0.5 s, all GPUs): mean {sum(util) / max(1, len(util)):.0f} % over the whole "
      f"command, {sum(busy) / max(1, len(busy)):.0f} % while busy, {len(busy)}/{len(util)} samples busy")
print("  " + next((l for l in log if l.startswith("ingest:")), "no ingest line") + f" (workers = GPUs = {workers})")
for line in [l for l in log if l.startswith("resume:") or "Error" in l or l.startswith("training failed")][:4]:
    print("  " + line[:600])
EOF
}
{
  run g1-bf16 1 bf16 2
  run g1-bf16 1 bf16 3 --resume         # the epoch-2 checkpoint, written from the GPU, resumed on it
  run g1-fp16 1 fp16 2                  # fp16 with the gradient scaler
  [ "$NGPU" -gt 1 ] && run "g$NGPU-bf16" "$NGPU" bf16 2   # DDP over every GPU (SyncBatchNorm)
} 2>&1 | tee "$OUT/raytrain.txt"
