"""One unit of inference work in one process: a whole source, or one frame range of a long one.

    decode (PyAV) ─► frames ──► resize to the model's size ──► model actor ──► masks at the model's size
                       │                                                          │
                       └──── kept here, full resolution (I420 planes) ────────────┴─► mask, colour and
                            overlay files, the overlay video (overlay.mp4, or this range's piece of it),
                            stats rows ──► the result row the driver gets (stats as Arrow bytes)

Full-resolution frames never leave this process: only the model's input goes to a model actor
and only masks at the model's size come back, so a GPU actor's one CPU moves ~1/20 of the bytes a
frame has. Decoding the next chunk overlaps the model's work on the previous ones. A video's frames
stay in the decoder's I420 planes from decode to overlay.mp4 and the JPEGs (``yuv.py``); an image
folder's are BGR.

Plain Python around one callable, ``submit(inputs) -> collect()``, that reaches a model: a Ray
actor in the job (``graph.py``), the model in-process in tests.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import io
import json
import logging
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np

from roadseg_dist import retries, storage
from roadseg_dist.video import decode
from roadseg_dist.infer import stats as stats_mod, video_out
from roadseg_dist import render
from roadseg_dist.infer.state import State, write_table

log = logging.getLogger(__name__)

# model-size RGB frames -> collect() -> (masks at the model's size, confidence (N, 2): see segment.py)
Submit = Callable[[np.ndarray], Callable[[], tuple[np.ndarray, np.ndarray]]]
IN_FLIGHT = 2      # chunks at the model while the next one is decoded
WRITE_THREADS = 4  # S3 PUTs are latency-bound; a few in flight keep them busy


@dataclasses.dataclass(frozen=True)
class Target:
    """What a unit of work writes, the same for every unit of a run."""
    output: str
    kinds: tuple[str, ...]           # per-frame files: mask, color, overlay, original
    video: str                       # overlay.mp4's codec (h264, mjpeg), or "" for none
    stats: bool
    size: tuple[int, int]            # the model's input HxW
    every: int = 1
    fps: float | None = None         # segment about this many frames a second (sets the stride)
    batch: int = 8                   # frames per model call
    alpha: float = 0.5
    quality: int = 85
    model: str = ""                  # the model's id, a column of the stats

    def stride(self, source_fps: float) -> int:
        """Source frames per segmented frame (the rule of ``InferSettings.stride``)."""
        if self.fps is None or not source_fps or source_fps <= 0:
            return self.every
        return max(1, round(source_fps / self.fps))


@dataclasses.dataclass(frozen=True)
class Work:
    """A whole source (``range`` None: decoded from its first frame to its end) or one frame range
    of a source split by its plan (``range``: ``decode.FrameRange`` fields, ``stride`` fixed)."""
    video: str                       # the source id
    url: str = ""
    images: tuple[str, ...] = ()     # an image folder's frames (a range carries only its own)
    range: dict | None = None
    stride: int | None = None
    fps: float | None = None         # an image folder's frame rate
    identity: str = ""               # the file's version from the listing (with ``size``: no request for it)
    size: int = 0

    @property
    def start(self) -> int:
        return int(self.range["start"]) if self.range else 0

    @property
    def whole(self) -> bool:
        return self.range is None


class OutputError(Exception):
    """A file of the outputs could not be written; ``disk_full`` stops the run, not just the source."""

    def __init__(self, url: str, exc: BaseException):
        self.url, self.cause = url, exc
        self.disk_full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        what = "no space left on the device" if self.disk_full else (
            getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}")
        super().__init__(f"cannot write {storage.redact(url)}: {what}")


def process(work: Work, target: Target, submit: Submit) -> dict[str, Any]:
    """Do ``work``; return its result row (see ``result_row``). Problems with the source are in the
    row (``error``); a file that cannot be written raises ``OutputError``; the model's errors raise."""
    marks: dict[str, Any] = {}
    stats = stats_mod.Rows(work.video, target.model, storage.redact(work.url))
    sink = _Sink(work, target, marks)
    try:
        decoded = _decode(work, target, marks)
        _segment(decoded, target, submit, lambda chunk, out: sink.write(chunk, *out, stats))
        sink.finish(ok=not marks.get("error") and stats.count > 0)
    finally:
        sink.close()
    row = result_row(work, marks, stats)
    if not work.whole and not row["error"]:
        save_range(target.output, row, stats)
    return row


