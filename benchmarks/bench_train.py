"""Training throughput: streaming shards from S3 through Ray Data vs. tensors already in memory;
with --channels-last / --compile, the GPU speed options beside the plain model instead.

Default mode prints, measured side by side in one run on the same model and batches:
  * training images/s fed by the Ray Data ingest (shards streamed from a loopback S3 server,
    decoded and augmented in Ray tasks), and fed from in-memory tensors; their ratio is the ingest
    overhead seen by the training loop;
  * ingest-only samples/s (Ray Data, no training) and per CPU core, beside a plain one-process
    decode+augment loop (the per-core cost of the work itself).

Speed-options mode (--channels-last and/or --compile; no Ray, no S3, in-memory batches): training
images/s and inference images/s (forward + argmax, fp16 autocast on CUDA as eval/compare/infer run)
of the plain model, then of each option asked for and of both together, over a fixed number of
steps after warm-up steps (torch.compile compiles during the warm-up), with the ratio to plain.

Usage: python benchmarks/bench_train.py [--train 48 --height 128 --width 224 --epochs 3 --device cuda --amp bf16]
       python benchmarks/bench_train.py --gpu --amp bf16 --channels-last --compile [--steps 30 --warmup 10]
Runs without a GPU (CPU training); on a GPU machine pass --gpu (= --device cuda) to measure with AMP.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def start_s3():
    from conftest import free_port, wait_for_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench-secret", AWS_DEFAULT_REGION="us-east-1")
    import boto3

    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=48, help="synthetic training images")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", default="unet")
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "off"))
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray")
    ap.add_argument("--ingest-cpus", type=float, default=0.5, help="CPUs per Ray Data task")
    ap.add_argument("--gpu", action="store_true", help="same as --device cuda")
    ap.add_argument("--channels-last", action="store_true", help="speed-options mode: measure channels_last")
    ap.add_argument("--compile", action="store_true", help="speed-options mode: measure torch.compile")
    ap.add_argument("--steps", type=int, default=20, help="speed-options mode: timed steps per variant")
    ap.add_argument("--warmup", type=int, default=5, help="speed-options mode: untimed steps first")
    args = ap.parse_args()
    if args.gpu:
        args.device = "cuda"
    if args.channels_last or args.compile:
        speed_options(args)
        return

    import logging

    import torch

    from roadseg_dist import storage
    from roadseg_dist.cluster import init_ray
    from roadseg_dist.data import ingest, shard_job, shards, synth
    from roadseg_dist.models.zoo import build_model
    from roadseg_dist.train import loop

    s3 = start_s3()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            synth.generate(tmp + "/root", train=args.train, val=2, height=args.height, width=args.width,
                           videos=0, seed=0)
            data = "s3://bench/shards"
            init_ray("local", args.cpus)
            logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per dataset otherwise
            shard_job.run_shard(shard_job.ShardSettings(root=tmp + "/root", dest=data, split="train", shard_size=8))
        index = shards.read_index(data, "train")
        crop = (args.height, args.width)
        device = torch.device(args.device)
        amp = args.amp if device.type == "cuda" else "off"

        def stream(epoch):
            tasks = ingest.plan_epoch(index, 1, 0, epoch)[0]
            ds = ingest.train_dataset(data, tasks, seed=0, epoch=epoch, crop=crop, scale_range=(0.75, 1.5),
                                      ingest_cpus=args.ingest_cpus)
            return ingest.iter_train_batches(ds, args.batch_size, 32, seed=epoch)

        def fresh():
            torch.manual_seed(0)
            kw = {"base_channels": args.base_channels} if args.model == "unet" else {}
            model = build_model(args.model, **kw).to(device)
            opt = loop.build_optimizer(model, "adamw", 1e-3, 1e-4, 0.9)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
            scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp == "fp16")
            return model, opt, sched, scaler

        def interleaved_training(feeds: dict) -> dict:
            """images/s per feed; epochs alternate between feeds so that load changes hit both alike."""
            state = {name: fresh() for name in feeds}
            for name, batches_for_epoch in feeds.items():  # one warm-up epoch each
                model, opt, sched, scaler = state[name]
                loop.train_one_epoch(model, batches_for_epoch(0), opt, sched, scaler, device, amp=amp)
            images, seconds = dict.fromkeys(feeds, 0), dict.fromkeys(feeds, 0.0)
            for epoch in range(1, args.epochs + 1):
                for name, batches_for_epoch in feeds.items():
                    model, opt, sched, scaler = state[name]
                    t0 = time.perf_counter()
                    images[name] += loop.train_one_epoch(model, batches_for_epoch(epoch), opt, sched, scaler,
                                                         device, amp=amp)["images"]
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds[name] += time.perf_counter() - t0
            return {name: images[name] / seconds[name] for name in feeds}

        # ingest only: Ray Data, all CPUs of the local Ray
        list(stream(0))
        t0, n = time.perf_counter(), 0
        for epoch in range(1, args.epochs + 1):
            n += sum(len(b["key"]) for b in stream(epoch))
        ingest_rate = n / (time.perf_counter() - t0)
        # the same work in one plain process: the cost per core
        from roadseg_dist.data.shards import decode_sample
        t0, m = time.perf_counter(), 0
        for task in ingest.plan_epoch(index, 1, 0, 1)[0]:
            for key, jpg, png in shards.read_samples(storage.join(data, task.shard), task.keys):
                rgb, label = decode_sample(jpg, png)
                ingest.augment(rgb, label, ingest.sample_rng(0, 1, key), crop=crop, scale_range=(0.75, 1.5))
                m += 1
        one_core = m / (time.perf_counter() - t0)

        # training fed from memory: the batches of epoch 1, materialised once
        memory = [{"image": torch.as_tensor(b["image"]), "label": torch.as_tensor(b["label"])} for b in stream(1)]
        rates = interleaved_training({"memory": lambda epoch: memory, "s3": stream})
        mem_rate, s3_rate = rates["memory"], rates["s3"]
    finally:
        s3.terminate()

    print(f"device {device.type} (amp {amp}), model {args.model}, {args.train} images {args.height}x{args.width}, "
          f"batch {args.batch_size}, {args.epochs} epochs, local Ray with {args.cpus} CPUs")
    print(f"training, fed from in-memory tensors : {mem_rate:8.1f} images/s")
    print(f"training, streamed from S3 (Ray Data): {s3_rate:8.1f} images/s")
    print(f"  ratio streamed / in-memory         : {s3_rate / mem_rate:8.2f}  (1.0 = ingest fully hidden)")
    print(f"ingest only, Ray Data                : {ingest_rate:8.1f} samples/s = "
          f"{ingest_rate / args.cpus:.1f} samples/s per CPU core ({args.cpus} cores)")
    print(f"ingest only, one plain process       : {one_core:8.1f} samples/s per core (decode + augment)")


def speed_options(args) -> None:
    """Plain vs channels_last / compile / both: training and inference images/s on in-memory batches."""
    import torch

    device = torch.device(args.device)
    amp = args.amp if device.type == "cuda" else "off"
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randint(0, 256, (args.batch_size, args.height, args.width, 3), generator=g,
                                       dtype=torch.uint8),
                "label": torch.randint(0, 19, (args.batch_size, args.height, args.width), generator=g,
                                       dtype=torch.uint8)} for _ in range(4)]
    variants = [("plain", False, False)]
    if args.channels_last:
        variants.append(("channels_last", True, False))
    if args.compile:
        variants.append(("compile", False, True))
    if args.channels_last and args.compile:
        variants.append(("channels_last+compile", True, True))
    rows = []
    for name, channels_last, compiled in variants:
        rows.append((name, *variant_rates(args, device, amp, batches, channels_last, compiled)))
        print(f"  measured {name}", flush=True)

    print(f"device {device.type} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}), "
          f"train amp {amp}, inference {'fp16 autocast' if device.type == 'cuda' else 'fp32'}, model "
          f"{args.model}, batch {args.batch_size} x {args.height}x{args.width}, {args.warmup} warm-up + "
          f"{args.steps} timed steps")
    print(f"{'variant':<24}{'train img/s':>12}{'x plain':>9}{'infer img/s':>13}{'x plain':>9}{'warm-up s':>11}")
    base_train, base_infer = rows[0][1], rows[0][2]
    for name, train_rate, infer_rate, warm_s in rows:
        print(f"{name:<24}{train_rate:>12.1f}{train_rate / base_train:>9.2f}{infer_rate:>13.1f}"
              f"{infer_rate / base_infer:>9.2f}{warm_s:>11.1f}")


def variant_rates(args, device, amp: str, batches: list, channels_last: bool, compiled: bool):
    """(train images/s, inference images/s, warm-up seconds) of one fresh model with these options."""
    import torch

    from roadseg_dist.data.ingest import to_model_input
    from roadseg_dist.models.predict import INFERENCE_AMP, as_input, autocast, optimize
    from roadseg_dist.models.zoo import build_model
    from roadseg_dist.train import loop

    torch.manual_seed(0)
    kw = {"base_channels": args.base_channels} if args.model == "unet" else {}
    model = optimize(build_model(args.model, **kw).to(device), channels_last=channels_last, compile=compiled)
    opt = loop.build_optimizer(model, "adamw", 1e-3, 1e-4, 0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp == "fp16")

    def train_step(batch):
        loop.train_one_epoch(model, [batch], opt, sched, scaler, device, amp=amp, channels_last=channels_last)

    @torch.inference_mode()
    def infer_step(batch):
        model.eval()
        with autocast(device, INFERENCE_AMP):
            model(as_input(to_model_input(batch["image"], device), channels_last)).argmax(1)

    def rate(step, n: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(n):
            step(batches[i % len(batches)])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n * args.batch_size / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    rate(train_step, args.warmup)
    rate(infer_step, max(2, args.warmup // 2))
    warm_s = time.perf_counter() - t0
    return rate(train_step, args.steps), rate(infer_step, args.steps), warm_s

if __name__ == "__main__":
    main()
