"""Training ingest and throughput: the path on main (old) beside the new one, in one run; with
--channels-last / --compile, the GPU speed options beside the plain model instead.

Default mode, on 720x1280 JPEG shards (BDD100K's size) streamed from a loopback S3 server, side by side:
  * ingest only: Ray Data samples/s over the local Ray's CPUs (per core), beside one plain process that
    decodes and augments the same samples (the work itself, per core); their ratio (goal >= 0.8). Also
    the CPU time per sample of every process (the driver, Ray's workers and daemons; not the S3 server),
    which a busy shared machine distorts far less than samples/s: plain CPU ms / Ray Data CPU ms.
  * training images/s fed by each path and fed from in-memory tensors (epochs interleaved so that load
    changes hit all alike); streamed / in-memory (goal >= 0.95).
  old: main's per-rank dataset (from_items + flat_map, a row per sample, float augmentation of the
  rescaled image; benchmarks/old_ingest.py). new: the dataset Ray Train splits (data/feed.py: one read
  task per shard, numpy blocks, one warp per sample), through the same DataConfig.configure call.

Speed-options mode (--channels-last and/or --compile; no Ray, no S3, in-memory batches): training
images/s and inference images/s (forward + argmax, fp16 autocast on CUDA as eval/compare/infer run)
of the plain model, then of each option asked for and of both together, over a fixed number of
steps after warm-up steps (torch.compile compiles during the warm-up), with the ratio to plain.

Usage: python benchmarks/bench_train.py                    (~5-8 min on 2 cores; prints every figure)
       python benchmarks/bench_train.py --train 24 --height 360 --width 640 --crop 256x512   (quick look)
       python benchmarks/bench_train.py --gpu --amp bf16 --channels-last --compile [--steps 30 --warmup 10]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))


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
    ap.add_argument("--train", type=int, default=320, help="training samples (ingest-only epochs read all)")
    ap.add_argument("--distinct", type=int, default=48, help="of which distinct synthetic images (the rest: copies)")
    ap.add_argument("--train-images", type=int, default=16, help="samples the training comparison uses")
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--crop", default="512x1024", help="training crop HxW (the default recipe's)")
    ap.add_argument("--ingest-epochs", type=int, default=1, help="timed ingest-only epochs per path and size")
    ap.add_argument("--epochs", type=int, default=2, help="timed training epochs per feed")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--shuffle-buffer", type=int, default=8, help="local shuffle buffer (both paths; keep it "
                    "well under an epoch, as 64 is under a real one)")
    ap.add_argument("--model", default="unet")
    ap.add_argument("--base-channels", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "off"))
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray")
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
    from roadseg_dist.settings import parse_size

    args.crop = parse_size(args.crop)
    s3 = start_s3()
    try:
        figures = ingest_and_training(args)
    finally:
        s3.terminate()
    report(args, figures)


class CpuMeter:
    """CPU seconds (user + system) of this process and all its descendants (the local Ray's daemons and
    workers), except ``exclude`` (the S3 server), by kind: driver, Ray workers (tasks, actors), Ray's
    daemons. A process gone between readings loses its last share."""

    def __init__(self, exclude=()):
        import psutil

        self.me, self.exclude, self.seen = psutil.Process(), set(exclude), {}

    def read(self) -> dict:
        import psutil

        for p in [self.me] + self.me.children(recursive=True):
            if p.pid in self.exclude:
                continue
            try:
                t, name = p.cpu_times(), p.name()
            except psutil.Error:
                continue
            kind = "driver" if p.pid == self.me.pid else "workers" if name.startswith("ray::") else "daemons"
            self.seen[p.pid] = (kind, t.user + t.system)
        out = {"driver": 0.0, "workers": 0.0, "daemons": 0.0}
        for kind, cpu in self.seen.values():
            out[kind] += cpu
        return out


def measured(meter, run) -> tuple[int, float, dict]:
    """(samples, wall seconds, {kind: CPU seconds}) of ``run()``, which returns the number of samples."""
    c0, t0 = meter.read(), time.perf_counter()
    n = run()
    wall, c1 = time.perf_counter() - t0, meter.read()
    return n, wall, {k: c1[k] - c0[k] for k in c0}


def replicate(root: str, split: str, total: int) -> None:
    """Hard links of the generated samples under new names until the split holds ``total`` samples."""
    from roadseg_dist.data import bdd100k

    images, masks = bdd100k.image_dir(root, split), bdd100k.label_dir(root, split)
    stems = sorted(n[:-4] for n in os.listdir(images) if n.endswith(".jpg"))
    for i in range(total - len(stems)):
        stem, copy = stems[i % len(stems)], f"{stems[i % len(stems)]}-r{i // len(stems) + 1}"
        os.link(f"{images}/{stem}.jpg", f"{images}/{copy}.jpg")
        os.link(f"{masks}/{stem}.png", f"{masks}/{copy}.png")


def ingest_and_training(args) -> dict:
    import logging

    import cv2
    import ray
    import torch
    from ray import cloudpickle

    import old_ingest
    from roadseg_dist.ops.cluster import init_ray
    from roadseg_dist.data import feed, ingest, shards, synth
    from roadseg_dist.shard import job as shard_job

    cloudpickle.register_pickle_by_value(old_ingest)  # Ray's workers cannot import benchmarks/
    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(tmp + "/root", train=min(args.distinct, args.train), val=2, height=args.height,
                       width=args.width, videos=0, seed=0)
        replicate(tmp + "/root", "train", args.train)
        data = "s3://bench/shards"
        init_ray("local", args.cpus)
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per dataset otherwise
        shard_job.run(shard_job.ShardSettings(root=tmp + "/root", dest=data, split="train", shard_size=32))
    index = shards.read_index(data, "train")
    aug = dict(crop=args.crop, scale_range=(0.5, 2.0), flip=True, jitter=0.2)
    meter = CpuMeter(exclude=[p.pid for p in CpuMeter().me.children() if "moto" in " ".join(p.cmdline())])
    cv2.setNumThreads(1)  # the plain loop is one core's work, as a task's is

    def old_epoch(idx, epoch):
        ds = old_ingest.train_dataset(data, ingest.plan_epoch(idx, 1, 0, epoch)[0], seed=0, epoch=epoch, **aug)
        return old_ingest.iter_train_batches(ds, args.batch_size, args.shuffle_buffer, seed=epoch)

    def new_stream(idx, sized):
        clock = feed.epoch_clock()
        ds = feed.train_dataset(ingest.train_sets([(data, idx)]), 1, clock, sized, seed=0, **aug)
        [split] = feed.data_config(sized, 1).configure(datasets={"train": ds}, world_size=1, worker_handles=None,
                                                      worker_node_ids=None)

        def epoch_batches(epoch):
            feed.start_epoch(clock, epoch)
            return feed.train_batches(split["train"], args.batch_size, sized, args.shuffle_buffer, seed=epoch)
        return epoch_batches

    all_cpus = ingest.size_feed(args.cpus, 1, 0.0, gpu=False, rows=args.batch_size)  # ingest only: every CPU
    small = index[index["key"].isin(sorted(index["key"])[:len(index) // 4])]
    paths = {"old": (lambda e: old_epoch(small, e), lambda e: old_epoch(index, e)),
             "new": (new_stream(small, all_cpus), new_stream(index, all_cpus))}
    figures = {"load_before": os.getloadavg()[0]}
    for name, (small_epochs, full_epochs) in paths.items():
        count = lambda epochs, e: sum(len(b["key"]) for b in epochs(e))
        count(small_epochs, 0), count(full_epochs, 0)  # warm-up: worker processes, imports
        for size, epochs in (("small", small_epochs), ("full", full_epochs)):
            figures[f"ingest_{name}_{size}"] = [measured(meter, lambda: count(epochs, e))
                                                for e in range(1, args.ingest_epochs + 1)]
        print(f"  measured ingest, {name} path", flush=True)
    figures["plain_old"] = measured(meter, lambda: plain_loop(data, index, aug, old=True))
    figures["plain_new"] = measured(meter, lambda: plain_loop(data, index, aug, old=False))
    print("  measured the plain loops", flush=True)

    subset = index[index["key"].isin(sorted(index["key"])[:args.train_images])]
    worker_cpus = args.cpus * (1 - ingest.worker_share(args.cpus, 1, args.device == "cuda"))  # auto, one worker
    job_feed = ingest.size_feed(args.cpus, 1, worker_cpus,
                                gpu=args.device == "cuda", rows=args.batch_size)
    figures["job_feed"], figures["torch_threads"] = job_feed, max(1, round(worker_cpus))
    torch.set_num_threads(figures["torch_threads"])  # the CPUs the job reserves for its worker, as Ray sets them
    new_train = new_stream(subset, job_feed)
    memory = [{"image": b["image"].clone(), "label": b["label"].clone()} for b in new_train(1)]
    figures["training"] = interleaved_training(args, {"memory": lambda epoch: memory,
                                                      "old": lambda e: old_epoch(subset, e), "new": new_train})
    figures["load_after"] = os.getloadavg()[0]
    ray.shutdown()
    return figures


def plain_loop(data, index, aug, old: bool) -> int:
    """Epoch 1's samples decoded and augmented in this process, one core: the cost of the work itself."""
    import old_ingest
    from roadseg_dist import storage
    from roadseg_dist.data import augment, ingest, shards

    n = 0
    for task in ingest.plan_epoch(index, 1, 0, 1)[0]:
        samples = shards.read_samples(storage.join(data, task.shard), task.keys)
        if old:
            for key, jpg, png in samples:
                rgb, label = shards.decode_sample(jpg, png)
                old_ingest.augment(rgb, label, augment.sample_rng(0, 1, key), **aug)
                n += 1
        else:
            n += sum(len(b["key"]) for b in augment.decode_augment(samples, seed=0, epoch=1, rows=4, **aug))
    return n


