"""The rows that flow through the Ray Data graph, defined once.

A decode task turns one frame range into a *frame row* per decoded frame (the pixels as bytes),
then one *end row* (``index == END``) carrying what the range found: the index of its first frame,
how many frames it decoded and how many the container index promised, and any error. The model
and writer stages pass end rows through untouched (``is_frame``); the driver's ledger needs them to
know when a range is complete.
"""
from __future__ import annotations

from typing import Any

import numpy as np

END = -1
# column -> value of an end row (frame rows leave the range fields at these values too)
DEFAULTS: dict[str, Any] = {"video": "", "start": 0, "index": END, "stride": 1, "time": 0.0, "height": 0,
                            "width": 0, "frame": b"", "first": 0, "count": 0, "expected": -1, "broken": "",
                            "error": ""}
# what the writer stage hands back to the driver per row (the pixels stay behind)
RESULT_COLUMNS = ("video", "start", "index", "time", "fractions", "first", "count", "expected", "broken",
                  "error")


def frame_row(video: str, start: int, index: int, time: float, frame: np.ndarray, stride: int = 1) -> dict[str, Any]:
    return {**DEFAULTS, "video": video, "start": start, "index": index, "stride": stride, "time": time,
            "height": frame.shape[0], "width": frame.shape[1], "frame": frame.tobytes()}


def end_row(video: str, start: int, marks: dict, error: str = "") -> dict[str, Any]:
    return {**DEFAULTS, "video": video, "start": start, "first": int(marks.get("first", 0)),
            "count": int(marks.get("count", 0)), "expected": int(marks.get("expected", -1)),
            "broken": str(marks.get("broken", "")), "error": error}


def is_frame(batch: dict[str, np.ndarray]) -> np.ndarray:
    """Boolean mask of the frame rows of a batch."""
    return np.asarray(batch["index"]) != END


def runs(batch: dict[str, np.ndarray]) -> list[list[int]]:
    """The batch's frame rows grouped into runs of consecutive output frames of one source (row
    order; ``index`` steps by ``stride``): each run can be one H.264 piece of the overlay video."""
    out: list[list[int]] = []
    for i in np.flatnonzero(is_frame(batch)):
        last = out[-1][-1] if out else None
        if (last is not None and batch["video"][last] == batch["video"][i]
                and int(batch["index"][i]) == int(batch["index"][last]) + int(batch["stride"][i])):
            out[-1].append(int(i))
        else:
            out.append([int(i)])
    return out


def frame_of(batch: dict[str, np.ndarray], i: int) -> np.ndarray:
    """The BGR pixels of row ``i`` (a read-only view of the row's bytes)."""
    return np.frombuffer(batch["frame"][i], dtype=np.uint8).reshape(int(batch["height"][i]),
                                                                     int(batch["width"][i]), 3)
