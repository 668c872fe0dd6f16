#!/usr/bin/env bash
# Every GPU figure of the project in one run, for a short lease of a bare CUDA machine (about 7 min on
# one H200 with 16 CPUs; each part has its own time limit, so one that hangs cannot eat the others'):
#   issue 27: `roadseg train --gpu` through Ray Train on 720x1280 JPEG shards, 512x1024 crops: 1 GPU with
#             bf16 AMP and channels_last, its checkpoint resumed on the GPU, fp16 AMP with the gradient
#             scaler, and DDP over every GPU when there are several; for each run images/s per GPU,
#             GPU utilisation sampled by nvidia-smi every 0.5 s, and the ingest CPUs per GPU the defaults chose
#   issue 21: bench_infer --gpu --hd on 720p H.264 (vtest's frames scaled up, B-frames): unet-resnet18 at
#             360x640 and the classic U-Net at 576x768; model-only, the loop, roadseg infer at its
#             defaults, e2e / model-only, GPU utilisation during the job, the hops' bytes, the actor's
#             CPU per frame, the CPU-ms per frame of each stage on that machine's CPUs, and the job against
#             the node's CPU ceiling (its unit tasks at one real unit's CPU-ms per frame); lscpu's CPUs;
#             first bench_gpu_stages: the overlay (blend + JPEG) on the GPU with nvJPEG and decode by NVDEC
#             against a unit's CPU work per 720p frame, the figures a GPU-side setting's default waits for
# Training runs first: it had never run through Ray Train on a GPU. A failed run keeps Ray's logs.
# A machine without the project's packages gets them from .gpu/gpusite.tar.xz (the packages that
# machine lacks, for its Python, unpacked; benchmarks/gpu_site.sh builds it); .gpu/vtest.avi is OpenCV's sample video.
# Everything lands in $OUT/gpu_figures.tgz, and the figures are printed as they come.
# SKIP_BENCH=1 / SKIP_TRAIN=1 run one part; DEVICE=--cpu NO_GPUSITE=1 PY=.venv/bin/python with a stub nvidia-smi
# checks the script itself here.
set -u
OUT=${OUT:-/tmp/roadseg-gpu}
mkdir -p "$OUT"
R=$(mktemp -d /tmp/gpu-figures.XXXX)  # every file; packed into $OUT at the end (few files come back)
export PYTHONUNBUFFERED=1
if [ -f .gpu/gpusite.tar.xz ] && [ -z "${NO_GPUSITE:-}" ]; then
  tar -xJf .gpu/gpusite.tar.xz -C /tmp && export PYTHONPATH=$PWD:/tmp/gpusite
fi
PY=${PY:-python3}
VIDEO=${VIDEO:-.gpu/vtest.avi}
DEVICE=${DEVICE:---gpu}
pack() { tar -czf "$OUT/gpu_figures.tgz" -C "$R" . 2>/dev/null; }
trap pack EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
NGPU=$(nvidia-smi -L | grep -c GPU)
# the CPUs, beside the GPU: their per-frame cost decides infer's frames/s per node (the x264 video stays on them)
{ lscpu | grep -E "^(Model name|CPU\(s\)|Thread\(s\) per core|CPU max MHz|L3 cache)"; \
  echo "cgroup cpu.max: $(cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo none); load: $(cut -d' ' -f1-3 /proc/loadavg)"; } \
  | tee "$R/cpu.txt"
$PY -c "import torch, ray, av, os; print('python', os.sys.version.split()[0], 'torch', torch.__version__, 'ray', ray.__version__, \
'av', av.__version__, 'cpus', os.cpu_count(), torch.cuda.is_available() and torch.cuda.get_device_name(0))"

