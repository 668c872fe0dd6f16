"""The run directory ``STORAGE/RUN/``: metrics.jsonl, curves.png, status.json and the checkpoint folders.

Ray Train writes the per-epoch checkpoints (``checkpoint_epochNNNN``) and keeps the last K; the
training loop adds a copy of the best one by val mIoU (``checkpoint_best-epochNNNN``), which Ray does
not track and therefore never deletes. Every file here is written whole (``storage.write_bytes``).

``status.json`` says how the run stands: rank 0 writes ``running`` when it starts and after each
epoch, ``finished`` after the last one; the driver writes ``failed`` (with the error) when ``fit()``
raises. ``list_runs(STORAGE)`` reads these files back for ``roadseg runs``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re

from roadseg_dist import storage

METRICS = "metrics.jsonl"
CURVES = "curves.png"
STATUS = "status.json"
STATUSES = ("running", "finished", "failed")
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


def keep_best(run_dir: str, local_checkpoint: str, epoch: int) -> None:
    """Copy a new best checkpoint into the run dir, then drop the previous best copy.

    meta.json is uploaded last, so a folder without it is an unfinished copy that readers skip.
    """
    target = storage.join(run_dir, best_name(epoch))
    names = sorted(os.listdir(local_checkpoint), key=lambda n: n == "meta.json")
    for name in names:
        storage.upload(os.path.join(local_checkpoint, name), storage.join(target, name))
    for url in checkpoint_dirs(run_dir):
        folder = url.rsplit("/", 1)[-1]
        if folder.startswith(BEST_PREFIX) and folder != best_name(epoch):
            storage.remove(url, recursive=True)


def run_exists(run_dir: str) -> bool:
    return bool(checkpoint_dirs(run_dir)) or storage.exists(storage.join(run_dir, METRICS))


def write_status(run_dir: str, status: str, **fields) -> None:
    """status.json: ``status`` (running/finished/failed), ``updated`` (UTC) and any extra fields."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    record = {"status": status, "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              **fields}
    storage.write_text(storage.join(run_dir, STATUS), json.dumps(record, sort_keys=True) + "\n")


def read_status(run_dir: str) -> dict:
    """status.json of a run; ``{"status": "unknown"}`` for runs from before it existed."""
    url = storage.join(run_dir, STATUS)
    if not storage.exists(url):
        return {"status": "unknown"}
    return json.loads(storage.read_text(url))


def list_runs(storage_url: str) -> list[dict]:
    """One row per run under STORAGE: name, status, epochs done/planned, model, best val mIoU and epoch.

    A run is a folder holding metrics.jsonl, status.json or a finished checkpoint. Rows by name.
    """
    storage_url = storage.normalize(storage_url)
    names = set()
    for url in storage.list_files(storage_url, suffixes=(METRICS, STATUS, "meta.json")):
        rel = url[len(storage_url) + 1:].split("/")
        if len(rel) == 2 or (len(rel) == 3 and _CKPT.match(rel[1])):
            names.add(rel[0])
    return [run_summary(storage.join(storage_url, name)) for name in sorted(names)]


def run_summary(run_dir: str) -> dict:
    status = read_status(run_dir)
    records = read_metrics(run_dir)
    best = best_checkpoint(run_dir)
    meta = best[1] if best else {}
    config = meta.get("train_config") or {}
    return {
        "name": run_dir.rstrip("/").rsplit("/", 1)[-1],
        "status": status["status"],
        "epochs": max((r["epoch"] for r in records), default=0),
        "planned_epochs": status.get("epochs", config.get("epochs")),
        "model": status.get("model") or meta.get("arch"),
        "best_val_miou": (meta.get("metrics") or {}).get("val_miou"),
        "best_epoch": meta.get("epoch"),
        "updated": status.get("updated"),
        "error": status.get("error"),
    }
