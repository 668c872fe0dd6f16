"""Benchmark of the labelling loop: is a model fine-tuned on the frames it was least sure of better
than one fine-tuned on as many frames chosen at random? Side by side in one run, on synthetic data
where the ground truth of every clip frame is known (`roadseg synth`'s video_labels/):

  the archive       a fleet's clips, most in daylight (what the model was trained on), some at night
  before            a model trained on daylight scenes, scored on held-out night clips (mIoU over
                    the clips' frames, against their ground truth)
  least confident   the archive segmented (`roadseg infer`), the N frames with the lowest confidence
                    exported (`roadseg frames --order-by confidence --per-source K --min-gap T
                    --export`), "labelled" with their ground truth, sharded, and the model fine-tuned on
                    them beside its own data (`roadseg train --init-from --data A,B --data-weights`)
  random            the same with N frames drawn at random under the same spread rules
  the goal          least confident > random: the budget goes where the model is wrong

    .venv/bin/python benchmarks/bench_active_loop.py [--budget 16] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

from roadseg_dist import settings
from roadseg_dist.ops.cluster import init_ray
from roadseg_dist.data import synth
from roadseg_dist.shard import job as shard_job
from roadseg_dist.infer import pipeline
from roadseg_dist.infer.settings import InferSettings
from roadseg_dist.metrics import ConfusionMatrix
from roadseg_dist.results import export as export_mod, query
from roadseg_dist.train.driver import run as train
from roadseg_dist.train.settings import TrainSettings

SIZE = (96, 160)
MODEL = dict(model="unet", base_channels=8, batch_size=4, crop=SIZE, num_workers=1, val_batch_size=4)


def clips(folder: str, labels: str, n: int, frames: int, seed: int, light: str) -> None:
    """``n`` clips under ``light`` and their frames' ground truth (labels/<clip>/NNNNNN.png)."""
    for k in range(n):
        name = f"{light}{seed}-{k:02d}"
        synth.write_video(os.path.join(folder, name + ".mp4"), np.random.default_rng([seed, k]), *SIZE, frames, 10.0,
                          "coarse", light, os.path.join(labels, name))


