"""From a segmented archive to frames a person labels: the stats' confidence columns, `roadseg frames
--export` spread over the sources, read back by CVAT's importer library (Datumaro, installed from the
registry here) and by `roadseg shard`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from roadseg_dist.cli import main
from roadseg_dist.results.export import spread
from test_infer_frames import make_video, reference
from test_infer_pipeline import SIZE, tiny_checkpoint


def test_spread_keeps_to_the_budget_per_source_and_the_gap():
    rows = [{"video": v, "frame": f, "timestamp": f / 10} for v, f in
            [("a", 0), ("a", 1), ("a", 5), ("b", 3), ("a", 30), ("a", 31), ("b", 4), ("b", 40), ("a", 60)]]
    assert [(r["video"], r["frame"]) for r in spread(rows, per_source=2, min_gap=1.0)] == \
        [("a", 0), ("b", 3), ("a", 30), ("b", 40)]
    assert len(spread(rows, min_gap=0.0, limit=3)) == 3
    assert [(r["video"], r["frame"]) for r in spread(rows, per_source=1)] == [("a", 0), ("b", 3)]


@pytest.fixture(scope="module")
def datumaro(tmp_path_factory):
    """Datumaro (what CVAT imports and exports with) from PyPI, into a folder of its own: its own
    pins would move this project's packages, and its importer needs none of them changed."""
    target = tmp_path_factory.mktemp("datumaro")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    "datumaro==1.13.12", "json-stream", "json-stream-rs-tokenizer", "orjson", "ruamel.yaml",
                    "ruamel.yaml.clib", "shapely", "defusedxml", "imagesize", "lxml"], check=True, timeout=600)
    return str(target)


@pytest.mark.slow
def test_exported_frames_are_read_by_datumaro_and_roadseg_shard(ray_local, datumaro, tmp_path):
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        make_video(str(tmp_path / "in" / f"{name}.mp4"), 30, w=96, h=64, bframes=2, noise=40)
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["infer", ckpt, str(tmp_path / "in"), str(out), "--size", SIZE, "--no-view"],
                              catch_exceptions=False).exit_code == 0
    dest = tmp_path / "to-label"
    result = CliRunner().invoke(main, ["frames", str(out), "--order-by", "confidence", "--limit", "5",
                                       "--per-source", "3", "--min-gap", "0.4", "--export", str(dest)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = [json.loads(line) for line in (dest / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 5 and max(sum(m["video"] == v for m in manifest) for v in "ab") == 3
    confidences = [m["confidence"] for m in manifest]
    assert all(0 < c <= 1 for c in confidences)
    for v in "ab":  # at least --min-gap apart within a source
        times = sorted(m["timestamp"] for m in manifest if m["video"] == v)
        assert all(t2 - t1 >= 0.4 - 1e-9 for t1, t2 in zip(times, times[1:]))
    refs = {v: reference(str(tmp_path / "in" / f"{v}.mp4")) for v in "ab"}
    for m in manifest:  # no original/ in this run: the frame decoded again by its index
        jpeg = (dest / "bdd100k/images/10k/train" / f"{m['name']}.jpg").read_bytes()
        assert jpeg == cv2.imencode(".jpg", refs[m["video"]][m["frame"]], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        mask = cv2.imread(str(dest / "bdd100k/labels/sem_seg/masks/train" / f"{m['name']}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(mask, cv2.imread(str(out / m["video"] / "mask" / f"{m['frame']:06d}.png"),
                                               cv2.IMREAD_UNCHANGED))

    script = f"""
import json, numpy as np, cv2
from datumaro.components.dataset import Dataset
ds = Dataset.import_from({str(dest / 'css')!r}, "common_semantic_segmentation")
out = {{}}
for item in ds:  # one mask per class present: merged back into one index mask
    index = np.full(item.annotations[0].image.shape, 255, np.int32)
    for a in item.annotations:
        index[a.image] = a.label
    out[item.id] = {{"classes": sorted(int(a.label) for a in item.annotations),
                    "mask": index.tolist(), "image": list(item.media.data.shape)}}
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": datumaro},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    items = json.loads(proc.stdout.splitlines()[-1])
    assert sorted(items) == sorted(m["name"] for m in manifest)
    for name, item in items.items():
        ours = cv2.imread(str(dest / "bdd100k/labels/sem_seg/masks/train" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        theirs = np.array(item["mask"])
        assert np.array_equal(np.where(ours == 255, 19, ours), theirs)  # "ignore" is label 19 there
        assert item["image"] == [64, 96, 3]

    shards = tmp_path / "shards"
    result = CliRunner().invoke(main, ["shard", str(dest / "bdd100k"), str(shards), "--split", "train"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(str(shards / "train-index.parquet")).column("key").to_pylist()) == \
        sorted(m["name"] for m in manifest)