keep_ray_logs() {  # NAME: the Ray session's logs of a failed run
  tar -czf "$R/$1-raylogs.tgz" -C /tmp/ray/session_latest logs 2>/dev/null
  grep -l -i -E "segmentation fault|fatal|check failed|core dumped|Traceback" /tmp/ray/session_latest/logs/* 2>/dev/null \
    | head -3 | while read -r f; do echo "  --- $f"; grep -i -E -A12 "segmentation fault|fatal|check failed|Traceback" "$f" | head -30; done
}

if [ -z "${SKIP_TRAIN:-}" ]; then
  echo "== roadseg train $DEVICE through Ray Train (issue 27): 720x1280 JPEG shards, 512x1024 crops"
  W=/tmp/roadseg-gpu-run
  rs() { $PY -m roadseg_dist.cli "$@"; }
  # val first (8 images): a slow synth cut by the time limit leaves the train split short, not missing
  [ -f $W/shards/val-index.parquet ] || { timeout "${DATA_S:-150}" bash -c "$PY -m roadseg_dist.cli synth $W/bdd \
      --train ${IMAGES:-256} --val 8 --height 720 --width 1280 --videos 0 && $PY -m roadseg_dist.cli shard $W/bdd $W/shards \
      --split val && $PY -m roadseg_dist.cli shard $W/bdd $W/shards --split train"; } > "$R/data.txt" 2>&1
  tail -2 "$R/data.txt"
  run() {  # NAME WORKERS AMP EPOCHS [more flags]: one `roadseg train`, nvidia-smi sampled meanwhile
    local name=$1 workers=$2 amp=$3 epochs=$4; shift 4
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
      > "$R/$name-smi.csv" & local smi=$!
    timeout "${RUN_S:-100}" $PY -m roadseg_dist.cli train --data $W/shards --storage $W/runs --name "$name" $DEVICE \
      --num-workers "$workers" --amp "$amp" --channels-last --epochs "$epochs" --batch-size 8 --crop "${CROP:-512x1024}" \
      --model unet --base-channels "${BASE:-32}" "$@" > "$R/$name.txt" 2>&1
    local rc=$?
    echo "exit $rc" >> "$R/$name.txt"; kill $smi
    $PY - "$W/runs/$name" "$R/$name" "$workers" <<'EOF'
import csv, json, pathlib, sys
run, out, workers = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
log = pathlib.Path(out + ".txt").read_text(errors="replace").splitlines()
records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
util = [float(r[1]) for r in csv.reader(open(out + "-smi.csv")) if len(r) > 2 and r[1].strip().replace(".", "").isdigit()]
busy = [u for u in util if u > 0]
print(f"{run.name}: {log[-1]}; epochs {[r['epoch'] for r in records]}"
      + "".join(f"; epoch {r['epoch']}: {r['images_per_s'] / workers:.1f} images/s per GPU ({r['seconds']:.1f} s), "
                f"val mIoU {r['val_miou']:.3f}"
                + (f" (restored from {r['restored_from_epoch']})" if r.get("restored_from_epoch") else "") for r in records))
print(f"  GPU utilisation (nvidia-smi, every 0.5 s, all GPUs): mean {sum(util) / max(1, len(util)):.0f} % over the whole "
      f"command, {sum(busy) / max(1, len(busy)):.0f} % while busy, {len(busy)}/{len(util)} samples busy")
print("  " + next((l for l in log if l.startswith("ingest:")), "no ingest line") + f" (workers = GPUs = {workers})")
for line in [l for l in log if l.startswith("resume:") or "Error" in l or l.startswith("training failed")][:4]:
    print("  " + line[:600])
if not records:
    print("  last lines:\n    " + "\n    ".join(l[:300] for l in log[-15:]))
EOF
    [ "$rc" = 0 ] || keep_ray_logs "$name"
  }
  {
    run g1-bf16 1 bf16 2
    RUN_S=${RESUME_S:-70} run g1-bf16 1 bf16 3 --resume   # the epoch-2 checkpoint, written from the GPU, resumed on it
    RUN_S=${RESUME_S:-70} run g1-fp16 1 fp16 1            # fp16 with the gradient scaler
    [ "$NGPU" -gt 1 ] && run "g$NGPU-bf16" "$NGPU" bf16 2   # DDP over every GPU (SyncBatchNorm)
  } 2>&1 | tee "$R/raytrain.txt"
  pack
fi

if [ -z "${SKIP_BENCH:-}" ]; then
  infer() {  # NAME [bench_infer flags]: one bench_infer --gpu --hd run
    local name=$1; shift
    timeout "${INFER_S:-130}" $PY benchmarks/bench_infer.py --gpu --hd --video "$VIDEO" \
      --no-s3 --no-peer --no-fp32 --confidence-pairs 0 "$@" > "$R/$name.txt" 2>&1
    echo "exit $?" >> "$R/$name.txt"
    grep -v -E "^\(|Warning|warn\(|^\s*$" "$R/$name.txt" | tail -20
  }
  echo "== per-frame work on the GPU against a unit's CPUs (issue 21): overlay by nvJPEG, decode by NVDEC"
  timeout "${STAGES_S:-60}" $PY benchmarks/bench_gpu_stages.py --video "$VIDEO" > "$R/stages.txt" 2>&1
  echo "exit $?" >> "$R/stages.txt"
  grep -v -E "Warning|warn\(|^\s*$" "$R/stages.txt" | tail -6
  echo "== infer on the GPU (issue 21): 720p H.264 input, roadseg infer at its defaults"
  # an archive's pace, not one clip's: ~3 sources per unit task (a 16-CPU node runs 15), so the job
  # is not the time of its slowest clip; the near-free line is a CPU machine's figure
  INFER_S=${R18_S:-150} infer infer-r18 --model unet-resnet18 --size 360x640 --batch-size 16 --frames 120 \
    --copies "${R18_COPIES:-45}" --no-near-free 2>&1 | tee "$R/infer.txt"
  INFER_S=${UNET_S:-130} infer infer-unet --model unet --base-channels 64 --size 576x768 --batch-size 16 --frames 120 \
    --copies "${UNET_COPIES:-30}" --no-near-free 2>&1 | tee -a "$R/infer.txt"
fi
