"""Issue 15 (items 2-4) end to end: sources never share or lose an output folder, crafted names are
per-source matters, resume is keyed on each source's identity, and --overwrite leaves nothing stale."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from roadseg_dist import storage
from roadseg_dist.infer.inputs import discover
from roadseg_dist.cli import main
from test_infer_frames import make_video
from test_infer_pipeline import tiny_checkpoint

SIZE = "32x48"
LONG = "x" * 251 + ".mp4"  # a 255-character file name


def infer(*args: str):
    return CliRunner().invoke(main, ["infer", *args, "--size", SIZE, "--segment-frames", "4"],
                              catch_exceptions=False)


def report(out) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_colliding_reserved_and_long_names_changed_clip_and_overwrite(ray_local, tmp_path):
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    names = {"a.mp4": 6, "a.avi": 7, "a_mp4.mkv": 8, "report.json.mp4": 5, "frames.parquet.mov": 4, LONG: 3}
    for name, n in names.items():
        make_video(str(inp / name), n, w=48, h=32, bframes=0, gop=4)
    result = infer(ckpt, str(inp), str(out))
    assert result.exit_code == 0, result.output
    r = report(out)
    assert r["videos_done"] == 6 and r["videos_failed"] == 0 and r["frames_this_run"] == sum(names.values())
    plans = {src.url.rsplit("/", 1)[-1]: src.id for src in discover(str(inp))}  # the ids: names made unique
    assert len(set(plans.values())) == 6  # six sources, six folders, each with its own frames
    for name, n in names.items():
        assert len(os.listdir(out / plans[name] / "mask")) == n, name
    assert (out / "report.json").is_file() and list((out / "frames").glob("part-*.parquet"))

    # The same name, other content: that source is redone, the others skipped.
    make_video(str(inp / "a.mp4"), 9, w=48, h=32, bframes=0, gop=4)
    result = infer(ckpt, str(inp), str(out))
    assert result.exit_code == 0, result.output
    r = report(out)
    assert r["videos_skipped"] == 5 and r["videos_done_this_run"] == 1 and r["frames_this_run"] == 9
    assert len(os.listdir(out / plans["a.mp4"] / "mask")) == 9

    # --overwrite with fewer outputs: nothing of the earlier run stays beside the new files.
    result = infer(ckpt, str(inp), str(out), "--overwrite", "--every", "2", "--outputs", "mask,stats")
    assert result.exit_code == 0, result.output
    folder = out / plans["a.mp4"]
    # (index.html is this run's results page of the source, written at the end)
    assert sorted(os.listdir(folder)) == ["index.html", "mask"] and len(os.listdir(folder / "mask")) == 5


@pytest.mark.slow
def test_list_file_naming_one_name_in_two_buckets(s3_server, ray_local, tmp_path):
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    b1, b2 = "s3://" + s3_server.new_bucket("b1"), "s3://" + s3_server.new_bucket("b2")
    for bucket, n in ((b1, 5), (b2, 7)):
        make_video(str(tmp_path / "ok.mp4"), n, w=48, h=32, bframes=0)
        storage.upload(str(tmp_path / "ok.mp4"), bucket + "/in/ok.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{b1}/in/ok.mp4\n{b2}/in/ok.mp4\n")
    out = tmp_path / "out"
    result = infer(ckpt, str(listing), str(out), "--outputs", "mask")
    assert result.exit_code == 0, result.output
    counts = sorted(len(os.listdir(d / "mask")) for d in out.iterdir() if d.name.startswith("ok_"))
    assert counts == [5, 7] and report(out)["videos_done"] == 2


def test_a_broken_source_is_its_own_failure_not_the_runs(ray_local, tmp_path):
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    inp = tmp_path / "in"
    inp.mkdir()
    make_video(str(inp / "good.mp4"), 4, w=48, h=32, bframes=0)
    (inp / "index.html.mp4").write_bytes(b"<html>not a video</html>")
    result = infer(ckpt, str(inp), str(tmp_path / "out"), "--outputs", "mask")
    assert result.exit_code == 3
    r = report(tmp_path / "out")
    assert r["videos_done"] == 1 and [f["id"].startswith("index.html_") for f in r["failures"]] == [True]
