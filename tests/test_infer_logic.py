"""issue 5, pure logic without Ray: ids, frame ranges, exact decoding of real files, rendering."""
from __future__ import annotations

import functools
import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from roadseg_dist import labels, settings
from roadseg_dist.infer import inputs
from roadseg_dist import render
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
    (tmp_path / "cam0").mkdir()
    for name in ("002.jpg", "001.jpg", "010.png"):
        (tmp_path / "cam0" / name).write_bytes(b"x")
    found = inputs.discover(str(tmp_path))
    assert [s.id for s in found] == ["a/b_avi", "a/b_mp4", "cam0", "top"]
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
    with pytest.raises(Exception, match="--amp fp16 needs --gpu"):
        settings.build(InferSettings, checkpoint="c", input="i", output="o", amp="fp16")
    assert settings.build(InferSettings, checkpoint="c", input="i", output="o", amp="fp16", gpu=True).amp == "fp16"


def test_the_report_names_the_precision_that_ran(monkeypatch):
    from roadseg_dist.infer import report
    from roadseg_dist.models import predict

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    build = functools.partial(settings.build, InferSettings, checkpoint="c", input="i", output="o")
    monkeypatch.setattr(predict, "cpu_has_native_bf16", lambda: True)
    assert [report.precision(build(**kw)) for kw in ({}, {"amp": "off"}, {"gpu": True})] == ["bf16", "fp32", "fp16"]
    monkeypatch.setattr(predict, "cpu_has_native_bf16", lambda: False)
    assert report.precision(build()) == "fp32"
    assert report.precision(build(address="ray://head:10001")).startswith("auto (per node")


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


@pytest.mark.parametrize("frame, size, box", [((720, 1280), (192, 256), 2), ((576, 768), (192, 256), 3),
                                              ((720, 1280), (360, 640), 2), ((97, 131), (40, 50), 1)])
def test_model_input_shrinks_like_one_area_step(frame, size, box):
    """A whole-number box first (OpenCV's fast area path), area on the rest: the same RGB input as one
    area step up to rounding at the boxes' edges, exactly the same where the box is the whole factor."""
    rng = np.random.default_rng(0)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (*frame, 3), dtype=np.uint8), (9, 9), 3)
    assert render._box_factor(*frame, *size) == box
    got = render.model_input([bgr, bgr], size)
    one_step = cv2.resize(bgr, size[::-1], interpolation=cv2.INTER_AREA)[..., ::-1]
    assert got.shape == (2, *size, 3) and got.flags["C_CONTIGUOUS"]
    diff = np.abs(got[1].astype(int) - one_step)
    exact = box == 1 or (frame[0] // box, frame[1] // box) == size
    assert diff.max() == 0 if exact else (diff.max() <= 4 and diff.mean() < 0.6)


@pytest.mark.parametrize("frame, size", [((720, 1280), (512, 1024)), ((720, 1280), (576, 768)), ((97, 131), (60, 70))])
def test_model_input_shrinks_by_under_2x_bilinearly_close_to_area(frame, size):
    """Under 2x both ways (the sizes models train at), bilinear: what training's rescaling does, and
    within a level or so of area averaging on a natural image (a blurred one here)."""
    rng = np.random.default_rng(0)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (*frame, 3), dtype=np.uint8), (9, 9), 3)
    got = render.model_input([bgr], size)[0]
    assert np.array_equal(got, cv2.resize(bgr, size[::-1], interpolation=cv2.INTER_LINEAR)[..., ::-1])
    area = cv2.resize(bgr, size[::-1], interpolation=cv2.INTER_AREA)[..., ::-1]
    assert np.abs(got.astype(int) - area).mean() < 1.0