def save_range(output: str, row: dict[str, Any], stats: stats_mod.Rows) -> None:
    """A finished range of a split source: its stats rows and what the decoder found, written after
    all its files (the marker a re-run skips it by)."""
    url = State(output).part_url(row["video"], row["start"])
    end = {k: row[k] for k in ("first", "count", "expected", "broken", "error", "fps", "width", "height", "stride")}
    _publish(lambda: write_table(url, stats.table().replace_schema_metadata({"end": json.dumps(end)})), url)


def result_row(work: Work, marks: dict, stats: stats_mod.Rows) -> dict[str, Any]:
    """What the driver learns of a unit: where it starts, what the decoder found (``first``, ``count``,
    ``expected``, ``broken``, ``error``: see ``ledger``), the stream's facts, and the stats rows."""
    return {"video": work.video, "start": work.start, "whole": work.whole, "identity": work.identity,
            "first": int(marks.get("first", 0)), "count": int(marks.get("count", 0)),
            "expected": int(marks.get("expected", -1)), "broken": str(marks.get("broken", "")),
            "error": str(marks.get("error", "")), "fps": float(marks.get("fps") or 0.0),
            "width": int(marks.get("width") or 0), "height": int(marks.get("height") or 0),
            "stride": int(marks.get("stride") or 1), "frames": stats.count, "stats": stats.to_bytes()}


def _decode(work: Work, target: Target, marks: dict) -> Iterator[tuple[int, float, np.ndarray]]:
    """The unit's kept frames; a source that cannot be decoded ends the stream with ``marks["error"]``
    (the frames before it are still written, as a sequential decode would have shown them)."""
    try:
        if work.images:
            fps = float(work.fps or decode.DEFAULT_IMAGE_FPS)
            stride = work.stride or target.stride(fps)
            end = work.range.get("end") if work.range else None
            first = work.start
            marks.update(fps=fps, stride=stride, first=first, count=len(work.images), expected=-1)
            for index, frame in decode.decode_images(work.images, first, end, stride, offset=first):
                marks.setdefault("height", frame.shape[0])
                marks.setdefault("width", frame.shape[1])
                yield index, index / fps, frame
            return
        rng = decode.FrameRange(**work.range) if work.range else decode.FrameRange(
            0, block=decode.MAX_BLOCK)
        known = (work.size, work.identity) if work.size and work.identity else None
        yield from decode.decode_range(work.url, rng, work.stride or target.stride, marks, known=known, planes=True)
    except retries.StorageError:
        raise  # not the source's fault: the unit is tried again when S3 comes back (graph.process_unit)
    except Exception as exc:  # noqa: BLE001 - the source's failure, reported per source
        marks["error"] = reason(exc)


def _segment(decoded: Iterator[tuple[int, float, np.ndarray]], target: Target, submit: Submit,
             write: Callable[[list, np.ndarray], None]) -> None:
    """Frames in chunks of ``target.batch`` (one frame size each) to the model, each chunk written
    when its masks are back, with up to IN_FLIGHT chunks at the model while the next is decoded."""
    pending: collections.deque = collections.deque()
    chunk: list[tuple[int, float, np.ndarray]] = []

    def send() -> None:
        pending.append((list(chunk), submit(render.model_input([f for _, _, f in chunk], target.size))))
        chunk.clear()
        while len(pending) > IN_FLIGHT:
            done, collect = pending.popleft()
            write(done, collect())

    for item in decoded:
        if chunk and (len(chunk) >= target.batch or item[2].shape != chunk[0][2].shape):
            send()
        chunk.append(item)
    if chunk:
        send()
    while pending:
        done, collect = pending.popleft()
        write(done, collect())


