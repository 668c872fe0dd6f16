"""The overlay video's H.264 pieces and the cache of S3 opening reads: plain functions, no Ray."""
from __future__ import annotations

import os

import av
import numpy as np
import pytest

from roadseg_dist.infer import graph
from roadseg_dist import render
from roadseg_dist.video.ranged import HeadCache, RangedReader
from roadseg_dist.infer.state import State
from roadseg_dist.infer.video_out import OverlayStream, Piece, cover, encode_piece, join_pieces


def frames(n: int, h: int = 96, w: int = 128, seed: int = 0) -> list[np.ndarray]:
    """Frames that differ a lot from one to the next (so order mistakes show), smooth enough to encode well."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (n, h // 8, w // 8, 3), dtype=np.uint8)
    return [np.ascontiguousarray(np.kron(f, np.ones((8, 8, 1), np.uint8))) for f in small]


def decoded(path: str) -> list[np.ndarray]:
    with av.open(path) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(c.streams.video[0])]


def nearest(got: list[np.ndarray], want: list[np.ndarray]) -> list[int]:
    return [int(np.argmin([np.abs(g.astype(int) - w).mean() for w in want])) for g in got]


def test_cover_takes_pieces_that_hold_exactly_the_frames():
    indices = list(range(0, 100, 2))  # stride 2
    pieces = [Piece(0, 30, 16), Piece(32, 62, 16), Piece(32, 40, 5), Piece(64, 98, 18), Piece(64, 70, 3)]
    assert cover(pieces, indices) == [Piece(0, 30, 16), Piece(32, 62, 16), Piece(64, 98, 18)]
    assert cover(pieces[:3], indices) is None  # frames 64.. missing
    assert cover([Piece(0, 30, 15)] + pieces[1:], indices) is None  # count and last disagree
    assert Piece.parse(Piece(7, 9, 3).name) == Piece(7, 9, 3) and Piece.parse("x.mp4.tmp") is None


def test_pieces_join_into_one_h264_video_in_order(tmp_path):
    src = frames(40)
    out = str(tmp_path / "v.mp4")
    assert join_pieces(out, [encode_piece(src[a:a + 16]) for a in (0, 16, 32)], fps=12.5) == 40
    with av.open(out) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        assert abs(float(s.duration * s.time_base) - 40 / 12.5) < 0.1
    assert nearest(decoded(out), src) == list(range(40))
    with pytest.raises(ValueError):  # other dimensions, other parameters: the caller re-encodes
        join_pieces(out, [encode_piece(src[:4]), encode_piece(frames(4, 64, 64))], fps=10)


def test_assemble_video_joins_the_pieces_or_encodes_the_jpegs(tmp_path):
    out, sid, src = str(tmp_path), "clip", frames(24)
    indices = list(range(0, 48, 2))
    for i, f in zip(indices, src):
        path = os.path.join(out, sid, render.frame_name(i, "overlay"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").write(render.encode_jpeg(f, 95))
    pieces = State(out).pieces_url(sid)
    os.makedirs(pieces)
    for a in (0, 10, 20):
        chunk = indices[a:a + 10]
        open(os.path.join(pieces, Piece(chunk[0], chunk[-1], len(chunk)).name), "wb").write(
            encode_piece(src[a:a + len(chunk)]))
    assert graph.assemble_video(out, sid, indices, 10.0, 128, 96) == 24
    assert nearest(decoded(os.path.join(out, sid, "overlay.mp4")), src) == list(range(24))
    assert not os.path.exists(pieces)  # joined, then removed
    # no pieces (a crash, or mjpeg): the same video from the overlay JPEGs
    assert graph.assemble_video(out, sid, indices, 10.0, 128, 96) == 24
    assert nearest(decoded(os.path.join(out, sid, "overlay.mp4")), src) == list(range(24))


class Store:
    """An object store's ranged GET, counted."""

    def __init__(self, data: bytes):
        self.data, self.gets = data, []

    def cat_file(self, path, start, end):
        self.gets.append((start, end))
        return self.data[start:end]


def test_opening_reads_are_fetched_once_per_process_and_never_stale():
    data, cache = bytes(range(256)) * 4096, HeadCache(1 << 20)
    store = Store(data)

    def open_and_read(key, at):
        f = RangedReader(store, "k", len(data), key=key, cache=cache)
        head = f.read(5000) + (f.seek(-3000, 2) and f.read(3000))  # a header, then an index at the end
        f.opened()
        f.seek(at)
        return head, f.read(1000)

    assert open_and_read(("k", len(data), "etag1"), 100_000) == (data[:5000] + data[-3000:], data[100_000:101_000])
    first = len(store.gets)
    assert open_and_read(("k", len(data), "etag1"), 200_000)[1] == data[200_000:201_000]
    assert store.gets[first:] == [(200_000, 201_000)]  # only the frame data: the opening came from the cache
    open_and_read(("k", len(data), "etag2"), 300_000)  # the object was replaced: read again
    assert (0, 5000) in store.gets[first + 1:]
    assert cache.bytes <= 1 << 20


def test_a_size_change_mid_video_gives_a_playable_video(tmp_path):
    small, large = frames(1, 96, 128)[0], frames(1, 128, 160, seed=1)[0]  # the size changes mid-run
    path = str(tmp_path / "v.mp4")
    stream = OverlayStream(path, 10.0, faststart=True)
    for f in (small, large, small):
        stream.add(f)
    assert stream.close() == 3
    assert [f.shape for f in decoded(path)] == [(96, 128, 3)] * 3  # scaled to the first frame's size
    assert OverlayStream(str(tmp_path / "none.mp4"), 10.0).close() == 0 and not os.path.exists(tmp_path / "none.mp4")
