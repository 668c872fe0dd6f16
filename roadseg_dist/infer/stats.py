"""The per-frame statistics of a run: one row per segmented frame, the schema in one place.

    video       the source id (its folder under OUTPUT)
    frame       the source frame index
    timestamp   seconds, the frame's presentation time
    road ... bicycle   one float32 per class, snake_case (``traffic_light``): the share of the frame
    confidence  the mean over the frame's pixels of the model's top-class probability
    uncertain   the share of the frame's pixels whose top-class probability is below the threshold
    flicker     the share of the frame's pixels whose class changed since the previous kept frame of
                the same source (null for a source's first frame, a range's first, or a size change)
    mask, overlay      the frame's files, relative to OUTPUT (null when not written)
    source      the input file (a video, or the frame's image), credentials redacted
    model       the id of the model that made the masks (``model_id``)

A unit of work builds its rows (``Rows``) and hands them to the driver as Arrow IPC bytes; the
driver writes the rows of many sources at once as one parquet part under ``OUTPUT/frames/``, which
pandas, pyarrow.dataset, DuckDB and polars read as one table (see ``state.py``).
"""
from __future__ import annotations

import re

import numpy as np

from roadseg_dist import labels
from roadseg_dist.render import STATS_PATHS


def column(name: str) -> str:
    """The snake_case column of a class: ``traffic light`` -> ``traffic_light``."""
    return re.sub(r"\W+", "_", name.strip()).lower()


CLASS_COLUMNS = tuple(column(c) for c in labels.CLASSES)
QUALITY_COLUMNS = ("confidence", "uncertain", "flicker")
PATH_KINDS = STATS_PATHS  # the kinds whose files' paths are columns (render.OUTPUTS)


def schema():
    import pyarrow as pa

    return pa.schema([("video", pa.string()), ("frame", pa.int64()), ("timestamp", pa.float64())]
                     + [(c, pa.float32()) for c in CLASS_COLUMNS + QUALITY_COLUMNS]
                     + [(k, pa.string()) for k in PATH_KINDS] + [("source", pa.string()), ("model", pa.string())])


def model_id(meta: dict, identity: dict) -> str:
    """A short, stable id of a checkpoint: its arch, epoch and the hash of its meta.json."""
    return f"{meta.get('arch', 'model')}@epoch{meta.get('epoch', 0)}:{identity.get('meta_sha1', '')[:12]}"


class Rows:
    """The stats rows of one unit of work, frame by frame."""

    def __init__(self, video: str, model: str, source: str = ""):
        self.video, self.model, self.source = video, model, source
        self.frames: list[int] = []
        self.times: list[float] = []
        self.values: list[np.ndarray] = []  # per frame: the class fractions, then QUALITY_COLUMNS
        self.paths: dict[str, list[str | None]] = {k: [] for k in (*PATH_KINDS, "source")}

    @property
    def count(self) -> int:
        return len(self.frames)

    def add(self, frame: int, time: float, fractions: np.ndarray, files: dict[str, str],
            quality: tuple[float, float, float | None] = (np.nan, np.nan, None), source: str | None = None) -> None:
        """One frame: its index, time, class fractions, files (kind -> path in its source folder),
        (confidence, uncertain, flicker) and, for a frame of an image folder, its own file."""
        self.frames.append(int(frame))
        self.times.append(float(time))
        flicker = np.nan if quality[2] is None else quality[2]
        self.values.append(np.concatenate([np.asarray(fractions, np.float32),
                                           np.asarray([quality[0], quality[1], flicker], np.float32)]))
        for kind in PATH_KINDS:
            self.paths[kind].append(f"{self.video}/{files[kind]}" if kind in files else None)
        self.paths["source"].append(source or self.source)

    def table(self):
        import pyarrow as pa

        n, width = self.count, len(CLASS_COLUMNS) + len(QUALITY_COLUMNS)
        mat = np.stack(self.values) if n else np.zeros((0, width), np.float32)
        cols = [pa.array([self.video] * n, pa.string()), pa.array(self.frames, pa.int64()),
                pa.array(self.times, pa.float64())]
        cols += [pa.array(mat[:, c], pa.float32(), from_pandas=True) for c in range(width)]  # NaN flicker -> null
        cols += [pa.array(self.paths[k], pa.string()) for k in (*PATH_KINDS, "source")]
        cols += [pa.array([self.model] * n, pa.string())]
        return pa.Table.from_arrays(cols, schema=schema())

    def to_bytes(self) -> bytes:
        return to_bytes(self.table())


def to_bytes(table) -> bytes:
    """A table as Arrow IPC stream bytes (what a unit of work sends the driver)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_bytes(data: bytes):
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def empty():
    return schema().empty_table()
