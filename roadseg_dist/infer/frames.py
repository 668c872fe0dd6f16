"""Frame ranges and decoding: the part of exactly-once that lives in the video files.

A video is split into frame ranges by its packet count (demuxed, not decoded; the header's frame
count is often wrong: tree.avi claims 444 frames and decodes 68). The plan is still only a guess that
decoding corrects: the last range reads to the end of the stream, a range past the end yields nothing,
and a range whose seek cannot be shown to land on its first frame decodes from the start and skips.
Each range also fingerprints its first frame and the frame after its end, so the driver can prove
the ranges join up (``first_inexact_range``) and redo any that do not. Together the ranges yield
frames 0..n-1 where n is what one sequential OpenCV decode of the file yields.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Iterator

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # broken inputs are reported once, not logged per packet
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

# Metadata beyond this is garbage, not a plan: such a video is one range read to the end.
MAX_PLAUSIBLE_FRAMES = 50_000_000
DEFAULT_IMAGE_FPS = 10.0


class DecodeError(Exception):
    """A source that cannot be decoded; the message is the reason shown in the report."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    frame_count: int   # video packets counted by demuxing (no decoding); the header's claim if that fails
    header_frames: int  # what the container header claims (CAP_PROP_FRAME_COUNT); often wrong
    fps: float
    width: int
    height: int


def open_video(path: str) -> cv2.VideoCapture:
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise DecodeError("not a readable video: the container cannot be opened "
                          "(corrupt, truncated or not a video file)")
    return cap


def count_packets(path: str) -> int | None:
    """Video packets in the file, read in raw mode (demuxing only: ~1000x cheaper than decoding).

    One packet is one frame for the codecs met in practice, so this is a far better plan than the
    header's frame count; decoding still has the last word (see ``decode_range``).
    """
    cap = open_video(path)
    try:
        if not cap.set(cv2.CAP_PROP_FORMAT, -1):
            return None
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def probe(path: str) -> VideoInfo:
    """Metadata of a video, after checking that its first frame decodes."""
    cap = open_video(path)
    try:
        ok, frame = cap.read()
        if not ok or frame is None:
            raise DecodeError("no decodable frame: the video stream is empty or corrupt")
        header = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()
    if header < 0 or header > MAX_PLAUSIBLE_FRAMES:
        header = 0
    if not math.isfinite(fps) or fps <= 0 or fps > 1000:
        fps = 0.0
    packets = count_packets(path)
    return VideoInfo(frame_count=packets if packets else header, header_frames=header, fps=fps,
                     width=frame.shape[1], height=frame.shape[0])


def plan_ranges(frame_count: int, segment_frames: int) -> list[tuple[int, int | None]]:
    """[start, end) ranges covering ``frame_count`` frames; the last one is open (end None = EOF)."""
    if segment_frames < 1:
        raise ValueError(f"segment_frames must be >= 1, got {segment_frames}")
    n_ranges = max(1, math.ceil(frame_count / segment_frames)) if frame_count > 0 else 1
    starts = [i * segment_frames for i in range(n_ranges)]
    return [(s, starts[i + 1] if i + 1 < n_ranges else None) for i, s in enumerate(starts)]


def _seek(cap: cv2.VideoCapture, start: int) -> bool:
    """Position ``cap`` on frame ``start``; False when the backend itself says it landed elsewhere."""
    if not cap.set(cv2.CAP_PROP_POS_FRAMES, start):
        return False
    return int(round(cap.get(cv2.CAP_PROP_POS_FRAMES))) == start


def seek_exactly(path: str, cap: cv2.VideoCapture, start: int) -> np.ndarray | None:
    """Seek ``cap`` to frame ``start`` (> 0) and return that frame, or None if the seek is not exact.

    The backend's reported position is not proof (tree.avi reports frame 200 and returns frame 65),
    so a second decoder seeks to ``start - 1`` and steps one frame: both must give the same image.
    An inexact seek lands both on the same wrong keyframe and they differ; a seek past the end of
    the stream fails. Either way the caller falls back to decoding from the start.
    """
    if not _seek(cap, start):
        return None
    ok, frame = cap.read()
    if not ok or frame is None:
        return None
    check = open_video(path)
    try:
        if not _seek(check, start - 1) or not check.grab():
            return None
        ok, again = check.read()
        return frame if ok and again is not None and np.array_equal(frame, again) else None
    finally:
        check.release()


def fingerprint(frame: np.ndarray | None) -> str:
    """A short hash of a decoded frame ('' for none: the end of the stream)."""
    return "" if frame is None else hashlib.blake2b(frame.tobytes(), digest_size=8).hexdigest()


def decode_range(path: str, start: int, end: int | None, stride: int = 1, seek: bool = True,
                 packets: int | None = None, marks: dict | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (source frame index, BGR frame) for the indices in [start, end) divisible by ``stride``.

    ``packets`` (from ``count_packets``): seeks are trusted only to frames the file has packets for;
    a range starting beyond them decodes from the start (and, normally, finds nothing). ``seek=False``
    forces that decode-from-the-start path.

    ``marks`` receives ``first`` (fingerprint of frame ``start``) and ``next`` (of frame ``end``, the
    next range's first): where one range's ``next`` differs from the following range's ``first``,
    that range's seek was inexact (see ``first_inexact_range``).
    """
    seek = seek and (packets is None or start < packets)
    marks = {} if marks is None else marks
    marks.update(first="", next="")
    cap = open_video(path)
    try:
        index = start
        first = seek_exactly(path, cap, start) if seek and start > 0 else None
        if first is not None:  # frame `start`, already decoded by the check
            marks["first"] = fingerprint(first)
            if start % stride == 0:
                yield start, first
            index += 1
        elif start > 0:
            cap.release()
            cap = open_video(path)
            for _ in range(start):  # grab() decodes without the colour conversion
                if not cap.grab():
                    return  # the range starts past the end of the stream
        while end is None or index < end:
            if index % stride == 0 or index == start:
                ok, frame = cap.read()
            else:
                ok, frame = cap.grab(), None
            if not ok:
                return  # end of the stream: `next` stays ''
            if index == start:
                marks["first"] = fingerprint(frame)
            if index % stride == 0:
                yield index, frame
            index += 1
        ok, frame = cap.read()
        marks["next"] = fingerprint(frame if ok else None)
    finally:
        cap.release()


def first_inexact_range(marks: list[tuple[str, str]]) -> int | None:
    """Ranges in order as (first, next) fingerprints -> the first range whose start was missed, or None.

    Range 0 never seeks and each range decodes sequentially from its start, so by induction a range
    is exact when its first frame is the frame its predecessor decoded right after its own end.
    """
    for r in range(1, len(marks)):
        if marks[r - 1][1] != marks[r][0]:
            return r
    return None


def decode_images(urls: list[str] | tuple[str, ...], start: int, end: int | None, stride: int = 1,
                  offset: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """The same contract for a folder of images: frame i is the i-th image in name order.

    ``urls[0]`` is frame ``offset``, so a range can carry only its own file names.
    """
    from roadseg_dist import storage

    stop = len(urls) + offset if end is None else min(end, len(urls) + offset)
    for index in range(start, stop):
        if index % stride:
            continue
        url = urls[index - offset]
        data = np.frombuffer(storage.read_bytes(url), dtype=np.uint8)
        frame = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if frame is None:
            raise DecodeError(f"{storage.redact(url)} is not a decodable image")
        yield index, frame


def sequential_count(path: str) -> int:
    """Frames a plain sequential OpenCV decode yields: the reference for exactly-once."""
    cap = open_video(path)
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    return n
