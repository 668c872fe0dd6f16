"""issue 5, pure logic without Ray: ids, frame ranges, exact decoding of real files, rendering."""
from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from roadseg_dist import labels, settings
from roadseg_dist.infer import frames, inputs, render
from roadseg_dist.infer.pipeline import check_indices, decode_range_rows
from roadseg_dist.infer.settings import InferSettings

DATA = "/usr/share/doc/opencv-doc/examples/data"
TREE = f"{DATA}/tree.avi"          # claims 444 frames, decodes 68: metadata that lies
MEGAMIND_BUGY = f"{DATA}/Megamind_bugy.avi"


def write_clip(path: str, n: int, h: int = 48, w: int = 64, fps: float = 10.0) -> list[np.ndarray]:
    """A clip whose frame i is recognisable: a bright column at x = i (mod w) on a level-i*3 background."""
    out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    written = []
    for i in range(n):
        img = np.full((h, w, 3), (i * 3) % 200, np.uint8)
        img[:, i % w] = 255
        out.write(img)
        written.append(img)
    out.release()
    return written


def sequential(path: str) -> list[np.ndarray]:
    cap = cv2.VideoCapture(path)
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f)


# --- ids --------------------------------------------------------------------------------------

@pytest.mark.parametrize("rel, expected", [
    ("a/b.mp4", "a/b"),
    ("clip.AVI", "clip"),
    ("../../etc/passwd.mp4", "_../_../etc/passwd"),
    ("a/./b c?.mov", "a/b_c_"),
    (".roadseg/x.mp4", "_.roadseg/x"),
    ("/abs//path.mkv", "abs/path"),
    ("dir\\win.mp4", "dir/win"),
    ("", "_"),
])
def test_safe_id_stays_inside_output(rel, expected):
    sid = inputs.safe_id(rel)
    assert sid == expected
    root = "/out"
    assert os.path.normpath(os.path.join(root, sid)).startswith(root + "/")
    assert not sid.split("/")[0].startswith(".")


