"""Plain logic without Ray: exact frame ranges on real encodings built here with PyAV/libx264
(B-frames in .mov, open GOP, variable frame rate, a broken tail), timestamps, the pixel cap, whether
ranges join up, and output ids that are unique by construction."""
from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from roadseg_dist.infer import inputs, ledger, plan
from roadseg_dist.video import decode as frames

DATA = "/usr/share/doc/opencv-doc/examples/data"


def make_video(path: str, n: int, w: int = 96, h: int = 64, fps: int = 25, gop: int = 12, bframes: int = 3,
               open_gop: bool = False, vfr: bool = False, faststart: bool = False, noise: int = 0) -> None:
    """An H.264 file whose frame i is recognisable (grey level and a bright column move with i).

    ``noise`` > 0 adds that much random texture so frames cost real bytes (for byte-count tests).
    """
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(path, "w", options=options) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"bf": str(bframes), "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
                     "preset": "veryfast", **({"x264-params": "open-gop=1"} if open_gop else {})}
        s.codec_context.time_base = Fraction(1, 1000) if vfr else Fraction(1, fps)
        rng, t = np.random.default_rng(0), 0
        for i in range(n):
            img = np.full((h, w, 3), (i * 7) % 200, np.uint8)
            if noise:
                img = (img + rng.integers(0, noise, (h, w, 3), dtype=np.uint8)).astype(np.uint8)
            img[:, (i * 3) % w] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if vfr:
                frame.pts, frame.time_base = t, Fraction(1, 1000)
                t += int(rng.choice([20, 33, 50, 90]))
            else:
                frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))


def reference(path: str, planes: bool = False) -> list:
    """A plain sequential PyAV decode, stopping at damaged data (as OpenCV does): BGR frames, or with
    ``planes`` the I420 planes a unit keeps (``yuv.Frame``)."""
    from roadseg_dist import yuv

    out = []
    with av.open(path) as c:
        try:
            for f in c.decode(video=0):
                out.append((planes and yuv.planes_of(f)) or f.to_ndarray(format="bgr24"))
        except av.error.FFmpegError:
            pass
    return out


def decode_all(path: str, segment: int, stride: int = 1):
    info = frames.probe(path)
    ranges = plan.plan_ranges(info, segment)
    got, ends = {}, []
    for rng in ranges:
        marks = {}
        for index, _, frame in frames.decode_range(path, rng, stride, marks):
            assert index not in got, f"frame {index} decoded twice"
            got[index] = frame
        ends.append(dict(marks, error=""))
    return info, ranges, got, ends


@pytest.mark.parametrize("name, kwargs", [
    ("bframes.mov", {}),
    ("open_gop.mp4", {"open_gop": True, "gop": 10}),
    ("vfr.mp4", {"vfr": True}),
    ("no_bframes.mp4", {"bframes": 0}),
])
def test_ranges_give_exactly_the_sequential_frames(tmp_path, name, kwargs):
    path = str(tmp_path / name)
    make_video(path, 150, **kwargs)
    ref = reference(path)
    info, plan, got, ends = decode_all(path, 25)
    assert len(ref) == 150 and info.frame_count == 150 and len(plan) >= 4
    assert sorted(got) == list(range(150))
    assert all(np.array_equal(got[i], ref[i]) for i in range(150))
    assert ledger.source_problem(ends) == ""
    if "open_gop" in name:  # the open-GOP keyframes really have leading pictures
        assert any(e["first"] != r.start for e, r in zip(ends, plan))
    _, _, strided, _ = decode_all(path, 25, stride=4)
    assert sorted(strided) == list(range(0, 150, 4))


def test_broken_tail_ends_like_a_sequential_decode(tmp_path):
    path = str(tmp_path / "cut.mp4")
    make_video(path, 120, faststart=True, noise=40)  # the index first: it survives the cut
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * 0.6)])
    ref = reference(path)
    info, _, got, ends = decode_all(path, 24)
    assert info.frame_count == 120 and 0 < len(ref) < 120
    assert sorted(got) == list(range(len(ref))) and all(np.array_equal(got[i], ref[i]) for i in got)
    assert ledger.source_problem(ends) == "" and any(e["broken"] for e in ends)


def test_avi_with_a_lying_header_and_a_real_sample():
    """tree.avi's header claims 444 frames, its index (and a decode) 68; vtest.avi is 795 real frames."""
    for path, n in ((f"{DATA}/tree.avi", 68), (f"{DATA}/vtest.avi", 795)):
        info, plan, got, ends = decode_all(path, 100, stride=7)
        ref = reference(path)
        assert info.frame_count == len(ref) == n and len(plan) == (1 if n == 68 else 4)  # tree: 3 keyframes
        assert sorted(got) == list(range(0, n, 7)) and all(np.array_equal(got[i], ref[i]) for i in got)
        assert ledger.source_problem(ends) == ""


@pytest.mark.parametrize("content, why", [(b"", "empty file"), (b"this is not a video" * 100, "cannot be opened")])
def test_broken_files_raise_a_reason(tmp_path, content, why):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(frames.DecodeError, match=why):
        frames.probe(str(path))