def interleaved_training(args, feeds: dict) -> dict:
    """images/s per feed; epochs alternate between feeds so that load changes hit all alike."""
    import torch

    from roadseg_dist.models.zoo import build_model
    from roadseg_dist.train import loop

    device = torch.device(args.device)
    amp = args.amp if device.type == "cuda" else "off"

    def fresh():
        torch.manual_seed(0)
        kw = {"base_channels": args.base_channels} if args.model == "unet" else {}
        model = build_model(args.model, **kw).to(device)
        opt = loop.build_optimizer(model, "adamw", 1e-3, 1e-4, 0.9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp == "fp16")
        return model, opt, sched, scaler

    state = {name: fresh() for name in feeds}
    images, seconds, waited = dict.fromkeys(feeds, 0), dict.fromkeys(feeds, 0.0), dict.fromkeys(feeds, 0.0)
    for epoch in range(0, args.epochs + 1):  # epoch 0: warm-up, not timed
        for name, batches_for_epoch in feeds.items():
            model, opt, sched, scaler = state[name]
            wait = [0.0]
            t0 = time.perf_counter()
            n = loop.train_one_epoch(model, timed(batches_for_epoch(epoch + 1), wait), opt, sched, scaler, device,
                                     amp=amp)["images"]
            if device.type == "cuda":
                torch.cuda.synchronize()
            if epoch:
                images[name] += n
                seconds[name] += time.perf_counter() - t0
                waited[name] += wait[0]
        print(f"  measured training epoch {epoch}{' (warm-up)' if not epoch else ''}", flush=True)
    rates = {name: images[name] / seconds[name] for name in feeds}
    rates.update({f"{name}_wait": waited[name] / seconds[name] for name in feeds})
    return rates


