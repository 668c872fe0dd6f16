"""issue 5 end to end: `roadseg infer` on the loopback S3 server and the session's local Ray.

Synthetic clips plus real third-party videos from Debian's opencv-doc (tree.avi's header claims
444 frames, a decode yields 68), broken files, a re-run that rewrites nothing, and a run killed
mid-way (SIGKILL to the CLI process) that resumes with every frame's outputs exactly once.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from roadseg_dist import storage
from roadseg_dist.cli import main
from roadseg_dist.data import synth
from roadseg_dist.infer import plan
from roadseg_dist.infer.stats import CLASS_COLUMNS
from roadseg_dist.video import decode as frames

DATA = "/usr/share/doc/opencv-doc/examples/data"
SIZE = "32x48"


def tiny_checkpoint(url: str) -> str:
    import torch

    from roadseg_dist.models.checkpoint import save_checkpoint
    from roadseg_dist.models.zoo import build_model

    torch.manual_seed(0)
    save_checkpoint(url, build_model("unet", base_channels=4), input_size=(32, 48))
    return url


def objects(s3_server, bucket_url: str, prefix: str = "") -> dict[str, tuple[str, object]]:
    """key -> (ETag, LastModified) of every object under a prefix."""
    bucket = bucket_url[len("s3://"):]
    out, pager = {}, s3_server.client().get_paginator("list_objects_v2")
    for page in pager.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["ETag"], obj["LastModified"])
    return out


def indices(names: list[str]) -> list[int]:
    return sorted(int(n.rsplit("/", 1)[-1].split(".")[0]) for n in names)


def video_frame_count(url: str, tmp_path) -> tuple[int, float]:
    local = str(tmp_path / ("check-" + url.rsplit("/", 1)[-1]))
    storage.download(url, local)
    cap = cv2.VideoCapture(local)
    fps = cap.get(cv2.CAP_PROP_FPS)
    n = 0
    while cap.grab():
        n += 1
    return n, fps


def frames_table(output: str):
    """OUTPUT/frames/ (a part per commit) as one pandas table, local or on S3."""
    import pyarrow as pa

    parts = storage.list_files(storage.join(output, "frames"))
    assert parts and all(p.endswith(".parquet") for p in parts)
    return pa.concat_tables([pq.read_table(io.BytesIO(storage.read_bytes(p))) for p in parts]).to_pandas()


def invoke(*args: str):
    return CliRunner().invoke(main, ["infer", *args], catch_exceptions=False)


@pytest.mark.slow
def test_infer_s3_videos_broken_files_and_rerun(s3_server, s3_bucket, ray_local, tmp_path):
    ckpt = tiny_checkpoint(s3_bucket + "/ckpt")
    inp, out = s3_bucket + "/archive", s3_bucket + "/segmented"
    local_clip = str(tmp_path / "c0.mp4")
    synth.write_video(local_clip, np.random.default_rng(0), 64, 96, 13, 10)
    storage.upload(local_clip, inp + "/clips/c0.mp4")
    synth.write_video(inp + "/clips/c 1.mp4", np.random.default_rng(1), 64, 96, 11, 10)
    storage.upload(f"{DATA}/tree.avi", inp + "/real/tree.avi")
    storage.write_bytes(inp + "/bad/empty.mp4", b"")
    storage.write_bytes(inp + "/bad/notes.avi", b"these are meeting notes, not a video\n" * 40)
    data = open(local_clip, "rb").read()
    storage.write_bytes(inp + "/bad/truncated.mp4", data[: len(data) // 2])

    args = [ckpt, inp, out, "--size", SIZE, "--every", "6", "--segment-frames", "30", "--batch-size", "4"]
    result = invoke(*args)
    assert result.exit_code == 3, result.output
    report = json.loads(storage.read_text(out + "/report.json"))
    reasons = {f["id"]: f["reason"] for f in report["failures"]}
    assert set(reasons) == {"bad/empty", "bad/notes", "bad/truncated"}
    assert "empty file" in reasons["bad/empty"] and "cannot be opened" in reasons["bad/notes"]
    assert report["videos_done"] == 3 and report["sources"] == 6
    assert "testing-secret-key" not in json.dumps(report)

    sources = {"clips/c0": f"{inp}/clips/c0.mp4", "clips/c_1": f"{inp}/clips/c 1.mp4",
               "real/tree": f"{DATA}/tree.avi"}  # 3 ranges from its 68 packets; its header says 444
    table = frames_table(out)
    for sid, src in sources.items():
        n, fps = video_frame_count(src, tmp_path)
        expected = list(range(0, n, 6))  # every 6th of what a sequential decode yields
        for kind in ("mask", "color", "overlay"):
            assert indices(storage.list_files(f"{out}/{sid}/{kind}")) == expected, (sid, kind)
        assert not storage.exists(f"{out}/{sid}/original")
        mask = cv2.imdecode(np.frombuffer(storage.read_bytes(f"{out}/{sid}/mask/000006.png"), np.uint8),
                            cv2.IMREAD_UNCHANGED)
        cap = cv2.VideoCapture(src if not src.startswith("s3://") else local_clip)
        assert mask.ndim == 2 and mask.max() < 19
        if src.startswith("/"):
            assert mask.shape == (int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
        color = Image.open(io.BytesIO(storage.read_bytes(f"{out}/{sid}/color/000006.png")))
        assert color.mode == "P" and np.array_equal(np.array(color), mask)
        frames_in_video, video_fps = video_frame_count(f"{out}/{sid}/overlay.mp4", tmp_path)
        assert frames_in_video == len(expected) and abs(video_fps - fps / 6) < 0.05
        rows = table[table.video == sid]
        assert rows.frame.tolist() == expected
        assert np.allclose(rows[["road", "car", "sky"]].sum(axis=1) <= 1.0001, True)
        assert np.allclose(rows[list(CLASS_COLUMNS)].sum(axis=1),
                           1.0, atol=1e-4)
        assert rows["mask"].tolist() == [f"{sid}/mask/{i:06d}.png" for i in expected]
    with av.open(f"{DATA}/tree.avi") as c:  # the lying header really was in play: the index has 68
        assert c.streams.video[0].frames == 444 and frames.probe(f"{DATA}/tree.avi").frame_count == 68

    # A re-run of the same command completes nothing new and rewrites nothing (the report and the
    # results page's index, which shows it, aside).
    before = objects(s3_server, s3_bucket, "segmented/")
    result = invoke(*args)
    assert result.exit_code == 3
    after = objects(s3_server, s3_bucket, "segmented/")
    report_keys = ("segmented/report.json", "segmented/index.html")
    assert {k: v for k, v in after.items() if k not in report_keys} == \
           {k: v for k, v in before.items() if k not in report_keys}
    again = json.loads(storage.read_text(out + "/report.json"))
    assert again["videos_skipped"] == 3 and again["frames_this_run"] == 0

    # Other settings against the same OUTPUT: refused with what to do.
    result = CliRunner().invoke(main, ["infer", *args[:3], "--size", SIZE, "--every", "2"])
    assert result.exit_code == 1 and "--overwrite" in result.output


@pytest.mark.slow
def test_killed_run_resumes_exactly_once(s3_server, s3_bucket, ray_local, tmp_path):
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    inp, out = s3_bucket + "/in", s3_bucket + "/out"
    counts = {"a": 24, "b": 17}
    for name, n in counts.items():
        synth.write_video(f"{inp}/{name}.mp4", np.random.default_rng(len(name) + n), 64, 96, n, 10)
    args = [ckpt, inp, out, "--size", SIZE, "--segment-frames", "4", "--batch-size", "2", "--split", "always"]

    # The CLI runs as its own process, a driver on the session's Ray (as `ray job submit` would run
    # it on a cluster); SIGKILL gives it no chance to clean up. Ray then reaps the job's workers.
    import ray

    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "roadseg_dist.cli", "infer", *args, "--address", address],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if any("/parts/" in k for k in objects(s3_server, s3_bucket, "out/.roadseg/")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()

    at_kill = objects(s3_server, s3_bucket, "out/")
    parts_at_kill = {k: v for k, v in at_kill.items() if "/parts/" in k}
    total_ranges = sum(-(-n // 4) for n in counts.values())
    assert 0 < len(parts_at_kill) < total_ranges, "the run was not killed mid-way"

    result = invoke(*args)
    assert result.exit_code == 0, result.output
    final = objects(s3_server, s3_bucket, "out/")
    table = frames_table(out)
    for name, n in counts.items():
        for kind in ("mask", "color", "overlay"):
            assert indices(k for k in final if k.startswith(f"out/{name}/{kind}/")) == list(range(n))
        assert table[table.video == name].frame.tolist() == list(range(n))
        assert video_frame_count(f"{out}/{name}/overlay.mp4", tmp_path)[0] == n
    for key, stamp in parts_at_kill.items():  # ranges finished before the kill were not redone
        assert final[key] == stamp
        start = int(key.rsplit("/", 1)[-1].split(".")[0])
        video = key.split("/parts/")[1].rsplit("/", 1)[0]
        mask_key = f"out/{video}/mask/{start:06d}.png"
        assert final[mask_key] == at_kill[mask_key]


@pytest.mark.slow
def test_ranges_that_do_not_join_up_are_redone_and_image_folder_locally(ray_local, tmp_path):
    """Local paths. A plan whose second range claims the wrong keyframe (as a lying index would): its
    seek check fails, the source is decoded again from the start as one range, stray files removed.
    Beside it, a folder of images is one source whose frames are the images in name order."""
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    (tmp_path / "in" / "cam0").mkdir(parents=True)
    shutil.copy(f"{DATA}/vtest.avi", tmp_path / "in" / "vtest.avi")
    rng = np.random.default_rng(3)
    for i in range(6):
        rgb, _ = synth.render_scene(rng, 48, 80)
        cv2.imwrite(str(tmp_path / "in" / "cam0" / f"img{i:02d}.jpg"), rgb[..., ::-1])
    out = tmp_path / "out"
    src = str(tmp_path / "in" / "vtest.avi")
    info = frames.probe(src)
    ranges = [dataclasses.asdict(r) for r in plan.plan_ranges(info, 250)]
    ranges[1]["dts"] += 1  # a keyframe the file does not have there
    from roadseg_dist.infer.state import file_identity
    (out / ".roadseg" / "plans").mkdir(parents=True)
    (out / ".roadseg" / "plans" / "vtest.json").write_text(json.dumps(
        {"id": "vtest", "kind": "video", "url": src, "images": [], "identity": file_identity(src),
         "frame_count": 795, "fps": 10.0, "height": 576, "width": 768, "stride": 40, "ranges": ranges}))
    result = invoke(ckpt, "file://" + str(tmp_path / "in"), str(out), "--size", SIZE, "--every", "40",
                    "--segment-frames", "250", "--outputs", "mask,original,stats")
    assert result.exit_code == 0, result.output
    assert indices(os.listdir(out / "vtest" / "mask")) == list(range(0, 795, 40))
    assert json.loads((out / ".roadseg" / "plans" / "vtest.json").read_text())["sequential"] is True
    assert sorted(os.listdir(out / "cam0" / "mask")) == ["000000.png", "000040.png"] or \
        sorted(os.listdir(out / "cam0" / "mask")) == ["000000.png"]
    assert not (out / "vtest" / "overlay").exists() and not (out / "vtest" / "overlay.mp4").exists()
    for sid, shape in (("vtest", (576, 768)), ("cam0", (48, 80))):  # two frame sizes through one Ray graph
        assert cv2.imread(str(out / sid / "original" / "000000.jpg")).shape[:2] == shape
        assert cv2.imread(str(out / sid / "mask" / "000000.png"), cv2.IMREAD_UNCHANGED).shape == shape
    table = frames_table(str(out))
    assert table[table.video == "vtest"].frame.tolist() == list(range(0, 795, 40))
    assert table[table.video == "cam0"].frame.tolist() == [0]


def test_cli_rejects_bad_input_and_checkpoint(tmp_path):
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    result = CliRunner().invoke(main, ["infer", ckpt, str(tmp_path / "nope"), str(tmp_path / "out")])
    assert result.exit_code == 1 and "does not exist" in result.output
    (tmp_path / "v").mkdir()
    synth.write_video(str(tmp_path / "v" / "a.mp4"), np.random.default_rng(0), 32, 48, 3, 10)
    result = CliRunner().invoke(main, ["infer", str(tmp_path / "no-ckpt"), str(tmp_path / "v"), str(tmp_path / "o")])
    assert result.exit_code == 1 and "no-ckpt" in result.output
    result = CliRunner().invoke(main, ["infer", ckpt, str(tmp_path / "v"), str(tmp_path / "o"), "--outputs", "masks"])
    assert result.exit_code == 2 and "choose from" in result.output
