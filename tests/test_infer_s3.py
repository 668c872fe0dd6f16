"""Issue 11 end to end: a long H.264 .mov with B-frames on the loopback S3 server, cut into many frame
ranges, is read about once (bytes counted at a proxy in front of the server), every written frame
is the frame of its index, overlay.mp4 is H.264 with the right frame count, and headless Chromium
plays it. A VFR file and one with a broken tail ride along in the same run."""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import av
import cv2
import numpy as np
import pytest

from faulty_s3_proxy import FaultyProxy
from roadseg_dist import storage
from roadseg_dist import render
from test_infer_frames import make_video, reference
from test_infer_pipeline import tiny_checkpoint

SIZE = "32x48"


class CountingProxy(FaultyProxy):
    """Relays every request unchanged and counts the body bytes each GET returned, by object key."""

    def __init__(self, upstream: str):
        super().__init__(upstream, every=1 << 30)
        self.served: collections.Counter = collections.Counter()

    def _forward(self, request: bytes) -> bytes:
        reply = super()._forward(request)
        line = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if line[0] == "GET":
            head, _, body = reply.partition(b"\r\n\r\n")
            with self.lock:
                self.served[line[1].split("?", 1)[0]] += len(body)
        return reply


@pytest.mark.slow
def test_long_bframe_mov_on_s3_read_once_exact_frames_h264_overlay(s3_server, s3_bucket, tmp_path):
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    inp, out = s3_bucket + "/archive", str(tmp_path / "out")
    local = {"drive.mov": {"gop": 15, "noise": 60, "w": 320, "h": 192}, "vfr.mp4": {"vfr": True},
             "cut.mp4": {"faststart": True, "noise": 40}}
    for name, kwargs in local.items():
        make_video(str(tmp_path / name), 1000 if name == "drive.mov" else 60, **{"w": 160, "h": 96, **kwargs})
    data = open(tmp_path / "cut.mp4", "rb").read()
    open(tmp_path / "cut.mp4", "wb").write(data[: int(len(data) * 0.6)])
    for name in local:
        storage.upload(str(tmp_path / name), f"{inp}/{name}")
    size = os.path.getsize(tmp_path / "drive.mov")

    # The CLI as its own process with its own local Ray, every S3 request going through the proxy.
    with CountingProxy(s3_server.endpoint) as proxy:
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.run([sys.executable, "-m", "roadseg_dist.cli", "infer", ckpt, inp, out, "--size", SIZE,
                               "--segment-frames", "90", "--outputs", "original,video,stats", "--num-cpus", "2"],
                              env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(open(f"{out}/report.json").read())
    assert report["videos_done"] == 3 and not report["failures"]
    plan = json.loads(open(f"{out}/.roadseg/plans/drive.json").read())
    assert len(plan["ranges"]) >= 10
    key = "/" + s3_bucket[len("s3://"):] + "/archive/drive.mov"
    assert 0 < proxy.served[key] <= 1.2 * size, (proxy.served[key], size)

    for name in local:
        sid = name.rsplit(".", 1)[0]
        ref = reference(str(tmp_path / name), planes=True)
        names = sorted(os.listdir(f"{out}/{sid}/original"))
        assert names == [f"{i:06d}.jpg" for i in range(len(ref))], sid
        for i, ref_frame in enumerate(ref):  # byte-equal to the JPEG of the i-th sequentially decoded frame's planes
            assert open(f"{out}/{sid}/original/{i:06d}.jpg", "rb").read() == render.encode_jpeg(ref_frame, 85), (sid, i)
        with av.open(f"{out}/{sid}/overlay.mp4") as c:
            stream = c.streams.video[0]
            assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
            video = [f.to_ndarray(format="bgr24").astype(np.int16) for f in c.decode(stream)]
        assert len(video) == len(ref)
        overlays = [cv2.imread(f"{out}/{sid}/overlay/{i:06d}.jpg").astype(np.int16) for i in range(len(ref))]
        for i, got in enumerate(video if local[name].get("noise") else []):  # frame i is overlay i, not a neighbour
            near = [np.abs(got - overlays[j]).mean() for j in (i - 1, i, i + 1) if 0 <= j < len(ref)]
            assert np.abs(got - overlays[i]).mean() == min(near), (sid, i)
        assert not os.path.exists(f"{out}/.roadseg/pieces/{sid}")  # the writers' pieces, joined and removed
    assert len(reference(str(tmp_path / "cut.mp4"))) < 60  # the broken tail really cut frames

    state = chromium_video_state(f"{out}/drive/overlay.mp4", tmp_path)
    assert state["error"] is None and state["ready"] >= 2, state
    assert state["width"] == 320 and state["height"] == 192 and abs(state["duration"] - 1000 / 25) < 0.2, state


def chromium_video_state(video: str, tmp_path) -> dict:
    """Headless Debian Chromium opens a page with the video and reads back what it decoded."""
    from playwright.sync_api import sync_playwright

    page_path = tmp_path / "play.html"
    page_path.write_text(f'<video id="v" muted preload="auto" src="file://{video}"></video>')
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--autoplay-policy=no-user-gesture-required"]
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), headless=True,
                                                       executable_path="/usr/bin/chromium", args=args)
        try:
            page = browser.new_page()
            page.goto(f"file://{page_path}")
            page.wait_for_function("document.getElementById('v').readyState >= 2 || "
                                   "document.getElementById('v').error !== null", timeout=30_000)
            state = page.evaluate("(() => { const v = document.getElementById('v'); return {ready: v.readyState, "
                                  "width: v.videoWidth, height: v.videoHeight, duration: v.duration, "
                                  "error: v.error && v.error.message}; })()")
        finally:
            browser.close()
    return state


@pytest.mark.slow
def test_mjpeg_overlay_is_what_chromium_rejects_and_h264_what_it_plays(tmp_path):
    """The reason for the default: the same overlay frames as MJPEG do not play; as H.264 they do."""
    from roadseg_dist.infer.video_out import write_overlay_video

    jpegs = [render.encode_jpeg(np.full((96, 160, 3), 8 * i, np.uint8)) for i in range(25)]
    write_overlay_video(str(tmp_path / "h264.mp4"), jpegs, 25, 160, 96, "h264")
    write_overlay_video(str(tmp_path / "mjpeg.mp4"), jpegs, 25, 160, 96, "mjpeg")
    rejected = chromium_video_state(str(tmp_path / "mjpeg.mp4"), tmp_path)
    assert rejected["error"] is not None and rejected["ready"] == 0, rejected
    played = chromium_video_state(str(tmp_path / "h264.mp4"), tmp_path)
    assert played["error"] is None and played["ready"] >= 2 and played["width"] == 160, played
    cap = cv2.VideoCapture(str(tmp_path / "mjpeg.mp4"))  # other players do play it
    assert cap.isOpened() and cap.grab()