def timed(batches, wait: list):
    """The batches; ``wait[0]`` accumulates the seconds the training loop waited for the next one."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        finally:
            wait[0] += time.perf_counter() - t0
        yield batch




def epoch_costs(f: dict, path: str) -> dict:
    """Per-epoch means of the two epoch sizes, and the straight line through them: wall seconds and CPU
    ms per sample beyond an epoch's start-up (the slope), and the start-up itself (the intercept)."""
    def mean(runs):
        n = sum(r[0] for r in runs) / len(runs)
        return n, sum(r[1] for r in runs) / len(runs), {k: sum(r[2][k] for r in runs) / len(runs) for k in runs[0][2]}
    (ns, ws, cs), (nf, wf, cf) = mean(f[f"ingest_{path}_small"]), mean(f[f"ingest_{path}_full"])
    slope = (wf - ws) / (nf - ns)
    cpu = {k: 1000 * (cf[k] - cs[k]) / (nf - ns) for k in cf}
    return {"n": nf, "rate": nf / wf, "cpu_ms": {k: 1000 * v / nf for k, v in cf.items()},
            "steady_rate": 1 / slope, "steady_cpu_ms": cpu, "startup_s": wf - nf * slope,
            "startup_cpu_s": sum(cf.values()) - nf * sum(cpu.values()) / 1000}


