"""What the results page shows about a run, read from OUTPUT: report.json, the frames/ parts (or an
older run's frames.parquet) and the checkpoint's meta.json (report.json names the checkpoint; its
meta holds arch, epoch and val mIoU).

The stats are read a part at a time (``parts``, ``read_part``): a part holds the sources of one
commit of ``roadseg infer``, so memory stays one part's rows however large the archive.
"""
from __future__ import annotations

import dataclasses
import io
import json
import re
from typing import Any, NamedTuple

import numpy as np

from roadseg_dist import labels, storage

REPORT, STATS_DIR, LEGACY_STATS = "report.json", "frames", "frames.parquet"


class ResultsError(ValueError):
    """OUTPUT holds no finished inference run; the message says what is missing and what to do."""


class SourceStats(NamedTuple):
    """One finished source's stats rows, in frame order."""
    id: str
    frames: np.ndarray      # (n,) source frame indices
    timestamps: np.ndarray  # (n,) seconds
    fractions: np.ndarray   # (n, 19) class fractions, labels.CLASSES order
    confidence: np.ndarray | None = None  # (n,) mean top-class probability (NaN: unknown), None for old runs


@dataclasses.dataclass
class RunView:
    output: str                       # normalised OUTPUT URL
    report: dict[str, Any]            # report.json as written by `roadseg infer`
    model: dict[str, Any]             # arch, epoch, val_miou, ... or {"error": why it is unknown}
    parts: list[str] | None           # the stats files (URLs); None when the run wrote no stats

    @property
    def outputs(self) -> set[str]:
        return set((self.report.get("settings") or {}).get("outputs") or ())


def column(name: str) -> str:
    """The column of a class in the stats: snake_case (``traffic light`` -> ``traffic_light``)."""
    return re.sub(r"\W+", "_", name.strip()).lower()


def read_report(output: str) -> dict[str, Any]:
    url = storage.join(output, REPORT)
    try:
        report = json.loads(storage.read_text(url))
    except FileNotFoundError:
        raise ResultsError(f"{storage.redact(url)} does not exist: OUTPUT must be the output of a "
                           "finished `roadseg infer` run") from None
    except ValueError as exc:
        raise ResultsError(f"{storage.redact(url)} is not valid JSON ({exc}); re-run `roadseg infer`") from None
    if not isinstance(report, dict) or "sources" not in report:
        raise ResultsError(f"{storage.redact(url)} is not a `roadseg infer` report (no 'sources')")
    return report


def parts(output: str) -> list[str] | None:
    """The stats files of OUTPUT: the parquet parts under frames/, an older run's frames.parquet, or None."""
    folder = storage.join(output, STATS_DIR)
    if storage.exists(folder):
        found = storage.list_files(folder, suffixes=(".parquet",))
        if found:
            return found
    legacy = storage.join(output, LEGACY_STATS)
    return [legacy] if storage.exists(legacy) else None


def read_table(url: str, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(url)), columns=columns)


def part_ids(url: str) -> list[str]:
    """The sources of one part (only its video column is read)."""
    return sorted(set(read_table(url, ["video"]).column("video").to_pylist()))


def read_part(url: str) -> list[SourceStats]:
    """One stats file split by source (ids in name order, frames in order)."""
    table = read_table(url).sort_by([("video", "ascending"), ("frame", "ascending")])
    names = {column(n): n for n in table.schema.names}
    videos = table.column("video").to_numpy(zero_copy_only=False)
    frames = table.column("frame").to_numpy()
    timestamps = np.nan_to_num(table.column("timestamp").to_numpy().astype(np.float64))
    fractions = np.column_stack([table.column(names[column(c)]).to_numpy() for c in labels.CLASSES]) if len(table) \
        else np.zeros((0, labels.NUM_CLASSES), np.float32)
    confidence = (table.column("confidence").to_numpy(zero_copy_only=False).astype(np.float64)
                  if "confidence" in names else None)
    ids, starts = np.unique(videos, return_index=True)
    ends = list(starts[1:]) + [len(videos)]
    return [SourceStats(str(sid), frames[a:b], timestamps[a:b], fractions[a:b],
                        None if confidence is None else confidence[a:b]) for sid, a, b in zip(ids, starts, ends)]


def model_summary(checkpoint: str | None) -> dict[str, Any]:
    """Arch, epoch, val mIoU, parameters of the checkpoint a report names, or {"error": why not}."""
    if not checkpoint:
        return {"error": "report.json names no checkpoint"}
    from roadseg_dist.models.checkpoint import read_meta  # (imports torch: only when there is one)

    try:
        meta = read_meta(checkpoint)
    except (ValueError, OSError) as exc:  # CheckpointError, unreachable storage
        return {"error": f"checkpoint meta not readable: {storage.redact(str(exc))}"}
    metrics = meta.get("metrics") or {}
    return {"checkpoint": storage.redact(meta["checkpoint"]), "arch": meta.get("arch"),
            "arch_kwargs": meta.get("arch_kwargs") or {}, "epoch": meta.get("epoch"),
            "val_miou": metrics.get("val_miou"), "parameters": meta.get("parameters"),
            "input_size": meta.get("input_size")}


def load(output: str) -> RunView:
    output = storage.normalize(output)
    report = read_report(output)
    return RunView(output, report, model_summary(report.get("checkpoint")), parts(output))
