"""The run directory ``STORAGE/RUN/``: metrics.jsonl, curves.png and the checkpoint folders.

Ray Train writes the per-epoch checkpoints (``checkpoint_epochNNNN``) and keeps the last K; the
training loop adds a copy of the best one by val mIoU (``checkpoint_best-epochNNNN``), which Ray does
not track and therefore never deletes. Every file here is written whole (``storage.write_bytes``).
"""
from __future__ import annotations

import json
import re

from roadseg_dist import storage

METRICS = "metrics.jsonl"
CURVES = "curves.png"
BEST_PREFIX = "checkpoint_best-epoch"
_CKPT = re.compile(r"^checkpoint_")


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint_epoch{epoch:04d}"


def best_name(epoch: int) -> str:
    return f"{BEST_PREFIX}{epoch:04d}"


def read_metrics(run_dir: str) -> list[dict]:
    url = storage.join(run_dir, METRICS)
    if not storage.exists(url):
        return []
    return [json.loads(line) for line in storage.read_text(url).splitlines() if line.strip()]


def append_metrics(run_dir: str, record: dict) -> list[dict]:
    """Add one epoch's line; lines of this epoch or later (from an attempt that died) are replaced."""
    records = [r for r in read_metrics(run_dir) if r["epoch"] < record["epoch"]] + [record]
    storage.write_text(storage.join(run_dir, METRICS),
                       "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return records


def checkpoint_dirs(run_dir: str) -> list[str]:
    """URLs of the checkpoint folders of a run that hold a finished checkpoint (meta.json)."""
    if not storage.exists(run_dir):
        return []
    found = set()
    for url in storage.list_files(run_dir, suffixes=("meta.json",)):
        folder = url.rsplit("/", 1)[0]
        if _CKPT.match(folder.rsplit("/", 1)[-1]):
            found.add(folder)
    return sorted(found)


def best_checkpoint(run_dir: str) -> tuple[str, dict] | None:
    """(url, meta) of the run's best checkpoint, by the model zoo's rule (``resolve_checkpoint``)."""
    from roadseg_dist.models.checkpoint import CheckpointError, read_meta, resolve_checkpoint

    try:
        url = resolve_checkpoint(run_dir, pick="best")
    except CheckpointError:
        return None
    return url, read_meta(url)


def run_exists(run_dir: str) -> bool:
    return bool(checkpoint_dirs(run_dir)) or storage.exists(storage.join(run_dir, METRICS))