def report(args, f: dict) -> None:
    cores, paths = args.cpus, ("old", "new")
    print(f"\n{args.train} samples ({args.distinct} distinct synthetic {args.height}x{args.width} JPEGs) in 32-sample "
          f"shards on a loopback S3, crop {args.crop[0]}x{args.crop[1]} (scale 0.5-2, flip, jitter), local Ray with "
          f"{cores} CPUs; load average {f['load_before']:.1f} before, {f['load_after']:.1f} after (a busy machine "
          f"distorts samples/s, CPU ms per sample far less)")
    print(f"{'':60}{'old path (main)':>17}{'new path':>12}")
    row = lambda label, old, new, fmt: print(f"{label:60}{fmt.format(old):>17}{fmt.format(new):>12}")
    e = {k: epoch_costs(f, k) for k in paths}
    plain = {k: f[f"plain_{k}"][0] / f[f"plain_{k}"][1] for k in paths}
    plain_ms = {k: 1000 * f[f"plain_{k}"][2]["driver"] / f[f"plain_{k}"][0] for k in paths}
    row("one plain process, decode + augment: samples/s per core", plain["old"], plain["new"], "{:.1f}")
    row("  CPU ms per sample", plain_ms["old"], plain_ms["new"], "{:.1f}")
    row(f"ingest only, Ray Data, epochs of {e['new']['n']:.0f}: samples/s", *(e[k]["rate"] for k in paths), "{:.1f}")
    row(f"  per CPU core ({cores} cores)", e["old"]["rate"] / cores, e["new"]["rate"] / cores, "{:.1f}")
    row("  ratio per core / plain (goal >= 0.8)", *(e[k]["rate"] / cores / plain[k] for k in paths), "{:.2f}")
    row("  CPU ms per sample, all processes", *(sum(e[k]["cpu_ms"].values()) for k in paths), "{:.1f}")
    row("  ratio plain / Ray Data CPU per sample", *(plain_ms[k] / sum(e[k]["cpu_ms"].values()) for k in paths),
        "{:.2f}")
    print(f"ingest only, per sample beyond each epoch's start-up (from epochs of {e['new']['n'] / 4:.0f} and "
          f"{e['new']['n']:.0f}; what a BDD100K epoch of 7,000 costs):")
    row("  samples/s per core", *(e[k]["steady_rate"] / cores for k in paths), "{:.1f}")
    row("  ratio per core / plain (goal >= 0.8)", *(e[k]["steady_rate"] / cores / plain[k] for k in paths), "{:.2f}")
    for kind, what in (("workers", "Ray workers (tasks, coordinator)"), ("driver", "the consuming process"),
                       ("daemons", "Ray's daemons (raylet, GCS, ...)")):
        row(f"  CPU ms per sample, {what}", *(e[k]["steady_cpu_ms"][kind] for k in paths), "{:.1f}")
    row("  ratio plain / Ray Data CPU per sample", *(plain_ms[k] / sum(e[k]["steady_cpu_ms"].values()) for k in paths),
        "{:.2f}")
    row("  an epoch's start-up: seconds, CPU seconds", *(f"{e[k]['startup_s']:.1f}, {e[k]['startup_cpu_s']:.1f}"
                                                          for k in paths), "{}")
    t = f["training"]
    print(f"training ({args.model}, base {args.base_channels}, batch {args.batch_size}, {args.train_images} samples, "
          f"{args.epochs} timed epochs, {args.device}, {f['torch_threads']} torch thread(s)): in-memory tensors "
          f"{t['memory']:.2f} images/s")
    row("training, streamed: images/s", t["old"], t["new"], "{:.2f}")
    row("  ratio streamed / in-memory (goal >= 0.95)", t["old"] / t["memory"], t["new"] / t["memory"], "{:.2f}")
    row("  share of the epoch waiting for a batch", t["old_wait"], t["new_wait"], "{:.1%}")
    print(f"new path's ingest beside one training worker: {f['job_feed'].describe(1)}")


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
