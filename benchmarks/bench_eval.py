"""Benchmark of `roadseg eval` (issue 6), measured side by side in one run on the same shards.

Prints:
  eval, 1 actor              the Ray Data scoring job (read tasks -> one model actor -> matrices):
                             images/s end to end, and after the first batch (actor start-up excluded)
  eval, 2 actors             the same with two model actors (1 CPU each); ratio 2 / 1
  sequential images/s        the same model in a plain loop in this process (decode, predict, score)
  metric Mpixel/s            ConfusionMatrix.update vs the official toolkit's fast_hist, same masks

    .venv/bin/python benchmarks/bench_eval.py [--images 64] [--size 180x320] [--base-channels 8]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

from roadseg_dist import labels, settings, storage
from roadseg_dist.ops.cluster import init_ray, shutdown_ray
from roadseg_dist.data import shards, synth
from roadseg_dist.shard import job as shard_job
from roadseg_dist.eval.score import label_size_masks as predict_masks, score_split
from roadseg_dist.metrics import ConfusionMatrix
from roadseg_dist.models.checkpoint import load_model, save_checkpoint
from roadseg_dist.models.zoo import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", default="180x320")
    ap.add_argument("--base-channels", type=int, default=8)
    args = ap.parse_args()
    h, w = settings.parse_size(args.size)
    work = tempfile.mkdtemp(prefix="bench-eval-")
    try:
        root, data, ckpt = (os.path.join(work, p) for p in ("bdd", "shards", "ckpt"))
        synth.generate(root, train=2, val=args.images, height=h, width=w, videos=0, seed=0)
        init_ray("local", num_cpus=os.cpu_count())
        shard_job.run(settings.build(shard_job.ShardSettings, root=root, dest=data, split="val", shard_size=8))
        torch.manual_seed(0)
        save_checkpoint(ckpt, build_model("unet", base_channels=args.base_channels), input_size=(h, w))
        print(f"{args.images} val images {h}x{w}, unet base {args.base_channels}, {os.cpu_count()} cores")

        rates = {}
        for workers in (1, 2):
            score_split(ckpt, data, limit=2, workers=workers)  # warm: the file cache, Ray's workers
            first: list = []  # (time, images) when the first batch came back: actors are up by then

            def seen(done, total):
                if not first:
                    first.append((time.perf_counter(), done))

            t0 = time.perf_counter()
            cm, n = score_split(ckpt, data, workers=workers, cpus_per_worker=1.0, batch_size=4, progress=seen)
            t1 = time.perf_counter()
            rates[workers] = (n - first[0][1]) / (t1 - first[0][0])
            print(f"eval, {workers} actor(s): {n / (t1 - t0):6.2f} images/s end to end, {rates[workers]:6.2f} "
                  f"images/s after the first batch ({first[0][0] - t0:.1f}s to start the job and its actors)"
                  f"   mIoU {100 * cm.compute()['miou']:.2f}")
        print(f"ratio 2 actors / 1 actor (after the first batch): {rates[2] / rates[1]:.2f}")

        torch.set_num_threads(1)
        model, meta = load_model(ckpt, "cpu")
        t0, seq = time.perf_counter(), ConfusionMatrix()
        count, pairs = 0, []
        for url in [storage.join(data, n) for n in shards.read_index(data, "val")["shard"].unique()]:
            for key, jpg, png in shards.iter_shard(url):
                rgb, label = shards.decode_sample(jpg, png)
                pred = predict_masks(model, [rgb], meta)[0]
                seq.update(label, pred)
                pairs.append((label, pred))
                count += 1
        seq_rate = count / (time.perf_counter() - t0)
        print(f"sequential images/s (1 thread): {seq_rate:7.2f}   ratio eval 2 actors / sequential: "
              f"{rates[2] / seq_rate:.2f}")

        from bdd100k.eval.seg import fast_hist
        gts = np.concatenate([g.reshape(-1) for g, _ in pairs] * 4)
        prs = np.concatenate([p.reshape(-1) for _, p in pairs] * 4)
        t0 = time.perf_counter()
        ConfusionMatrix().update(gts, prs)
        ours = gts.size / 1e6 / (time.perf_counter() - t0)
        g = gts.copy()
        g[g == labels.IGNORE_INDEX] = labels.NUM_CLASSES
        t0 = time.perf_counter()
        fast_hist(g, prs, labels.NUM_CLASSES + 1)
        theirs = gts.size / 1e6 / (time.perf_counter() - t0)
        print(f"metric Mpixel/s: ConfusionMatrix.update {ours:.1f}, official fast_hist {theirs:.1f}, "
              f"ratio {ours / theirs:.2f}")
    finally:
        shutdown_ray()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
