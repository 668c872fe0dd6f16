"""What the results page shows about a run, read from OUTPUT: report.json, frames.parquet and the
checkpoint's meta.json (report.json names the checkpoint; its meta holds arch, epoch and val mIoU)."""
from __future__ import annotations

import dataclasses
import io
import json
from typing import Any, NamedTuple

import numpy as np

from roadseg_dist import labels, storage

REPORT, STATS = "report.json", "frames.parquet"


class ResultsError(ValueError):
    """OUTPUT holds no finished inference run; the message says what is missing and what to do."""


class SourceStats(NamedTuple):
    """One finished source's rows of frames.parquet, in frame order."""
    id: str
    frames: np.ndarray      # (n,) source frame indices
    timestamps: np.ndarray  # (n,) seconds
    fractions: np.ndarray   # (n, 19) class fractions, labels.CLASSES order


@dataclasses.dataclass
class RunView:
    output: str                       # normalised OUTPUT URL
    report: dict[str, Any]            # report.json as written by `roadseg infer`
    model: dict[str, Any]             # arch, epoch, val_miou, ... or {"error": why it is unknown}
    stats: list[SourceStats] | None   # frames.parquet per source, by id; None when it was not written

    @property
    def outputs(self) -> set[str]:
        return set((self.report.get("settings") or {}).get("outputs") or ())



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


def read_stats(output: str) -> list[SourceStats] | None:
    """frames.parquet split by source (ids in name order), or None when OUTPUT has none."""
    import pyarrow.parquet as pq

    url = storage.join(output, STATS)
    if not storage.exists(url):
        return None
    table = pq.read_table(io.BytesIO(storage.read_bytes(url)))
    table = table.sort_by([("video", "ascending"), ("frame", "ascending")])
    videos = table.column("video").to_numpy(zero_copy_only=False)
    frames = table.column("frame").to_numpy()
    timestamps = table.column("timestamp").to_numpy()
    fractions = np.column_stack([table.column(c).to_numpy() for c in labels.CLASSES]) if len(table) else (
        np.zeros((0, labels.NUM_CLASSES), np.float32))
    ids, starts = np.unique(videos, return_index=True)
    ends = list(starts[1:]) + [len(videos)]
    return [SourceStats(str(sid), frames[a:b], timestamps[a:b], fractions[a:b])
            for sid, a, b in zip(ids, starts, ends)]


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
    return RunView(output, report, model_summary(report.get("checkpoint")), read_stats(output))
