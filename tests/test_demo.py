"""The one-command demo: its pipeline end to end at a reduced size, and its loopback S3 server."""
from __future__ import annotations

import json
import os

import cv2
import pytest

from roadseg_dist import storage


def test_loopback_s3_serves_and_restores_the_environment():
    from roadseg_dist.demo import loopback_s3

    before = os.environ.get("AWS_ENDPOINT_URL")
    with loopback_s3("demo-test") as bucket:
        assert bucket == "s3://demo-test" and os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        storage.write_text(bucket + "/a/b.txt", "hello")
        assert storage.read_text(bucket + "/a/b.txt") == "hello"
    assert os.environ.get("AWS_ENDPOINT_URL") == before


def test_demo_settings_refuse_remote_workdir():
    from roadseg_dist.demo import DemoSettings
    from roadseg_dist.settings import build

    with pytest.raises(Exception, match="local folder"):
        build(DemoSettings, workdir="s3://bucket/demo")


@pytest.mark.slow
def test_demo_pipeline_at_reduced_size(ray_local, tmp_path):
    from roadseg_dist.demo import DemoSettings, run_demo
    from roadseg_dist.settings import build

    work = tmp_path / "demo"
    (work / "segmented").mkdir(parents=True)
    (work / "segmented" / "stale.txt").write_text("from an earlier run")  # a re-run starts clean
    s = build(DemoSettings, workdir=str(work), train_images=8, val_images=4, height=64, width=96, videos=1,
              video_frames=6, base_channels=4, epochs=1, batch_size=4, crop=(64, 96))
    summary = run_demo(s)

    assert json.loads((work / "summary.json").read_text()) == summary
    assert 0.0 <= summary["miou"] <= 1.0 and summary["epochs"] == 1
    assert list(summary["stage_seconds"]) == ["synthetic data", "shards", "training", "evaluation",
                                              "video segmentation"]
    assert not (work / "segmented" / "stale.txt").exists()
    ev = json.loads((work / "eval" / "eval.json").read_text())
    assert ev["images"] == 4 and ev["metrics"]["miou"] == summary["miou"]
    assert (work / "eval" / "iou.png").exists() and storage.exists(summary["curves"])
    assert len(summary["overlay_videos"]) == 1 and summary["frames_segmented"] == 6
    cap = cv2.VideoCapture(summary["overlay_videos"][0])
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 6 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 96
    masks = storage.list_files(summary["masks"][0], suffixes=(".png",))
    overlays = storage.list_files(summary["overlays"][0])
    assert len(masks) == 6 and len(overlays) == 6
    assert summary["results_page"] == str(work / "segmented" / "index.html")
    assert "1 done, 0 failed, of 1" in (work / "segmented" / "index.html").read_text()
    mask = cv2.imread(masks[0], cv2.IMREAD_UNCHANGED)
    assert mask.shape[:2] == (64, 96)
