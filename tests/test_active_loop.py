"""The labelling loop end to end on synthetic data: a model trained on daylight scenes segments night
clips, the least confident frames are exported, "labelled" with the clips' synthetic ground truth,
sharded, and the model is fine-tuned on them with --init-from beside its original data."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

import torch

from roadseg_dist import settings
from roadseg_dist.cli import main
from roadseg_dist.data import synth
from roadseg_dist.shard import job as shard_job
from roadseg_dist.models.checkpoint import read_weights
from roadseg_dist.train.driver import run as train
from roadseg_dist.train.settings import TrainSettings

pytestmark = pytest.mark.slow
TINY = dict(model="unet", base_channels=4, batch_size=4, crop=(64, 96), num_workers=1, epochs=1, val_batch_size=4)


def run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_least_confident_frames_labelled_and_fine_tuned_with_init_from(ray_local, tmp_path):
    root, shards = str(tmp_path / "bdd"), str(tmp_path / "shards")
    synth.generate(root, train=12, val=4, height=64, width=96, videos=2, video_frames=12, detail="coarse",
                   light="day", clip_light="night")
    for split in ("train", "val"):
        shard_job.run(shard_job.ShardSettings(root=root, dest=shards, split=split))
    base = settings.build(TrainSettings, data=shards, storage=str(tmp_path / "runs"), name="day", **TINY)
    train(base, echo=lambda line: None)
    out = str(tmp_path / "night")
    run("infer", str(tmp_path / "runs/day"), root + "/videos", out, "--no-view")
    export = tmp_path / "to-label"
    run("frames", out, "--order-by", "confidence", "--limit", "6", "--per-source", "3", "--export", str(export))
    manifest = [json.loads(line) for line in (export / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 6 and {m["video"] for m in manifest} == {p.stem for p in (tmp_path / "bdd/videos").iterdir()}
    confidences = sorted(m["confidence"] for m in manifest)
    import pandas as pd

    every = pd.read_parquet(out + "/frames")
    assert confidences[-1] <= sorted(every.confidence)[-1]  # taken from the least sure end, spread per source
    for m in manifest:  # the labeller's work: the synthetic clip's ground truth for that very frame
        truth = tmp_path / "bdd/video_labels" / m["video"] / f"{m['frame']:06d}.png"
        shutil.copy(truth, export / "bdd100k/labels/sem_seg/masks/train" / f"{m['name']}.png")
    labelled = str(tmp_path / "labelled")
    run("shard", str(export / "bdd100k"), labelled, "--split", "train")

    # lr ~0: the fine-tuned weights are the ones it started from, which shows where it started
    tuned = settings.build(TrainSettings, data=f"{shards},{labelled}", data_weights="1,2", lr=1e-12,
                           init_from=str(tmp_path / "runs/day"), storage=str(tmp_path / "runs"), name="night", **TINY)
    train(tuned, echo=lambda line: None)
    assert json.loads((tmp_path / "runs/night/status.json").read_text())["status"] == "finished"
    metrics = [json.loads(line) for line in (tmp_path / "runs/night/metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["val_pixels"] > 0
    before, after = read_weights(str(tmp_path / "runs/day")), read_weights(str(tmp_path / "runs/night"))
    convs = [k for k in before if k.endswith(".weight") and before[k].ndim == 4]
    assert convs and all(torch.allclose(before[k], after[k], atol=1e-6) for k in convs)

    wrong = CliRunner().invoke(main, ["train", "--data", shards, "--storage", str(tmp_path / "runs"), "--name", "x",
                                      "--init-from", str(tmp_path / "runs/day"), "--model", "unet",
                                      "--base-channels", "8"])
    assert wrong.exit_code == 2 and "holds unet" in wrong.output and "--init-from" in wrong.output, wrong.output