@pytest.mark.parametrize("shape", [(720, 1280), (64, 96), (33, 17), (1, 7), (5, 1), (3, 2)])
@pytest.mark.parametrize("kind", ["upsampled/2", "upsampled/3", "upsampled/4", "upsampled/3.75", "random", "one class"])
def test_mask_png_reads_back_in_libpng_and_pillow(shape, kind):
    """The spliced PNG (repeated rows deflated once, or in line when repeated once or twice) is an
    ordinary PNG: two decoders read the mask back exactly, and its paletted twin too; also made from
    the model-size mask (downsampled too)."""
    rng = np.random.default_rng(0)
    if kind.startswith("upsampled"):
        rows = max(1, int(shape[0] / float(kind.split("/")[1])))
        small = rng.integers(0, 19, (rows, max(1, shape[1] // 3)), dtype=np.uint8)
        mask = render.resize_mask(small, *shape)
    elif kind == "random":
        mask = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        mask = np.full(shape, 255, np.uint8)
    pngs = [render.encode_mask_png(mask)]
    if kind.startswith("upsampled"):  # made from the small mask, never upsampled itself
        pngs.append(render.upsampled_mask_png(small, *shape))
    for png in pngs:
        assert np.array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED).reshape(shape), mask)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))).reshape(shape), mask)
        color = Image.open(io.BytesIO(render.palettize_png(png)))
        assert color.mode == "P" and np.array_equal(np.asarray(color).reshape(shape), mask)


def _i420_frame(matrix: str, h: int = 96, w: int = 128):
    """A textured frame as a decoder gives it: I420 planes from PyAV, tagged with ``matrix``."""
    import av

    from roadseg_dist import yuv

    rng = np.random.default_rng(1)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (7, 7), 2)
    frame = av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p", dst_colorspace=yuv.TAGS[matrix])
    frame.colorspace = yuv.TAGS[matrix]
    return frame


