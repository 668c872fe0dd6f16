"""The rows that flow through the Ray Data graph, defined once.

A decode task turns one frame range into *frame rows*, one per decoded frame, then one *end row*
(``index == END``) carrying what the range found: the index of its first frame, how many frames it
decoded and how many the container index promised, and any error. The model and writer stages pass
end rows through untouched (``is_frame``); the driver's ledger needs them to know when a range is
complete.

Rows travel in column batches (``frame_batch``, ``end_batch``). The pixels are one tensor column,
``frame``: a batch's frames of one size are one (N, H, W, 3) uint8 array, which Ray Data stores as an
Arrow tensor without a copy per frame (frames of other sizes in one batch come back as an object
array of (H, W, 3) arrays). An end row carries a placeholder frame of its range's size, so it does
not split the range's blocks into mixed shapes.

Beside it, decode tasks add ``input``: each frame already resized to the model's input size (RGB
uint8, one size for all rows). Resizing 720p to a model's size costs 1-6 CPU-ms a frame (INTER_AREA);
done in the many decode tasks, it leaves a model actor, whose one CPU must keep a GPU fed, only the
normalisation, the model and Ray's passing of the rows (720p: 9.5 -> 6.4 CPU-ms a frame in all).
"""
from __future__ import annotations

from typing import Any

import numpy as np

END = -1
# column -> value of an end row (frame rows leave the range fields at these values too)
DEFAULTS: dict[str, Any] = {"video": "", "start": 0, "index": END, "stride": 1, "time": 0.0, "first": 0, "count": 0,
                            "expected": -1, "broken": "", "error": ""}
FRAME = "frame"  # the tensor column of BGR uint8 pixels, (H, W, 3) per row
NO_FRAME = (1, 1, 3)  # an end row's placeholder size when its range decoded no frame
INPUT = "input"  # the tensor column of model-sized RGB uint8 pixels, (h, w, 3) per row (decode tasks add it)
# what the writer stage hands back to the driver per row (the pixels stay behind)
RESULT_COLUMNS = ("video", "start", "index", "time", "fractions", "first", "count", "expected", "broken",
                  "error")


def _columns(n: int, values: dict[str, Any]) -> dict[str, np.ndarray]:
    """``n`` rows of the non-pixel columns: DEFAULTS overridden by ``values`` (a scalar or a sequence)."""
    out = {}
    for key, default in DEFAULTS.items():
        value = values.get(key, default)
        if isinstance(default, str):
            out[key] = np.array([value] * n if isinstance(value, str) else list(value), dtype=object)
        else:
            out[key] = np.full(n, value) if np.isscalar(value) else np.asarray(value)
    return out


def frame_batch(video: str, start: int, indices: list[int], times: list[float], frames: list[np.ndarray],
                stride: int = 1, inputs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Frame rows of one range (frames of one size) as a column batch; ``inputs``, the frames at the
    model's size (N, h, w, 3), become the ``input`` column."""
    batch = _columns(len(frames), {"video": video, "start": start, "index": np.asarray(indices, dtype=np.int64),
                                   "stride": stride, "time": np.asarray(times, dtype=np.float64)})
    batch[FRAME] = np.stack(frames)
    if inputs is not None:
        batch[INPUT] = inputs
    return batch


def end_batch(video: str, start: int, marks: dict, error: str = "", shape: tuple[int, ...] = NO_FRAME,
              input_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """The range's end row as a one-row batch; ``shape`` is its range's frame size (the placeholder's),
    ``input_size`` the model's (hw) when the frame rows carry an ``input`` column."""
    batch = _columns(1, {"video": video, "start": start, "first": int(marks.get("first", 0)),
                         "count": int(marks.get("count", 0)), "expected": int(marks.get("expected", -1)),
                         "broken": str(marks.get("broken", "")), "error": error})
    batch[FRAME] = np.zeros((1, *shape), dtype=np.uint8)
    if input_size is not None:
        batch[INPUT] = np.zeros((1, *input_size, 3), dtype=np.uint8)
    return batch


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
    """The BGR pixels of row ``i`` (a view, read-only when it comes from Ray's object store)."""
    return np.asarray(batch[FRAME][i])