def test_discover_folder_videos_images_and_list(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.mp4").write_bytes(b"x")
    (tmp_path / "a" / "b.avi").write_bytes(b"x")      # same stem: ids keep the extension
    (tmp_path / "top.mkv").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("ignored in a folder")
    (tmp_path / "frames").mkdir()
    for name in ("002.jpg", "001.jpg", "010.png"):
        (tmp_path / "frames" / name).write_bytes(b"x")
    found = inputs.discover(str(tmp_path))
    assert [s.id for s in found] == ["a/b_avi", "a/b_mp4", "frames", "top"]
    assert inputs.safe_id("a/b") == "a/b"
    frames_src = found[2]
    assert frames_src.kind == "images"
    assert [p.rsplit("/", 1)[-1] for p in frames_src.images] == ["001.jpg", "002.jpg", "010.png"]

    listing = tmp_path / "list.txt"
    listing.write_text(f"# two videos\n{tmp_path}/a/b.mp4\n\n{tmp_path}/top.mkv\n")
    assert [s.id for s in inputs.discover(str(listing))] == ["a/b", "top"]
    assert [s.id for s in inputs.discover(str(tmp_path / "top.mkv"))] == ["top"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inputs.discover(str(tmp_path / "missing"))
    (tmp_path / "weird.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="neither a video"):
        inputs.discover(str(tmp_path / "weird.bin"))


def test_settings_validation():
    s = settings.build(InferSettings, checkpoint="c", input="i", output="o", outputs="mask,video", fps=5.0)
    assert s.outputs == ("mask", "video") and s.writes("overlay") and not s.writes("color")
    assert s.stride(30.0) == 6 and s.stride(0.0) == 1
    with pytest.raises(Exception, match="choose from"):
        settings.build(InferSettings, checkpoint="c", input="i", output="o", outputs="mask,bogus")
    with pytest.raises(Exception, match="segment-frames"):
        settings.build(InferSettings, checkpoint="c", input="i", output="o", segment_frames=0)


# --- frame ranges -------------------------------------------------------------------------------

def test_plan_ranges_cover_and_end_open():
    assert frames.plan_ranges(10, 4) == [(0, 4), (4, 8), (8, None)]
    assert frames.plan_ranges(8, 4) == [(0, 4), (4, None)]
    assert frames.plan_ranges(0, 4) == [(0, None)]        # unknown count: one range to EOF
    assert frames.plan_ranges(3, 100) == [(0, None)]


def collect(path, plan, stride=1, seek=True, packets=None):
    got = []
    for start, end in plan:
        got += list(frames.decode_range(path, start, end, stride, seek=seek, packets=packets))
    return got


@pytest.mark.parametrize("seek", [True, False])
def test_ranges_decode_each_frame_once_synthetic(tmp_path, seek):
    path = str(tmp_path / "clip.mp4")
    write_clip(path, 23)
    ref = sequential(path)
    got = collect(path, frames.plan_ranges(23, 5), seek=seek)
    assert [i for i, _ in got] == list(range(len(ref))) and len(ref) == 23
    assert all(np.array_equal(f, ref[i]) for i, f in got)
    strided = collect(path, frames.plan_ranges(23, 5), stride=3, seek=seek)
    assert [i for i, _ in strided] == list(range(0, 23, 3))
    assert all(np.array_equal(f, ref[i]) for i, f in strided)


def test_metadata_that_lies_tree_avi():
    """tree.avi's header claims 444 frames; a sequential decode yields 68. Ranges follow the decode."""
    info = frames.probe(TREE)
    n = frames.sequential_count(TREE)
    assert info.header_frames == 444 and n == 68 and info.frame_count == n   # packets counted right
    # Plan from the lying header anyway: 9 ranges, 7 past the real end. A seek to frame 200 reports
    # success and returns frame 65 again, so seeks are trusted only below the packet count.
    plan = frames.plan_ranges(info.header_frames, 50)
    got = collect(TREE, plan, packets=info.frame_count)
    assert [i for i, _ in got] == list(range(n))
    ref = sequential(TREE)
    assert all(np.array_equal(f, ref[i]) for i, f in got)


def test_fingerprint_chain_exposes_an_inexact_seek():
    """Without the packet guard, tree.avi's seek to frame 200 reports success and returns frame 65:
    the fingerprints of neighbouring ranges disagree there, and decoding from the start agrees."""
    plan = frames.plan_ranges(444, 50)
    marks, got = [], []
    for start, end in plan:
        m = {}
        got += [i for i, _ in frames.decode_range(TREE, start, end, marks=m)]
        marks.append((m["first"], m["next"]))
    assert got.count(65) == 1 and 200 in got                 # the inexact seek really happens
    bad = frames.first_inexact_range(marks)
    assert bad == 4 and plan[bad][0] == 200
    for r in range(bad, len(plan)):                          # the redo: no seeking from there on
        m = {}
        assert list(frames.decode_range(TREE, *plan[r], seek=False, marks=m)) == []
        marks[r] = (m["first"], m["next"])
    assert frames.first_inexact_range(marks) is None
    assert frames.first_inexact_range([("", "a"), ("a", "b"), ("b", "")]) is None


def test_metadata_that_undercounts(tmp_path):
    """A header claiming fewer frames than the stream holds: the open last range reads to EOF."""
    path = str(tmp_path / "clip.mp4")
    write_clip(path, 17)
    got = collect(path, frames.plan_ranges(6, 4))       # planned as if 6 frames
    assert [i for i, _ in got] == list(range(17))


def test_real_video_ranges_match_sequential_decode():
    ref = sequential(MEGAMIND_BUGY)
    got = collect(MEGAMIND_BUGY, frames.plan_ranges(frames.probe(MEGAMIND_BUGY).frame_count, 100), stride=7)
    assert [i for i, _ in got] == list(range(0, len(ref), 7))
    assert all(np.array_equal(f, ref[i]) for i, f in got)


@pytest.mark.parametrize("content, why", [(b"", "empty file"), (b"this is not a video" * 100, "cannot be opened")])
def test_broken_files_raise_a_reason(tmp_path, content, why):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(frames.DecodeError, match=why):
        frames.probe(str(path))


def test_truncated_mp4_is_reported(tmp_path):
    path = str(tmp_path / "clip.mp4")
    write_clip(path, 20)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])      # the index (moov) sits at the end: lost
    with pytest.raises(frames.DecodeError):
        frames.probe(path)


def test_decode_rows_end_with_count_or_error(tmp_path):
    path = str(tmp_path / "clip.mp4")
    write_clip(path, 9)
    row = {"video": "v", "kind": "video", "url": path, "images": [], "start": 4, "end": -1, "stride": 2, "fps": 10.0, "packets": 0, "seek": True}
    rows = list(decode_range_rows(row))
    assert [r["index"] for r in rows] == [4, 6, 8, -1] and rows[-1]["count"] == 3 and rows[-1]["error"] == ""
    assert len(rows[0]["frame"]) == rows[0]["height"] * rows[0]["width"] * 3
    (tmp_path / "bad.mp4").write_bytes(b"junk")
    rows = list(decode_range_rows({**row, "url": str(tmp_path / "bad.mp4")}))
    assert len(rows) == 1 and rows[0]["index"] == -1 and "cannot be opened" in rows[0]["error"]


def test_check_indices():
    assert check_indices([0, 2, 4], 2) == ""
    assert "missing [2]" in check_indices([0, 4], 2)
    assert "repeated [2]" in check_indices([0, 2, 2], 2)


# --- rendering -----------------------------------------------------------------------------------

def test_render_frame_files_decode_back():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 19, (12, 20), dtype=np.uint8)
    mask = render.resize_mask(mask, 48, 80)
    frame = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    files = render.render_frame(frame, mask, {"mask", "color", "overlay", "original"}, alpha=0.5)
    back = cv2.imdecode(np.frombuffer(files["mask"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint8 and np.array_equal(back, mask)
    color = Image.open(io.BytesIO(files["color"]))
    assert color.mode == "P" and np.array_equal(np.array(color), mask)      # indices = train ids
    rgb = np.array(color.convert("RGB"))
    assert np.array_equal(rgb, labels.colorize(mask))                      # the official palette
    overlay = cv2.imdecode(np.frombuffer(files["overlay"], np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == frame.shape
    expected = 0.5 * frame.astype(np.float32) + 0.5 * labels.colorize(mask)[..., ::-1]
    assert np.abs(render.blend_overlay(frame, mask, 0.5) - expected).max() <= 1
    assert render.frame_name(7, "overlay") == "overlay/000007.jpg"


def test_class_fractions():
    mask = np.array([[0, 0, 13, 255]], dtype=np.uint8)
    f = render.class_fractions(mask)
    assert f.shape == (19,) and f[0] == 0.5 and f[13] == 0.25 and abs(f.sum() - 0.75) < 1e-6


@pytest.mark.parametrize("codec, name", [("h264", "h264"), ("mjpeg", "mjpeg")])
def test_overlay_video_plays_back_in_order(tmp_path, codec, name):
    import av

    from roadseg_dist.infer.video_out import write_overlay_video

    images = []
    for i in range(7):
        img = np.full((48, 64, 3), 30 * i, np.uint8)
        img[:, :8] = (0, 0, 255)
        images.append(img)
    path = str(tmp_path / "o.mp4")
    assert write_overlay_video(path, (render.encode_jpeg(im, 95) for im in images), 2.5, 64, 48, codec) == 7
    with av.open(path) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == name and abs(float(stream.average_rate) - 2.5) < 1e-3
        if codec == "h264":
            assert stream.codec_context.pix_fmt == "yuv420p"
    head = open(path, "rb").read(64)
    assert head.index(b"moov") < 64  # +faststart: the index comes before the data
    got = sequential(path)
    assert len(got) == 7 and got[0].shape == (48, 64, 3)
    nearest = [int(np.argmin([np.abs(g.astype(int) - im).mean() for im in images])) for g in got]
    assert nearest == list(range(7))  # every frame, in order
