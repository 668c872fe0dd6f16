"""Evaluation: the metrics against an independent computation and the official BDD100K toolkit,
``roadseg eval`` on real shards with real checkpoints on a local Ray, and ``roadseg compare``."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from roadseg_dist import labels, storage
from roadseg_dist.metrics import ConfusionMatrix

N = labels.NUM_CLASSES


# --- helpers: an independent scorer and the official one ------------------------------------------

def independent_scores(pairs) -> dict:
    """Metrics from first principles, pixel sets per class, written without the confusion matrix."""
    gts = np.concatenate([g.reshape(-1) for g, _ in pairs]).astype(np.int64)
    prs = np.concatenate([p.reshape(-1) for _, p in pairs]).astype(np.int64)
    scored = gts < N                         # 255 (and anything outside 0-18) is not scored
    gts, prs = gts[scored], prs[scored]
    iou, acc = {}, {}
    for c in range(N):
        if not (gts == c).any():
            continue
        both = np.sum((gts == c) & (prs == c))
        either = np.sum((gts == c) | (prs == c))
        iou[c] = both / either
        predicted = np.sum(prs == c)
        acc[c] = both / predicted if predicted else 0.0
    freq = {c: np.mean(gts == c) for c in iou}
    return {"miou": np.mean(list(iou.values())), "mean_acc": np.mean(list(acc.values())),
            "pixel_acc": np.mean(gts == prs), "fwiou": sum(freq[c] * iou[c] for c in iou),
            "iou": iou, "acc": acc}


def official_scores(gt_dir, pred_dir, keys) -> dict:
    """The bdd100k toolkit's ``evaluate_sem_seg`` on PNG folders (percentages)."""
    from bdd100k.eval.seg import evaluate_sem_seg

    result = evaluate_sem_seg([os.path.join(gt_dir, f"{k}.png") for k in keys],
                              [os.path.join(pred_dir, f"{k}.png") for k in keys], nproc=1, with_logs=False)
    data = result.model_dump() if hasattr(result, "model_dump") else result.dict()
    return {"miou": data["IoU"][1]["AVERAGE"], "mean_acc": data["Acc"][1]["AVERAGE"],
            "pixel_acc": data["pAcc"], "fwiou": data["fIoU"], "iou": data["IoU"][0], "acc": data["Acc"][0]}


def assert_matches_official(ours: dict, official: dict) -> None:
    for key in ("miou", "mean_acc", "pixel_acc", "fwiou"):
        assert 100 * ours[key] == pytest.approx(official[key], abs=1e-9), key
    for name in labels.CLASSES:
        for kind in ("iou", "acc"):
            # the toolkit prints 0 for a class absent from the ground truth; we print None (not scored)
            expected = official[kind][name]
            got = ours[kind][name]
            assert (expected == 0.0) if got is None else 100 * got == pytest.approx(expected, abs=1e-9)