def score(out: str, labels: str) -> float:
    """mIoU of OUT's masks against the clips' ground truth, over every frame."""
    cm = ConfusionMatrix()
    for clip in sorted(os.listdir(labels)):
        for name in sorted(os.listdir(os.path.join(labels, clip))):
            truth = cv2.imread(os.path.join(labels, clip, name), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(os.path.join(out, clip, "mask", name), cv2.IMREAD_UNCHANGED)
            cm.update(truth, mask)
    return float(cm.compute()["miou"])


def segment(run: str, videos: str, out: str) -> None:
    pipeline.run(settings.build(InferSettings, checkpoint=run, input=videos, output=out, view=False,
                                outputs=("mask", "stats")), show_progress=False)


def fine_tune(root: str, rows: list[dict], segmented: str, labels: str, base_shards: str, runs: str, name: str,
              args) -> str:
    """Export ``rows`` (their frames + pre-labels), label them with the ground truth, shard, fine-tune."""
    dest = os.path.join(root, "export-" + name)
    export_mod.export(segmented, rows, dest)
    for row in rows:
        shutil.copy(os.path.join(labels, row["video"], f"{int(row['frame']):06d}.png"),
                    os.path.join(dest, "bdd100k/labels/sem_seg/masks/train", export_mod.name_of(row) + ".png"))
    shard_job.run(shard_job.ShardSettings(root=os.path.join(dest, "bdd100k"), dest=dest + "-shards"))
    train(settings.build(TrainSettings, data=f"{base_shards},{dest}-shards", data_weights=f"1,{args.weight}",
                         init_from=os.path.join(runs, "day"), storage=runs, name=name, epochs=args.tune_epochs,
                         lr=args.tune_lr, **MODEL), echo=lambda line: None)
    return os.path.join(runs, name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=16, help="frames labelled (N)")
    ap.add_argument("--per-source", type=int, default=4)
    ap.add_argument("--min-gap", type=float, default=0.5, help="seconds between frames of one clip")
    ap.add_argument("--epochs", type=int, default=24, help="epochs of the daylight model (trained well: its confidence means something)")
    ap.add_argument("--day-clips", type=int, default=9, help="daylight clips in the archive")
    ap.add_argument("--night-clips", type=int, default=3, help="night clips in the archive")
    ap.add_argument("--tune-epochs", type=int, default=4)
    ap.add_argument("--tune-lr", type=float, default=3e-4)
    ap.add_argument("--weight", type=float, default=4.0, help="--data-weights of the labelled frames")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="bench-loop-")
    t0 = time.time()
    try:
        init_ray()
        data, shards, runs = os.path.join(root, "day"), os.path.join(root, "shards"), os.path.join(root, "runs")
        synth.generate(data, train=64, val=8, height=SIZE[0], width=SIZE[1], videos=0, seed=args.seed,
                       detail="coarse", light="day")
        for split in ("train", "val"):
            shard_job.run(shard_job.ShardSettings(root=data, dest=shards, split=split))
        train(settings.build(TrainSettings, data=shards, storage=runs, name="day", epochs=args.epochs, seed=args.seed,
                             **MODEL), echo=lambda line: None)
        archive, held = os.path.join(root, "archive"), os.path.join(root, "held-out")
        clips(archive, archive + "-labels", args.day_clips, 24, seed=100 + args.seed, light="day")
        clips(archive, archive + "-labels", args.night_clips, 24, seed=300 + args.seed, light="night")
        clips(held, held + "-labels", 4, 24, seed=200 + args.seed, light="night")
        segmented = os.path.join(root, "segmented")
        segment(os.path.join(runs, "day"), archive, segmented)
        rows = query.search(segmented, "true", "confidence", limit=100_000)
        chosen = export_mod.spread(rows, args.per_source, args.min_gap, args.budget)
        shuffled = [rows[i] for i in np.random.default_rng(args.seed).permutation(len(rows))]
        drawn = export_mod.spread(shuffled, args.per_source, args.min_gap, args.budget)
        results = {}
        for name, run in (("before", os.path.join(runs, "day")),
                          ("least confident", fine_tune(root, chosen, segmented, archive + "-labels", shards, runs,
                                                        "confident", args)),
                          ("random", fine_tune(root, drawn, segmented, archive + "-labels", shards, runs, "random",
                                               args))):
            out = os.path.join(root, "scored-" + name.replace(" ", "-"))
            segment(run, held, out)
            results[name] = score(out, held + "-labels")
        mean = lambda rs: float(np.nanmean([r["confidence"] for r in rs]))
        night = lambda rs: sum(r["video"].startswith("night") for r in rs)
        print(f"{args.budget} labelled frames of an archive of {args.day_clips} day and {args.night_clips} night clips "
              f"(at most {args.per_source} a clip, {args.min_gap} s apart); mIoU on 4 held-out night clips of a model "
              f"trained on daylight scenes ({time.time() - t0:.0f} s):")
        print(f"  before fine-tuning        {100 * results['before']:6.2f} %")
        print(f"  least confident frames    {100 * results['least confident']:6.2f} %   ({night(chosen)} of them at "
              f"night, mean confidence {mean(chosen):.3f})")
        print(f"  random frames             {100 * results['random']:6.2f} %   ({night(drawn)} of them at night, "
              f"mean confidence {mean(drawn):.3f})")
        gain = results["least confident"] - results["random"]
        print(f"least confident - random: {100 * gain:+.2f} points of mIoU ({'chosen beat random' if gain > 0 else 'NOT better than random'})")
        print(json.dumps({k: round(v, 4) for k, v in results.items()}))
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