def _exact_bgr(planes) -> np.ndarray:
    """The frame's colours from the textbook formulas in float (chroma repeated 2x2), rounded: the
    reference. FFmpeg's default converter (``to_ndarray("bgr24")``) is ~1 level darker than this."""
    kr, kb = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}[planes.matrix]
    y, u, v = (p.astype(np.float64) for p in planes.planes())
    u, v = (np.repeat(np.repeat(c, 2, 0), 2, 1) for c in (u, v))
    y, cb, cr = (y - 16) * 255 / 219, (u - 128) * 255 / 224, (v - 128) * 255 / 224
    r, b = y + 2 * (1 - kr) * cr, y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return np.clip(np.round(np.dstack([b, g, r])), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
def test_planes_render_what_the_frames_colours_render(matrix):
    """A frame kept as I420 planes gives the model input of decoding it to BGR, exactly, and the
    overlay and JPEGs that its colours give through BGR, up to rounding (the planes skip two colour
    conversions)."""
    from roadseg_dist import yuv

    av_frame = _i420_frame(matrix)
    planes = yuv.planes_of(av_frame)
    assert planes.matrix == matrix and planes.shape == (96, 128, 3)
    assert np.array_equal(planes.bgr(), av_frame.to_ndarray(format="bgr24"))  # what the decoder gave before
    bgr = _exact_bgr(planes)
    if matrix == "bt601":  # the reference agrees with OpenCV's own BT.601 conversion
        assert np.abs(bgr.astype(int) - cv2.cvtColor(planes.i420(), cv2.COLOR_YUV2BGR_I420)).mean() < 0.6
    decoded = av_frame.to_ndarray(format="bgr24")  # the model's input is exactly decoding to BGR's
    assert np.array_equal(render.model_input([planes], (24, 32)), render.model_input([decoded], (24, 32)))
    small_mask = np.random.default_rng(2).integers(0, 19, (12, 16), dtype=np.uint8)
    small_mask[:1, :1] = 255
    mask = render.resize_mask(small_mask, 96, 128)
    overlay = render.blend_overlay(planes, mask)
    assert isinstance(overlay, yuv.Frame) and overlay.matrix == matrix
    small = render.Rendered(planes, small_mask).overlay  # as a unit blends: from the model-size mask
    assert np.array_equal(small.y, overlay.y) and np.abs(small.i420().astype(int) - overlay.i420()).mean() < 0.05
    want = render.blend_overlay(bgr, mask)
    inner = (mask == cv2.erode(mask, np.ones((3, 3), np.uint8))) & (mask == cv2.dilate(mask, np.ones((3, 3), np.uint8)))
    diff = np.abs(_exact_bgr(overlay).astype(int) - want)[inner]  # away from class edges (4:2:0 chroma)
    assert diff.mean() < 1.0 and diff.max() <= 3
    for image, reference in ((planes, bgr), (overlay, want)):  # as close to the colours as OpenCV's JPEG of them
        jpeg = cv2.imdecode(np.frombuffer(render.encode_jpeg(image), np.uint8), cv2.IMREAD_COLOR)
        old = cv2.imdecode(np.frombuffer(render.encode_jpeg(reference), np.uint8), cv2.IMREAD_COLOR)
        error, old_error = (np.abs(j.astype(int) - reference).mean() for j in (jpeg, old))
        assert error < old_error + 0.3, (error, old_error)


def test_jfif_planes_are_opencvs_ycrcb_of_the_frames_colours():
    """JPEG's full-range BT.601 YCbCr from the planes equals OpenCV's conversion of the frame's colours."""
    from roadseg_dist import yuv

    for matrix in ("bt601", "bt709"):
        planes = yuv.planes_of(_i420_frame(matrix))
        y, cb, cr = yuv.jfif_planes(planes)
        ycrcb = cv2.cvtColor(_exact_bgr(planes), cv2.COLOR_BGR2YCrCb).astype(int)
        assert np.abs(y.astype(int) - ycrcb[..., 0]).mean() < 0.6
        assert np.abs(cb.astype(int) - ycrcb[::2, ::2, 2]).mean() < 0.6
        assert np.abs(cr.astype(int) - ycrcb[::2, ::2, 1]).mean() < 0.6


def test_frames_the_planes_do_not_take_decode_to_bgr():
    import av

    from roadseg_dist import yuv

    frame = _i420_frame("bt601")
    assert yuv.planes_of(frame) is not None
    frame.colorspace = 9  # BT.2020
    assert yuv.planes_of(frame) is None
    assert yuv.planes_of(av.VideoFrame.from_ndarray(np.zeros((8, 8, 3), np.uint8), format="bgr24")) is None
    odd = av.VideoFrame(31, 16, "yuv420p")
    assert yuv.planes_of(odd) is None


def test_to_bgr_is_decoding_to_bgr_through_one_converter_per_kind_of_frame():
    """yuv.to_bgr keeps an FFmpeg converter per thread and kind of frame; frames of several kinds in turn
    (matrices, sizes, full range, other layouts) each give exactly what ``to_ndarray("bgr24")`` gives."""
    import av

    from roadseg_dist import yuv

    full = _i420_frame("bt601").reformat(format="yuvj420p")
    frames = [_i420_frame("bt601"), _i420_frame("bt709"), _i420_frame("bt709", 64, 80), full,
              _i420_frame("bt601").reformat(format="nv12"), _i420_frame("bt601"), _i420_frame("bt601")]
    for frame in frames:
        assert np.array_equal(yuv.to_bgr(frame), frame.to_ndarray(format="bgr24")), frame


def test_class_fractions():
    mask = np.array([[0, 0, 13, 255]], dtype=np.uint8)
    f = render.class_fractions(mask)
    assert f.shape == (19,) and f[0] == 0.5 and f[13] == 0.25 and abs(f.sum() - 0.75) < 1e-6


@pytest.mark.parametrize("small", [(192, 256), (360, 640), (576, 768), (37, 91), (1, 1), (800, 1400)])
@pytest.mark.parametrize("full", [(720, 1280), (97, 131), (3, 2)])
def test_stats_from_the_model_size_masks_count_the_upsampled_pixels_exactly(small, full):
    """Class fractions and flicker from the model-size masks (a histogram per block size, a weighted
    row sum) equal those counted on the masks upsampled to the frame, up- or downsampled."""
    rng = np.random.default_rng(0)
    mask, other = rng.integers(0, 19, (2, *small), dtype=np.uint8)
    other[: small[0] // 2] = mask[: small[0] // 2]
    big = render.resize_mask(mask, *full)
    assert np.array_equal(render.upsampled_fractions(mask, *full), render.class_fractions(big))
    changed = np.count_nonzero(big != render.resize_mask(other, *full)) / (full[0] * full[1])
    assert render.changed_fraction(mask, other, *full) == pytest.approx(changed, rel=1e-12, abs=1e-15)


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


def test_actor_sizing_uses_the_machine():
    from roadseg_dist.infer.sizing import TASK_CPUS, size_actors

    s = settings.build(InferSettings, checkpoint="c", input="i", output="o")
    two = size_actors(2, 0, s)  # this 2-core machine: two single-thread actors, room for two units
    assert (two.actors, two.actor_cpus, two.threads, two.tasks, two.task_cpus) == (2, 0.75, 1, 2, TASK_CPUS)
    assert 2 - two.actors * two.actor_cpus >= two.tasks * two.task_cpus
    one_core = size_actors(1, 0, s)
    assert (one_core.actors, one_core.actor_cpus, one_core.threads) == (1, 0.75, 1)
    big = size_actors(64, 0, s)  # at most 8 actors per node: more threads each instead
    assert (big.actors, big.actor_cpus, big.threads, big.tasks) == (8, 6.0, 6, 64)
    gpu = size_actors(16, 1, settings.build(InferSettings, checkpoint="c", input="i", output="o", gpu=True))
    # a GPU node: the GPU's actor gets one CPU and batches 4x a unit's chunk; every other CPU runs a unit
    assert (gpu.actors, gpu.actor_cpus, gpu.gpu, gpu.tasks, gpu.task_cpus, gpu.batch) == (1, 1.0, True, 15, 1.0, 32)
    own = size_actors(2, 0, settings.build(InferSettings, checkpoint="c", input="i", output="o",
                                           concurrency=1, actor_cpus=1.0))
    assert (own.actors, own.actor_cpus, own.threads) == (1, 1.0, 1)


def test_actor_sizing_fits_the_nodes():
    from roadseg_dist.infer.sizing import size_actors

    s = settings.build(InferSettings, checkpoint="c", input="i", output="o")
    mixed = size_actors(6, 0, s, node_cpus=[4, 2])  # a 4-CPU head and a 2-CPU worker
    assert (mixed.actors, mixed.actor_cpus, mixed.threads) == (5, 0.75, 1)
    nodes = size_actors(32, 0, s, node_cpus=[8, 8, 8, 8])
    assert (nodes.actors, nodes.actor_cpus) == (24, 1.0)
    one = size_actors(20, 0, s, node_cpus=[20])
    assert (one.actors, one.actor_cpus, one.threads) == (8, 1.75, 2)
    wide = settings.build(InferSettings, checkpoint="c", input="i", output="o", actor_cpus=4.0)
    assert size_actors(6, 0, wide, node_cpus=[4, 2]).actors == 1  # only the head holds a 4-CPU actor


def test_a_failure_reason_is_one_line_without_colour_codes_traceback_or_credentials(monkeypatch):
    """What report.json says of a failed source (issue 26 case 1 had a multi-line ANSI traceback there)."""
    from roadseg_dist.infer.process import reason

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekritValue123456")
    exc = RuntimeError("\x1b[31mboom\x1b[0m reading s3://b/a.mp4 with sekritValue123456\n"
                       "Traceback (most recent call last):\n  File \"x.py\", line 1\n")
    line = reason(exc)
    assert "\n" not in line and "\x1b" not in line and "Traceback" not in line
    assert line.startswith("RuntimeError: boom reading s3://b/a.mp4") and "sekritValue123456" not in line
