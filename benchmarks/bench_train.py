"""Training throughput: streaming shards from S3 through Ray Data vs. tensors already in memory.

Prints, measured side by side in one run on the same model and batches:
  * training images/s fed by the Ray Data ingest (shards streamed from a loopback S3 server,
    decoded and augmented in Ray tasks), and fed from in-memory tensors; their ratio is the ingest
    overhead seen by the training loop;
  * ingest-only samples/s (Ray Data, no training) and per CPU core, beside a plain one-process
    decode+augment loop (the per-core cost of the work itself).

Usage: python benchmarks/bench_train.py [--train 48 --height 128 --width 224 --epochs 3 --device cuda --amp bf16]
Runs without a GPU (CPU training); on a GPU machine pass --device cuda to measure with AMP.
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
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