def random_pairs(seed: int, count: int = 4, shape=(24, 40)):
    """GT with ignore pixels and a few classes; predictions partly right, some out of range (255)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        gt = rng.choice([0, 1, 2, 8, 10, 13, 255], size=shape).astype(np.uint8)
        pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, N, shape)).astype(np.uint8)
        pred[rng.random(shape) < 0.03] = 255
        pred[gt == 255] = rng.integers(0, N)
        pairs.append((gt, pred))
    return pairs


# --- the metric definitions (pure, no Ray) ---------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_equal_independent_computation(seed):
    pairs = random_pairs(seed)
    cm = ConfusionMatrix()
    for gt, pred in pairs:
        cm.update(gt, pred)
    ours, ref = cm.compute(), independent_scores(pairs)
    for key in ("miou", "mean_acc", "pixel_acc", "fwiou"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    for c, name in enumerate(labels.CLASSES):
        assert ours["iou"][name] == (pytest.approx(ref["iou"][c], abs=1e-12) if c in ref["iou"] else None)
        assert ours["acc"][name] == (pytest.approx(ref["acc"][c], abs=1e-12) if c in ref["acc"] else None)
    assert cm.labelled_pixels == sum(int((g != 255).sum()) for g, _ in pairs)


def test_metrics_equal_official_toolkit(tmp_path):
    pairs = random_pairs(7, count=3)
    (tmp_path / "gt").mkdir(), (tmp_path / "pred").mkdir()
    cm = ConfusionMatrix()
    for i, (gt, pred) in enumerate(pairs):
        Image.fromarray(gt).save(tmp_path / "gt" / f"k{i}.png")
        Image.fromarray(pred).save(tmp_path / "pred" / f"k{i}.png")
        cm.update(gt, pred)
    official = official_scores(str(tmp_path / "gt"), str(tmp_path / "pred"), [f"k{i}" for i in range(3)])
    assert_matches_official(cm.compute(), official)


def test_merge_equals_one_matrix_and_a_perfect_prediction_scores_one():
    pairs = random_pairs(3)
    whole, parts = ConfusionMatrix(), [ConfusionMatrix(), ConfusionMatrix()]
    for i, (gt, pred) in enumerate(pairs):
        whole.update(gt, pred)
        parts[i % 2].update(gt, pred)
    assert (parts[0].merge(parts[1]).mat == whole.mat).all()
    perfect = ConfusionMatrix()
    perfect.update(pairs[0][0], pairs[0][0])
    m = perfect.compute()
    assert m["miou"] == m["pixel_acc"] == m["mean_acc"] == pytest.approx(1.0)
    assert m["iou"]["road"] == 1.0 and m["iou"]["bicycle"] is None


def test_predict_masks_returns_label_resolution_and_groups_sizes():
    import torch

    from roadseg_dist.eval.score import label_size_masks as predict_masks

    class ColourModel(torch.nn.Module):
        """Logits favour class 2 where the red channel is bright, else class 0, at half resolution."""

        def forward(self, x):
            red = torch.nn.functional.avg_pool2d(x[:, :1], 2)
            logits = torch.zeros(x.shape[0], N, *red.shape[-2:])
            logits[:, 2:3] = red
            return logits

    a = np.zeros((32, 48, 3), np.uint8)
    a[:, :24, 0] = 255
    b = np.full((16, 16, 3), 255, np.uint8)
    masks = predict_masks(ColourModel(), [a, b, a], {}, out_sizes=[(32, 48), (16, 16), (64, 96)])
    assert [m.shape for m in masks] == [(32, 48), (16, 16), (64, 96)]
    assert (masks[0][:, :20] == 2).all() and (masks[0][:, 28:] == 0).all()
    assert (masks[1] == 2).all() and masks[0].dtype == np.uint8


def test_plan_reads_covers_every_sample_once_and_feeds_every_actor():
    import pandas as pd

    from roadseg_dist.eval.score import plan_reads

    index = pd.DataFrame({"shard": ["val-000000.tar"] * 10 + ["val-000001.tar"] * 3,
                          "key": [f"k{i:02d}" for i in range(13)]})
    tasks = plan_reads(index, workers=2)
    assert [k for t in tasks for k in t["keys"]] == list(index["key"])
    assert len(tasks) >= 4 and all(len(set(t["keys"])) == len(t["keys"]) for t in tasks)
    assert {t["shard"] for t in tasks if "k12" in t["keys"]} == {"val-000001.tar"}
    assert [k for t in plan_reads(index, workers=1, limit=5) for k in t["keys"]] == ["k00", "k01", "k02", "k03", "k04"]


def test_markdown_and_chart_render():
    from roadseg_dist.eval.report import iou_chart, markdown_report

    cm = ConfusionMatrix()
    for gt, pred in random_pairs(5):
        cm.update(gt, pred)
    result = {"checkpoint": "ck", "arch": "unet", "data": "d", "split": "val", "images": 4,
              "metrics": cm.compute()}
    md = markdown_report(result)
    assert "| road |" in md and "| bicycle | — | — |" in md
    png = iou_chart(result["metrics"], "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


# --- on Ray, on real shards and checkpoints --------------------------------------------------------

def tiny_checkpoint(url: str, data: str, base_channels: int, steps: int, seed: int = 0) -> str:
    """A small U-Net trained for a few steps in-process: it segments roughly, which makes the
    scores non-trivial (a random one predicts one class everywhere)."""
    import torch

    from roadseg_dist.models.checkpoint import save_checkpoint
    from roadseg_dist.models.zoo import build_model

    torch.manual_seed(seed)
    model = build_model("unet", base_channels=base_channels)
    samples = list(shard_samples(data, "train"))[:8]
    x = torch.from_numpy(np.stack([rgb for _, rgb, _ in samples])).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(labels.MEAN).view(1, 3, 1, 1)) / torch.tensor(labels.STD).view(1, 3, 1, 1)
    y = torch.from_numpy(np.stack([label for _, _, label in samples])).long()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(url, model, epoch=1, metrics={"val_miou": 0.0}, input_size=(64, 96))
    return url


def shard_samples(data: str, split: str = "val"):
    from roadseg_dist.data.shards import decode_sample, read_index, read_samples

    for name in read_index(data, split)["shard"].unique():
        for key, jpg, png in read_samples(storage.join(data, name)):
            yield key, *decode_sample(jpg, png)


@pytest.mark.slow
def test_eval_equals_independent_scoring_and_official_toolkit(synthetic_data, tmp_path, s3_bucket):
    import torch

    from roadseg_dist.eval.evaluate import run as run_eval
    from roadseg_dist.eval.settings import EvalSettings
    from roadseg_dist.models.checkpoint import load_model
    from roadseg_dist.settings import build

    ckpt = tiny_checkpoint(s3_bucket + "/runs/tiny/checkpoint_000001", synthetic_data.shards, 4, steps=15)
    preds = str(tmp_path / "preds")
    s = build(EvalSettings, checkpoint=ckpt, data=synthetic_data.shards, out=s3_bucket + "/eval",
              save_preds=preds, workers=2, batch_size=3)
    result = run_eval(s)
    stored = json.loads(open_url(s3_bucket + "/eval/eval.json"))
    assert stored["metrics"] == result["metrics"] and stored["images"] == 8
    from roadseg_dist import storage
    assert storage.read_bytes(s3_bucket + "/eval/iou.png")[:4] == b"\x89PNG"
    assert "| mIoU |" in storage.read_text(s3_bucket + "/eval/eval.md")

    # 1. an independent computation: the model run here, image by image, scored from first principles
    model, meta = load_model(ckpt, "cpu")
    mean = torch.tensor(meta["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["normalization"]["std"]).view(1, 3, 1, 1)
    pairs, keys = [], []
    (tmp_path / "gt").mkdir()
    for key, rgb, label in shard_samples(synthetic_data.shards):
        x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - mean) / std
        with torch.no_grad():
            pred = model(x).argmax(1)[0].numpy().astype(np.uint8)
        assert pred.shape == label.shape == (64, 96)
        saved = np.asarray(Image.open(os.path.join(preds, f"{key}.png")))
        assert (saved == pred).mean() > 0.999  # same model, same pixels (batching may flip a rare tie)
        pairs.append((label, saved))
        keys.append(key)
        Image.fromarray(label).save(tmp_path / "gt" / f"{key}.png")
    ref = independent_scores(pairs)
    for k in ("miou", "mean_acc", "pixel_acc", "fwiou"):
        assert result["metrics"][k] == pytest.approx(ref[k], abs=1e-12), k
    assert len(set(np.concatenate([p.reshape(-1) for _, p in pairs]).tolist())) > 2  # a non-trivial test

    # 2. the official BDD100K evaluator on the saved predictions and the shards' ground truth
    assert_matches_official(result["metrics"], official_scores(str(tmp_path / "gt"), preds, keys))


def open_url(url: str) -> str:
    from roadseg_dist import storage

    return storage.read_text(url)


@pytest.mark.slow
def test_compare_two_checkpoints(synthetic_data, tmp_path):
    from roadseg_dist.eval.compare import print_table, run as run_compare
    from roadseg_dist.eval.settings import CompareSettings
    from roadseg_dist.settings import build

    a = tiny_checkpoint(str(tmp_path / "a" / "checkpoint_000001"), synthetic_data.shards, 4, steps=2)
    b = tiny_checkpoint(str(tmp_path / "b" / "checkpoint_000001"), synthetic_data.shards, 8, steps=15)
    s = build(CompareSettings, models=(str(tmp_path / "a"), b), data=synthetic_data.shards,
              out=str(tmp_path / "cmp"), speed_seconds=0.2, workers=1, limit=4)
    result = run_compare(s)
    rows = result["models"]
    assert [r["name"] for r in rows] == ["a", "b/checkpoint_000001"]
    assert rows[0]["params"] < rows[1]["params"] and all(r["fps"] > 0 for r in rows)
    assert result["images"] == 4 and result["size"] == [64, 96]
    assert all(0 <= r["miou"] <= 1 and r["iou"]["road"] is not None for r in rows)
    stored = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert stored["models"] == rows
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md.count("| unet |") == 2
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    print_table(result)


def test_compare_row_names_are_short_and_unique():
    from roadseg_dist.eval.compare import model_labels

    assert model_labels(["/x/a", "/x/b/checkpoint_000001"]) == ["a", "b/checkpoint_000001"]
    assert model_labels(["/p/r/a", "s3://q/r/a"]) == ["p/r/a", "q/r/a"]


def test_eval_of_a_truncated_shard_is_one_line_naming_it(synthetic_data, tmp_path):
    """It was 190 lines of Ray's traceback ending in tarfile.ReadError, the shard not named."""
    import logging
    import shutil

    from click.testing import CliRunner

    from roadseg_dist.cli import main

    data = tmp_path / "shards"
    shutil.copytree(synthetic_data.shards, data)
    shard = data / "val-000000.tar"
    shard.write_bytes(shard.read_bytes()[:1500])  # cut inside the first sample
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"), synthetic_data.shards, 4, steps=1)
    records: list[logging.LogRecord] = []
    catch = logging.Handler()
    catch.emit = records.append
    logging.getLogger("ray.data").addHandler(catch)  # where Ray Data reports a failed task
    try:
        # --limit 2: one read task, so no sibling task is cancelled half-way through importing torch
        # (a worker left so is reused by later tests of this session's Ray, and fails there)
        out = CliRunner().invoke(main, ["eval", ckpt, "--data", str(data), "--workers", "1", "--limit", "2",
                                        "--out", str(tmp_path / "eval")])
    finally:
        logging.getLogger("ray.data").removeHandler(catch)
    assert out.exit_code == 1, out.output
    last = out.output.splitlines()[-1]
    assert last.startswith(f"Error: shard {shard} is damaged (") and last.endswith(
        f": cut short, or not a tar written by `roadseg shard`); re-run `roadseg shard ROOT {data} --split val` "
        "to rewrite it"), out.output
    assert "Traceback" not in out.output
    assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info], [r.getMessage() for r in records]


def test_cli_errors_name_the_problem(tmp_path):
    from click.testing import CliRunner

    from roadseg_dist.cli import main

    out = CliRunner().invoke(main, ["eval", str(tmp_path / "nothing"), "--data", str(tmp_path)])
    assert out.exit_code != 0 and "cannot load checkpoint" in out.output and "nothing" in out.output
    out = CliRunner().invoke(main, ["eval", str(tmp_path)])
    assert out.exit_code == 2 and "data" in out.output
    out = CliRunner().invoke(main, ["compare", "--data", str(tmp_path)])
    assert out.exit_code != 0 and "at least one checkpoint" in out.output
