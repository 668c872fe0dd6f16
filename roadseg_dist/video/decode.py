"""Frame ranges and decoding with PyAV (FFmpeg) on file objects: each video's bytes read about once.

Frame N of a source is the N-th frame of one sequential decode. A video is opened as a file object
(a local file, or an S3 object read in ranged GETs through s3fs's read-ahead cache), so the probe
reads the container's header and index, not the file, and each frame range reads only its own bytes.

The container index (``stream.index_entries``: one entry per packet in decode order, its DTS, byte
position and keyframe flag) gives the plan: ranges start on keyframes about ``segment_frames``
packets apart. A range seeks to its keyframe by timestamp (checked: the index holds that very DTS)
and decodes its packets up to its successor's keyframe (with open GOPs, through it). Its first frame's index
is its keyframe's packet number plus the *leading pictures* (open GOP: packets decoded after the
keyframe but shown before it), which belong to the previous range; that range decodes through the
next keyframe to show them. Each range also counts the frames it should have produced; a shortfall
anywhere but in a broken tail means the seek was not exact, and the source is decoded again from
its start (see ``ledger``). Containers without a full index are one range, decoded sequentially.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from typing import Callable, Iterator

import numpy as np

from roadseg_dist import images, yuv
from roadseg_dist.video.ranged import RangedReader
from roadseg_dist.video.window import Window

DEFAULT_IMAGE_FPS = 10.0
PROBE_BLOCK = 64 * 1024        # the probe reads a header, the index and one keyframe
MIN_BLOCK, MAX_BLOCK = 32 * 1024, 8 * 1024 * 1024  # the largest read-ahead of a range (see _block)


class DecodeError(Exception):
    """A source that cannot be decoded; the message is the reason shown in the report."""


def check_size(width: int, height: int, what: str) -> None:
    """The pixel cap (``images.max_pixels``) for video frames: a crafted header cannot make us
    allocate gigabytes; DecodeError names what was too large."""
    try:
        images.check_size(int(width or 0), int(height or 0), what)
    except images.ImageTooLarge as exc:
        raise DecodeError(str(exc)) from None


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    frame_count: int     # packets in the index (the frames of a sequential decode, bar a broken tail)
    fps: float
    width: int
    height: int
    size: int            # bytes of the file
    keyframes: tuple     # (packet number, DTS, byte position, reach) of each keyframe; () without an index;
    #                      reach: the end of the bytes of the keyframe and the few packets after it
    open_gop: bool = True  # keyframes with leading pictures: a range must decode its successor's keyframe


@dataclasses.dataclass(frozen=True)
class FrameRange:
    """Packets [start, end) in decode order (end None: to the end); ``dts``/``end_dts`` of their keyframes."""
    start: int
    end: int | None = None
    dts: int | None = None
    end_dts: int | None = None
    seek_ts: int | None = None  # where a backward seek lands on our keyframe (see ``plan_ranges``)
    block: int = MIN_BLOCK  # read-ahead block for this range's bytes
    reach: int | None = None  # no read-ahead past this byte (None: the end of the file)
    open_gop: bool = True  # decode through the next keyframe (for its leading pictures), else stop before it


@contextlib.contextmanager
def open_file(url: str, block: int = PROBE_BLOCK, reach: int | None = None,
              known: tuple[int, str] | None = None) -> Iterator:
    """A seekable binary file object: local, or an S3 object read in ``block``-sized ranged GETs.
    ``known``: (size, version) of the object from a listing, which saves asking for them."""
    from roadseg_dist import storage

    if not storage.is_remote(url):
        path = storage.local_path(url)
        if not os.path.exists(path):
            raise DecodeError("file not found")
        if os.path.getsize(path) == 0:
            raise DecodeError("empty file (0 bytes)")
        with open(path, "rb") as f:
            yield f
        return
    fs, path = storage.filesystem(url)
    if known is None:
        info = storage.retry(fs.info, path, url=url)
        known = (int(info.get("size") or 0), str(info.get("ETag") or info.get("etag") or info.get("mtime") or ""))
    size, version = known
    f = RangedReader(fs, path, int(size), max_block=block, reach=reach, key=(path, int(size), version))
    if f.size == 0:
        raise DecodeError("empty file (0 bytes)")
    yield f


@contextlib.contextmanager
def open_video(f, threads: int = 1) -> Iterator:
    """(container, video stream) of an open file; DecodeError when it is not a readable video."""
    import av

    try:
        # the stream's parameters come from the header; probing reads no more than its first packet
        container = av.open(f, mode="r", options={"probesize": "32", "fpsprobesize": "0"}, buffer_size=8192)
    except (av.error.FFmpegError, ValueError) as exc:
        raise DecodeError("not a readable video: the container cannot be opened "
                          f"(corrupt, truncated or not a video file: {exc})") from None
    try:
        if not container.streams.video:
            raise DecodeError("no video stream in the file")
        stream = container.streams.video[0]
        # the pixel cap from the header, before a frame is allocated (each frame is checked again)
        check_size(stream.codec_context.width, stream.codec_context.height, "the video stream")
        stream.codec_context.thread_count = max(1, int(threads))
        yield container, stream
    finally:
        container.close()


def _opened(f) -> None:
    """What FFmpeg read to open the container is cached for the next range of the video (S3 only)."""
    if isinstance(f, RangedReader):
        f.opened()


def _reach(entries, i: int, after: int = 1) -> int:
    """Where the bytes of packet ``i`` and the next ``after`` packets end: a range needs its successor's
    keyframe and the packet after it (more only for leading pictures, read on demand)."""
    return max(int(e.pos) + int(e.size) for e in entries[i:i + after + 1])


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    return fps if 0 < fps <= 1000 else 0.0


def probe(url: str) -> VideoInfo:
    """Metadata and keyframes of a video from its index, after checking that its first frame decodes."""
    import av

    with open_file(url) as f, _storage_errors(f), open_video(f) as (container, stream):
        _opened(f)
        entries = stream.index_entries
        keyframes = tuple((i, int(e.timestamp), int(e.pos), _reach(entries, i))
                          for i, e in enumerate(entries) if e.is_keyframe)
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError:
            first = None
        if first is None:
            raise DecodeError("no decodable frame: the video stream is empty or corrupt")
        size = int(getattr(f, "size", 0) or os.fstat(f.fileno()).st_size)
        keyframes = keyframes if keyframes and keyframes[0][0] == 0 else ()
        return VideoInfo(frame_count=len(entries) or int(stream.frames or 0), fps=_fps(stream),
                         width=first.width, height=first.height, size=size, keyframes=keyframes,
                         open_gop=len(keyframes) > 1 and _has_leading_pictures(container, stream, keyframes))


def _has_leading_pictures(container, stream, keyframes) -> bool:
    """Whether some of 4 keyframes spread over the file have leading pictures (open GOP); a few
    packets read at each. A wrong guess costs time, not frames: ranges that do not join up are
    decoded again (see ``ledger.source_problem``)."""
    import av

    n = len(keyframes) - 1
    for k in sorted({1 + round(i * (n - 1) / 3) for i in range(4)}):
        ts = keyframes[k + 1][1] - 1 if k + 1 < len(keyframes) else 2 ** 62
        try:
            container.seek(ts, stream=stream, backward=True)
            packets = container.demux(stream)
            key = next(packets)
            if any(p.pts is not None and key.pts is not None and p.pts < key.pts
                   for p in itertools.islice(packets, 4)):
                return True
        except (av.error.FFmpegError, StopIteration):
            return True
    return False


def decode_range(url: str, rng: FrameRange, stride: int | Callable[[float], int] = 1, marks: dict | None = None,
                 threads: int = 1, known: tuple[int, str] | None = None,
                 planes: bool = False) -> Iterator[tuple[int, float, np.ndarray | yuv.Frame]]:
    """Yield (frame index, time in s, BGR frame) for the range's frames whose index is divisible by ``stride``
    (or by ``stride(fps)``, for a stride that depends on the source's frame rate). ``planes``: a frame the
    decoder gives as I420 comes as its planes (``yuv.Frame``), with no conversion to BGR.

    ``marks`` receives ``first`` (index of the range's first frame), ``count`` (frames decoded),
    ``expected`` (frames the index promises before the next range; -1 for the last range),
    ``broken`` (why decoding stopped early at damaged or missing data; '' if it did not), and what
    the stream header says: ``fps``, ``width``, ``height``, ``stride``. ``known``: see ``open_file``.
    """
    marks = {} if marks is None else marks
    marks.update(first=0, count=0, expected=-1, broken="")
    with open_file(url, rng.block, rng.reach, known) as f, _storage_errors(f):
        yield from _decode_open(f, rng, stride, marks, threads, planes)


@contextlib.contextmanager
def _storage_errors(f) -> Iterator[None]:
    """A read from storage that failed is that error, not damaged data: FFmpeg reports any failed
    read as an I/O error or the end of the stream, and a storage outage must not pass for a broken tail."""
    try:
        yield
    except DecodeError:
        if getattr(f, "error", None) is not None:
            raise f.error from None
        raise
    if getattr(f, "error", None) is not None:
        raise f.error


def _decode_open(f, rng: FrameRange, stride, marks: dict, threads: int, planes: bool = False):
    import av

    with open_video(f, threads) as (container, stream):
        _opened(f)
        marks.update(fps=_fps(stream), width=stream.codec_context.width, height=stream.codec_context.height)
        marks["stride"] = every = int(stride(marks["fps"]) if callable(stride) else stride)
        packets = container.demux(stream)
        if rng.dts is not None:
            container.seek(rng.seek_ts, stream=stream, backward=True)
            try:
                first = next(packets, None)
            except av.error.FFmpegError:
                first = None
            if first is None or first.dts != rng.dts:
                # Not our keyframe (an index that lies): decode nothing but promise a frame, so the
                # ledger sees a range that falls short and the source is decoded again from its start.
                marks["expected"] = max(1, (rng.end or rng.start + 1) - rng.start)
                return
            packets = itertools.chain([first], packets)
        window, clock = Window(rng), _Clock(stream, marks["fps"])
        for frame in _frames(packets, stream, window, marks):
            if not window.shows(frame.pts):
                continue
            index = window.first + marks["count"]
            marks["first"] = window.first
            marks["count"] += 1
            time = clock(frame.pts)
            if index % every == 0:
                check_size(frame.width, frame.height, f"frame {index}")
                yield index, time, (planes and yuv.planes_of(frame)) or yuv.to_bgr(frame)
        marks["first"] = window.first
        if rng.end is not None:
            marks["expected"] = (rng.end + window.next_leading) - window.first


class _Clock:
    """A frame's presentation time in seconds from its pts and the stream's time base (a frame's own
    time base is missing on the frames a decoder flushes at a range's end, PyAV then says NaN); a
    frame without a pts is one frame period after the previous one."""

    def __init__(self, stream, fps: float):
        self.base = stream.time_base
        self.period = 1.0 / fps if fps else 0.0
        self.last: float | None = None

    def __call__(self, pts) -> float:
        if pts is not None and self.base:
            self.last = float(pts * self.base)
        else:
            self.last = 0.0 if self.last is None else self.last + self.period
        return self.last


def _frames(packets, stream, window: Window, marks: dict):
    """Decoded frames of the range in presentation order; ends where the data is damaged."""
    import av

    try:
        for packet in packets:
            if packet.size == 0 or packet.dts is None and packet.pts is None:
                continue
            if not window.admit(packet):
                break
            yield from stream.decode(packet)
            if window.done:
                break  # before demuxing (reading) the next keyframe
        yield from stream.decode(None)
    except av.error.FFmpegError as exc:  # like a plain decode loop (and OpenCV): stop at the damage
        marks["broken"] = f"decoding stopped at damaged data ({type(exc).__name__})"


def decode_images(urls: list[str] | tuple[str, ...], start: int, end: int | None, stride: int = 1,
                  offset: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """The same contract for a folder of images: frame i is the i-th image in name order.

    ``urls[0]`` is frame ``offset``, so a range can carry only its own file names.
    """
    import cv2

    from roadseg_dist import storage

    stop = len(urls) + offset if end is None else min(end, len(urls) + offset)
    for index in range(start, stop):
        if index % stride:
            continue
        url = urls[index - offset]
        try:
            frame = images.imdecode(storage.read_bytes(url), cv2.IMREAD_COLOR, storage.redact(url))
        except images.ImageTooLarge as exc:
            raise DecodeError(str(exc)) from None
        if frame is None:
            raise DecodeError(f"{storage.redact(url)} is not a decodable image")
        yield index, frame