def test_every_frame_of_a_bframe_range_has_the_time_of_its_pts(tmp_path):
    """The frames a decoder flushes at a range's end (trailing B-frames) had NaN times, which broke
    the results page; each frame's time is its pts in the stream's time base."""
    path = str(tmp_path / "b.mov")
    make_video(path, 60, gop=12, bframes=3)
    with av.open(path) as c:
        s = c.streams.video[0]
        want = [float(f.pts * s.time_base) for f in c.decode(s)]
    for segment in (12, 25, 1000):
        got = {}
        for rng in plan.plan_ranges(frames.probe(path), segment):
            got.update({i: t for i, t, _ in frames.decode_range(path, rng)})
        assert [got[i] for i in range(60)] == want, segment


def test_the_pixel_cap_holds_for_videos_and_image_folders(tmp_path, monkeypatch):
    path = str(tmp_path / "v.mp4")
    make_video(path, 3, w=96, h=64, bframes=0)
    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((64, 96, 3), np.uint8))
    monkeypatch.setenv("ROADSEG_MAX_PIXELS", str(96 * 64 - 1))
    with pytest.raises(frames.DecodeError, match="96x64 .* cap .*ROADSEG_MAX_PIXELS"):
        frames.probe(path)
    with pytest.raises(frames.DecodeError, match="cap"):
        list(frames.decode_range(path, frames.FrameRange(0)))
    with pytest.raises(frames.DecodeError, match="img.png.*cap"):
        list(frames.decode_images([str(tmp_path / "img.png")], 0, None))
    monkeypatch.setenv("ROADSEG_MAX_PIXELS", str(96 * 64))
    assert len(list(frames.decode_range(path, frames.FrameRange(0)))) == 3


# --- the ledger ------------------------------------------------------------------------------------

def test_source_problem_accepts_only_ranges_that_join_up():
    ok = [{"first": 0, "count": 10, "expected": 10, "broken": ""},
          {"first": 10, "count": 5, "expected": -1, "broken": ""}]
    assert ledger.source_problem(ok) == ""
    gap = [dict(ok[0], count=9, expected=10), ok[1]]
    assert "9 of 10" in ledger.source_problem(gap)
    tail = [dict(ok[0], count=7, broken="damaged"), dict(ok[1], first=10, count=0)]
    assert ledger.source_problem(tail) == ""
    late = [dict(ok[0], count=7, broken="damaged"), ok[1]]
    assert "after damaged data" in ledger.source_problem(late)
    assert "starts at frame 12" in ledger.source_problem([ok[0], dict(ok[1], first=12)])
    assert ledger.check_indices([0, 2, 4], 2) == "" and "missing [2]" in ledger.check_indices([0, 4], 2)


# --- output ids ------------------------------------------------------------------------------------

def test_ids_never_share_an_output_folder():
    ids = inputs._unique_ids([("a.mp4", "/i/a.mp4"), ("a.avi", "/i/a.avi"), ("a_mp4.mkv", "/i/a_mp4.mkv")])
    assert len(set(ids.values())) == 3 and ids["/i/a.avi"] == "a_avi"
    assert ids == inputs._unique_ids([("a_mp4.mkv", "/i/a_mp4.mkv"), ("a.avi", "/i/a.avi"), ("a.mp4", "/i/a.mp4")])
    buckets = inputs._unique_ids([("ok.mp4", "s3://b1/in/ok.mp4"), ("ok.mp4", "s3://b2/in/ok.mp4")])
    assert len(set(buckets.values())) == 2 and all(v.startswith("ok_") for v in buckets.values())
    nested = inputs._unique_ids([("a.mp4", "/i/a.mp4"), ("a/mask.mp4", "/i/a/mask.mp4")])
    assert nested["/i/a/mask.mp4"] == "a/mask" and nested["/i/a.mp4"] == "a_mp4"  # not a folder of the other


@pytest.mark.parametrize("name", ["report.json.mp4", "frames.parquet.mov", "index.html.mp4", "REPORT.JSON.mp4",
                                  "frames.mp4", "sources.js.mov", "index-2.html.mp4"])
def test_reserved_names_get_safe_ids(name):
    sid = inputs._unique_ids([(name, "/i/" + name)])["/i/" + name]
    assert sid.lower() not in inputs.RESERVED and sid.startswith(name.rsplit(".", 1)[0] + "_")


def test_over_long_names_fit_a_file_system(tmp_path):
    name = "x" * 251 + ".mp4"  # 255 characters
    sid = inputs._unique_ids([(name, "/i/" + name)])["/i/" + name]
    assert len(sid.encode()) <= 200
    (tmp_path / (sid + ".json")).write_text("{}")  # the state file of that id can exist


def test_ranged_reader_reads_right_bytes_with_few_small_gets():
    from roadseg_dist.video.ranged import RangedReader

    data = bytes(range(256)) * 4096  # 1 MiB

    class Store:  # an object store's ranged GET, counted
        gets: list = []

        def cat_file(self, path, start, end):
            self.gets.append((start, end))
            return data[start:end]

    f = RangedReader(Store(), "k", len(data), max_block=256 * 1024, reach=900_000)
    assert f.read(36) == data[:36] and Store.gets == [(0, 36)]  # after a jump: only what was asked
    f.seek(-1000, 2)
    assert f.read(2000) == data[-1000:] and f.read(10) == b""
    f.seek(100_000)
    out = b"".join(f.read(8192) for _ in range(100))  # FFmpeg-sized sequential reads
    assert out == data[100_000:100_000 + 819_200]
    streaming = Store.gets[2:]
    assert len(streaming) < 12 and all(b - a <= 256 * 1024 + 8192 for a, b in streaming)
    assert max(b for _, b in streaming) <= 919_200  # no read-ahead past reach, only what was asked