class _Sink:
    """Where a unit's outputs go: per-frame files (uploaded on a few threads for object storage),
    the overlay video (a whole source: overlay.mp4 itself, encoded into a local temp file and published
    when complete; a range: its H.264 piece, joined later by ``assemble_video``)."""

    def __init__(self, work: Work, target: Target, marks: dict):
        self.work, self.target, self.marks = work, target, marks
        self.base = storage.join(target.output, work.video)
        self.uploads = _Uploads(storage.is_remote(target.output))
        self.video: video_out.OverlayStream | None = None
        self.temp = ""
        self.piece: io.BytesIO | None = None
        self.first = self.last = None
        self.previous: np.ndarray | None = None  # the last kept frame's mask (model size), for flicker
        self.size: tuple | None = None

    def _open_video(self) -> video_out.OverlayStream:
        if self.work.whole:  # the source's own rate: its fps over the stride
            fd, self.temp = tempfile.mkstemp(prefix="roadseg-", suffix=".mp4")
            os.close(fd)
            fps = float(self.marks.get("fps") or 0.0) / max(1, int(self.marks.get("stride") or 1))
            return video_out.OverlayStream(self.temp, fps, self.target.video, faststart=True)
        self.piece = io.BytesIO()
        return video_out.OverlayStream(self.piece, video_out.PIECE_RATE)

    def write(self, chunk: list[tuple[int, float, np.ndarray]], masks: np.ndarray, confidence: np.ndarray,
              stats) -> None:
        t = self.target
        for (index, time, frame), small, (mean_top, uncertain) in zip(chunk, masks, confidence):
            rendered = render.Rendered(frame, small, t.alpha, t.quality)
            files = render.encode_files(rendered, t.kinds)
            overlay = rendered.overlay if "overlay" in files else None
            for kind, data in files.items():
                self.uploads.put(storage.join(self.base, render.frame_name(index, kind)), data)
            if t.video and overlay is not None:
                self.video = self.video or self._open_video()
                self.video.add(overlay, files.get("overlay"))
                self.first = index if self.first is None else self.first
                self.last = index
            flicker = None
            if self.previous is not None and self.previous.shape == small.shape and self.size == frame.shape[:2]:
                flicker = render.changed_fraction(self.previous, small, frame.shape[0], frame.shape[1])
            self.previous, self.size = small, frame.shape[:2]
            stats.add(index, time, render.upsampled_fractions(small, frame.shape[0], frame.shape[1]),
                      {k: render.frame_name(index, k) for k in render.STATS_PATHS if k in files},
                      (float(mean_top), float(uncertain), flicker), self.image_url(index))
        self.uploads.check()

    def image_url(self, index: int) -> str | None:
        """An image folder's frame: its own file (a range carries only its own images)."""
        if not self.work.images:
            return None
        return storage.redact(self.work.images[index - self.work.start])

    def finish(self, ok: bool) -> None:
        """Wait for the uploads; publish the video when the unit is complete."""
        self.uploads.wait()
        if self.video is None:
            return
        frames = self.video.close()
        self.video = None
        if not ok:
            return
        if self.work.whole:
            url = storage.join(self.base, "overlay.mp4")
            _publish(lambda: storage.upload(self.temp, url), url)
        else:
            name = video_out.Piece(self.first, self.last, frames).name
            url = storage.join(State(self.target.output).pieces_url(self.work.video), name)
            _publish(lambda: storage.write_bytes(url, self.piece.getvalue()), url)

    def close(self) -> None:
        if self.video is not None:
            try:
                self.video.close()
            except Exception:  # noqa: BLE001 - a failed unit's video is dropped anyway
                log.debug("closing the video of a failed unit", exc_info=True)
        if self.temp:
            with contextlib.suppress(OSError):
                os.unlink(self.temp)
        self.uploads.shutdown()


def _publish(write: Callable[[], None], url: str) -> None:
    """Write one output; a failure is an OutputError naming it (object storage's own StorageError,
    which names the URL and says whether the outage may pass, is left as it is)."""
    try:
        write()
    except retries.StorageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise OutputError(url, exc) from None


class _Uploads:
    """``put(url, data)``: inline for local files, on WRITE_THREADS threads for object storage
    (latency-bound PUTs). ``check`` raises the first failure so far, ``wait`` waits for all; a
    failure is an ``OutputError`` naming the file."""

    def __init__(self, threaded: bool):
        self.pool = ThreadPoolExecutor(WRITE_THREADS) if threaded else None
        self.pending: list = []

    def put(self, url: str, data: bytes) -> None:
        if self.pool is None:
            _publish(lambda: storage.write_bytes(url, data), url)
        else:
            self.pending.append(self.pool.submit(_publish, lambda: storage.write_bytes(url, data), url))

    def check(self) -> None:
        done = [f for f in self.pending if f.done()]
        self.pending = [f for f in self.pending if not f.done()]
        for f in done:
            f.result()

    def wait(self) -> None:
        pending, self.pending = self.pending, []
        for f in pending:
            f.result()

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def reason(exc: BaseException) -> str:
    """One line for a report: a decode problem as it is, anything else as its type and message,
    without credentials, colour codes or a traceback."""
    text = str(exc) if isinstance(exc, (decode.DecodeError, OutputError)) else f"{type(exc).__name__}: {exc}"
    return storage.redact(_one_line(text))


def _one_line(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[0] if lines else "unknown error")[:500]

