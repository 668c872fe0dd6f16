"""A unit of inference work without Ray: a whole source or a frame range, with the model in-process.

The reference is what the pipeline did before units kept their frames: decode, resize to the
model's size, run the model, upsample the mask, render. The masks must equal it pixel for pixel.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import threading

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from roadseg_dist import retries
from roadseg_dist.infer import graph, plan, stats
from roadseg_dist.video import decode as frames
from roadseg_dist import render, yuv
from roadseg_dist.infer.inputs import Source
from roadseg_dist.infer.process import OutputError, Target, Work, process
from roadseg_dist.infer.segment import Batcher, Segmenter, predict_masks, preprocess
from roadseg_dist.infer.state import State
from test_infer_frames import make_video, reference
from test_infer_pipeline import tiny_checkpoint

SIZE = (32, 48)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    ckpt = tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "ckpt"))
    return ckpt, Segmenter(ckpt, SIZE)


def in_process(seg: Segmenter):
    return lambda inputs: (lambda masks=seg.predict(inputs): masks)


def target(out, **kw) -> Target:
    return Target(str(out), kw.pop("kinds", ("mask", "color", "overlay")), kw.pop("video", "h264"), True, SIZE,
                  batch=kw.pop("batch", 4), model="m", **kw)


def old_path_mask(seg: Segmenter, frame: np.ndarray) -> np.ndarray:
    """The mask of one frame as the pipeline computed it before (BGR -> model size -> model -> upsample)."""
    x = preprocess([frame], SIZE, seg.mean, seg.std)
    small = predict_masks(seg.model, x, amp=seg.amp)[0]
    return render.resize_mask(small, frame.shape[0], frame.shape[1])


def test_a_whole_bframe_source_gives_the_old_paths_masks_overlays_and_video(tmp_path, model):
    ckpt, seg = model
    path = str(tmp_path / "clip.mov")
    make_video(path, 23, w=96, h=64, gop=8, bframes=3, noise=30)
    ref = reference(path)
    planes = [f for _, _, f in frames.decode_range(path, frames.FrameRange(0), planes=True)]
    assert all(isinstance(f, yuv.Frame) for f in planes) and len(planes) == len(ref)
    row = process(Work("clip", url=path, identity="id"), target(tmp_path / "out", every=2), in_process(seg))
    kept, worst = list(range(0, len(ref), 2)), []
    assert (row["whole"], row["error"], row["count"], row["frames"], row["stride"]) == (True, "", len(ref), len(kept), 2)
    table = stats.from_bytes(row["stats"])
    assert table.column("frame").to_pylist() == kept
    assert table.schema.names[:5] == ["video", "frame", "timestamp", "road", "sidewalk"] and "traffic_light" in table.schema.names
    assert not any(np.isnan(table.column("timestamp").to_numpy())) and table.column("timestamp")[1].as_py() == 0.08
    out = tmp_path / "out" / "clip"
    for n, i in enumerate(kept):
        mask = cv2.imread(str(out / "mask" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(mask, old_path_mask(seg, ref[i])), i  # pixel-exact
        fractions = np.array([table.column(c)[n].as_py() for c in stats.CLASS_COLUMNS], np.float32)
        assert np.array_equal(fractions, render.class_fractions(mask))
        overlay = cv2.imread(str(out / "overlay" / f"{i:06d}.jpg"))
        assert open(out / "overlay" / f"{i:06d}.jpg", "rb").read() == render.encode_jpeg(
            render.blend_overlay(planes[i], mask))  # the frame's planes, blended and encoded as they are
        old = cv2.imdecode(np.frombuffer(render.encode_jpeg(render.blend_overlay(ref[i], mask)), np.uint8), 1)
        diff = np.abs(overlay.astype(int) - old)  # the old path blended BGR: the same up to rounding
        worst.append((diff.mean(), np.percentile(diff, 99)))
        assert table.column("mask")[n].as_py() == f"clip/mask/{i:06d}.png"
    assert max(m for m, _ in worst) < 2.0 and max(p for _, p in worst) <= 8, worst
    with av.open(str(out / "overlay.mp4")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and abs(float(s.average_rate) - 12.5) < 0.01
        video = [f.to_ndarray(format="bgr24").astype(int) for f in c.decode(s)]
    assert len(video) == len(kept)
    overlays = [cv2.imread(str(out / "overlay" / f"{i:06d}.jpg")).astype(int) for i in kept]
    assert [int(np.argmin([np.abs(v - o).mean() for o in overlays])) for v in video] == list(range(len(kept)))
    assert not (tmp_path / "out" / ".roadseg").exists()  # a whole source leaves no state of its own


@pytest.mark.parametrize("matrix", ["bt709", "bt601"])
def test_overlays_keep_the_sources_colours_and_the_video_says_its_matrix(tmp_path, model, matrix):
    """A BT.709 source (HD cameras tag theirs) and an untagged one: the overlay JPEG and overlay.mp4 show
    the colours decoding to BGR shows, blended; the video is tagged with the matrix its planes are in."""
    ckpt, seg = model
    path, tag = str(tmp_path / "hd.mp4"), yuv.TAGS[matrix]
    rng = np.random.default_rng(0)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        s.codec_context.colorspace = tag
        for i in range(6):
            blocks = rng.choice([0, 255], (8, 12, 3)).astype(np.uint8)  # saturated: a wrong matrix shows
            bgr = cv2.resize(blocks, (96, 64), interpolation=cv2.INTER_NEAREST)
            frame = av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p", dst_colorspace=tag)
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    process(Work("hd", url=path), target(tmp_path / "out"), in_process(seg))
    out = tmp_path / "out" / "hd"
    with av.open(path) as c:
        decoded = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    with av.open(str(out / "overlay.mp4")) as c:
        assert c.streams.video[0].codec_context.colorspace == tag
        video = [f.to_ndarray(format="bgr24").astype(int) for f in c.decode(video=0)]  # FFmpeg reads the tag
    with av.open(str(out / "overlay.mp4")) as c:
        misread = []
        for f in c.decode(video=0):
            f.colorspace = yuv.TAGS["bt601" if matrix == "bt709" else "bt709"]
            misread.append(f.to_ndarray(format="bgr24").astype(int))
    for i, frame in enumerate(decoded):
        mask = cv2.imread(str(out / "mask" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        want = render.blend_overlay(frame, mask).astype(int)
        jpeg = cv2.imread(str(out / "overlay" / f"{i:06d}.jpg")).astype(int)
        old = cv2.imdecode(np.frombuffer(render.encode_jpeg(want.astype(np.uint8)), np.uint8), cv2.IMREAD_COLOR)
        jpeg_error, old_error, video_error, misread_error = (np.abs(x - want).mean() for x in (jpeg, old, video[i],
                                                                                               misread[i]))
        assert jpeg_error < old_error + 0.3, (i, jpeg_error, old_error)  # as close as OpenCV's JPEG of it
        assert video_error < 3 and misread_error > video_error + 2, (i, video_error, misread_error)


def test_a_range_writes_its_piece_and_its_part(tmp_path, model):
    ckpt, seg = model
    path = str(tmp_path / "long.mp4")
    make_video(path, 40, gop=10, bframes=2)
    ranges = plan.plan_ranges(frames.probe(path), 10)
    out = str(tmp_path / "out")
    rows = [process(Work("long", url=path, range=dataclasses.asdict(r), stride=1), target(out), in_process(seg))
            for r in ranges]
    assert [(r["first"], r["count"], r["whole"]) for r in rows] == [(0, 10, False), (10, 10, False), (20, 10, False),
                                                                   (30, 10, False)]
    state = State(out)
    part = pq.read_table(state.part_url("long", 10))
    assert part.column("frame").to_pylist() == list(range(10, 20))
    assert json.loads(part.schema.metadata[b"end"])["count"] == 10
    pieces = sorted(os.listdir(state.pieces_url("long")))
    assert pieces == ["000000000-000000009-10.mp4", "000000010-000000019-10.mp4", "000000020-000000029-10.mp4",
                      "000000030-000000039-10.mp4"]
    assert graph.assemble_video(out, "long", list(range(40)), 25.0, 96, 64) == 40
    assert not os.path.exists(os.path.join(out, "long", "overlay.mp4.tmp"))


def test_images_of_two_sizes_chunk_apart_and_time_by_the_folder_rate(tmp_path, model):
    ckpt, seg = model
    urls = []
    for i, (h, w) in enumerate([(32, 48), (32, 48), (40, 40), (40, 40), (40, 40)]):
        urls.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(urls[-1], np.full((h, w, 3), 40 * i, np.uint8))
    calls = []

    def submit(inputs):
        calls.append(len(inputs))
        return in_process(seg)(inputs)

    row = process(Work("imgs", images=tuple(urls), fps=5.0), target(tmp_path / "out", batch=2), submit)
    assert calls == [2, 2, 1]  # a chunk never mixes sizes, and holds at most `batch` frames
    table = stats.from_bytes(row["stats"])
    assert table.column("timestamp").to_pylist() == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert cv2.imread(str(tmp_path / "out" / "imgs" / "mask" / "000002.png"), cv2.IMREAD_UNCHANGED).shape == (40, 40)
    assert os.path.exists(tmp_path / "out" / "imgs" / "overlay.mp4")


def test_a_broken_source_is_its_row_and_publishes_no_video(tmp_path, model):
    ckpt, seg = model
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 50)
    row = process(Work("bad", url=str(tmp_path / "bad.mp4")), target(tmp_path / "out"), in_process(seg))
    assert "cannot be opened" in row["error"] and row["frames"] == 0 and "\n" not in row["error"]
    assert not (tmp_path / "out" / "bad" / "overlay.mp4").exists()


def test_a_full_disk_stops_the_run_and_an_outage_pauses_the_unit(tmp_path, model, monkeypatch):
    ckpt, seg = model
    path = str(tmp_path / "c.mp4")
    make_video(path, 4, bframes=0)
    work, tgt = Work("c", url=path), target(tmp_path / "out")
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(graph, "process", lambda *a: (_ for _ in ()).throw(OutputError("/out/c/mask/x.png", full)))
    row = graph.process_unit(work, tgt, in_process(seg))
    assert row["fatal"] and "no space left" in row["fatal"] and "/out/c/mask/x.png" in row["fatal"]
    outage, slept = retries.StorageError("cannot reach S3"), []
    outage.transient = True
    tries = iter([outage, outage])

    def flaky(*args):
        err = next(tries, None)
        if err:
            raise err
        return process(*args)

    monkeypatch.setattr(graph, "process", flaky)
    row = graph.process_unit(work, tgt, in_process(seg), pauses=(1.0, 2.0, 3.0), sleep=slept.append)
    assert slept == [1.0, 2.0] and not row["error"] and row["frames"] == 4
    refused = retries.StorageError("S3 refused the credentials")  # not transient: the source's failure
    monkeypatch.setattr(graph, "process", lambda *a: (_ for _ in ()).throw(refused))
    assert "refused" in graph.process_unit(work, tgt, in_process(seg), sleep=slept.append)["error"]


def test_the_batcher_merges_callers_and_hands_each_its_own_rows():
    seen = []

    def launch(x):
        seen.append(len(x))
        return lambda: (x[:, 0, 0, 0].copy(), -x[:, 0, 0, :2].astype(int))

    batcher = Batcher(launch, batch=8)
    gate = threading.Event()
    blocker = Batcher(lambda x: (gate.wait(5), lambda: (x[:, 0, 0, 0],))[1], batch=8)
    futures = [blocker.submit(np.full((3, 1, 1, 3), i, np.uint8)) for i in range(4)]
    gate.set()
    assert [list(f.result(5)[0]) for f in futures] == [[0] * 3, [1] * 3, [2] * 3, [3] * 3]
    ids, pairs = batcher.submit(np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1).repeat(3, 3)).result(5)
    assert list(ids) == [0, 1, 2, 3, 4] and pairs.tolist() == [[-i, -i] for i in range(5)]  # every array split
    failing = Batcher(lambda x: (_ for _ in ()).throw(RuntimeError("cuda oom")), batch=4)
    with pytest.raises(RuntimeError, match="cuda oom"):
        failing.submit(np.zeros((1, 1, 1, 3), np.uint8)).result(5)


def test_confidence_and_flicker_are_what_the_probabilities_and_the_masks_say(tmp_path, model):
    import torch

    from roadseg_dist.models.predict import normalize

    ckpt, seg = model
    path = str(tmp_path / "clip.mp4")
    make_video(path, 9, w=96, h=64, bframes=2, noise=60)
    seg.threshold = 0.6
    row = process(Work("c", url=path), target(tmp_path / "out"), in_process(seg))
    table = stats.from_bytes(row["stats"]).to_pandas()
    ref = reference(path)
    for i in (0, 4, 8):  # sampled frames: the model's softmax computed here, directly
        x = normalize(render.model_input([ref[i]], SIZE), seg.mean, seg.std)
        with torch.inference_mode():
            prob = torch.softmax(seg.model(x).float(), 1).max(1).values[0].numpy()
        assert table.confidence[i] == pytest.approx(prob.mean(), abs=2e-3)
        assert table.uncertain[i] == pytest.approx((prob < 0.6).mean(), abs=2e-3)
    masks = [cv2.imread(str(tmp_path / "out" / "c" / "mask" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED) for i in range(9)]
    assert np.isnan(table.flicker[0])  # null: no frame before the first
    for i in range(1, 9):
        assert table.flicker[i] == pytest.approx((masks[i] != masks[i - 1]).mean(), abs=1e-6)
    assert set(table.source) == {path}


def test_only_big_sources_are_split():
    small = [Source(f"c{i}", url=f"/c{i}.mp4", size=1 << 20) for i in range(80)]
    assert plan.choose_splits(small, slots=2) == set()  # an archive of short clips: a unit per clip
    one = [Source("long", url="/long.mp4", size=40 << 20)]
    assert plan.choose_splits(one, slots=2) == {"long"}
    mixed = small + [Source("big", url="/big.mp4", size=100 << 20)]
    assert plan.choose_splits(mixed, slots=64) == {"big"}  # past SPLIT_MAX_BYTES, whatever the share
