"""What the results page shows about a run, read from OUTPUT: report.json, frames.parquet and the
checkpoint's meta.json (report.json names the checkpoint; its meta holds arch, epoch and val mIoU)."""
from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import pandas as pd

from roadseg_dist import storage

REPORT, STATS = "report.json", "frames.parquet"


class ResultsError(ValueError):
    """OUTPUT holds no finished inference run; the message says what is missing and what to do."""


@dataclasses.dataclass
class RunView:
    output: str                       # normalised OUTPUT URL
    report: dict[str, Any]            # report.json as written by `roadseg infer`
    model: dict[str, Any]             # arch, epoch, val_miou, ... or {"error": why it is unknown}
    stats: pd.DataFrame | None        # frames.parquet sorted by (video, frame); None when not written

    @property
    def outputs(self) -> set[str]:
        return set((self.report.get("settings") or {}).get("outputs") or ())

    def sources(self) -> list[str]:
        """Ids of the finished sources (those with rows in frames.parquet), in name order."""
        return [] if self.stats is None else sorted(self.stats["video"].unique())


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


def read_stats(output: str) -> pd.DataFrame | None:
    import pyarrow.parquet as pq

    url = storage.join(output, STATS)
    if not storage.exists(url):
        return None
    table = pq.read_table(io.BytesIO(storage.read_bytes(url)))
    return table.to_pandas().sort_values(["video", "frame"], kind="stable").reset_index(drop=True)


def model_summary(checkpoint: str | None) -> dict[str, Any]:
    """Arch, epoch, val mIoU, parameters of the checkpoint a report names, or {"error": why not}."""
    from roadseg_dist.models.checkpoint import read_meta

    if not checkpoint:
        return {"error": "report.json names no checkpoint"}
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
