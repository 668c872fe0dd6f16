"""The run directory ``STORAGE/RUN/``: metrics.jsonl, curves.png, status.json, and the listing of runs.

The checkpoint folders (``checkpoint_epochNNNN``, the best copy ``checkpoint_best-epochNNNN``) are
``train/checkpoints.py``'s. Every file here is written whole (``storage.write_bytes``).

``status.json`` says how the run stands, written by the driver only: ``running`` when ``fit()``
starts, again at every epoch and at least every ``HEARTBEAT_S`` seconds (``updated`` is the
heartbeat), then ``finished`` or ``failed`` (with the error). ``list_runs(STORAGE)`` reads the files
back for ``roadseg runs``: a ``running`` run whose heartbeat stopped is shown as ``interrupted``
(its driver is gone), every run says up to which epoch it can be resumed, and a file that cannot be
read is that run's problem, named, while the other runs are listed.
"""
from __future__ import annotations

import datetime as _dt
import json

from roadseg_dist import storage
from roadseg_dist.train.checkpoints import (  # noqa: F401 - the run's folders, known as run.* too
    BEST_PREFIX, best_name, checkpoint_dirs, checkpoint_name, keep_best)

METRICS = "metrics.jsonl"
CURVES = "curves.png"
STATUS = "status.json"
STATUSES = ("running", "finished", "failed")
HEARTBEAT_S = 30.0      # the driver rewrites status.json this often while fit() runs
STALE_HEARTBEATS = 6    # a "running" status older than this many heartbeats: the driver is gone


class RunFileError(ValueError):
    """A file of a run directory cannot be read; the message names it."""


def read_metrics(run_dir: str) -> list[dict]:
    """metrics.jsonl's records; RunFileError naming the file and line when one is not JSON."""
    url = storage.join(run_dir, METRICS)
    if not storage.exists(url):
        return []
    records = []
    for n, line in enumerate(storage.read_text(url).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise RunFileError(f"{storage.redact(url)} line {n} is not JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise RunFileError(f"{storage.redact(url)} line {n} is not an epoch record")
        records.append(record)
    return records


def append_metrics(run_dir: str, record: dict) -> list[dict]:
    """Add one epoch's line; lines of this epoch or later (from an attempt that died) are replaced."""
    records = [r for r in read_metrics(run_dir) if r["epoch"] < record["epoch"]] + [record]
    storage.write_text(storage.join(run_dir, METRICS),
                       "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return records


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


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def write_status(run_dir: str, status: str, **fields) -> None:
    """status.json: ``status`` (running/finished/failed), ``updated`` (UTC) and any extra fields."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    record = {"status": status, "updated": now().isoformat(timespec="seconds"), **fields}
    storage.write_text(storage.join(run_dir, STATUS), json.dumps(record, sort_keys=True) + "\n")


def read_status(run_dir: str) -> dict:
    """status.json of a run; ``{"status": "unknown"}`` for runs from before it existed."""
    url = storage.join(run_dir, STATUS)
    if not storage.exists(url):
        return {"status": "unknown"}
    try:
        status = json.loads(storage.read_text(url))
    except ValueError as exc:
        raise RunFileError(f"{storage.redact(url)} is not JSON ({exc})") from None
    if not isinstance(status, dict) or "status" not in status:
        raise RunFileError(f"{storage.redact(url)} has no 'status'")
    return status


def shown_status(status: dict, at: _dt.datetime | None = None) -> str:
    """``running`` becomes ``interrupted`` when the driver's heartbeat (``updated``) stopped."""
    beat = status.get("heartbeat_s")
    if status.get("status") != "running" or not beat or not status.get("updated"):
        return status.get("status", "unknown")
    try:
        age = ((at or now()) - _dt.datetime.fromisoformat(status["updated"])).total_seconds()
    except (TypeError, ValueError):
        return "running"
    return "interrupted" if age > STALE_HEARTBEATS * float(beat) else "running"


def list_runs(storage_url: str) -> list[dict]:
    """One row per run under STORAGE (``run_summary``), by name. A run is a folder holding
    metrics.jsonl, status.json or a finished checkpoint."""
    storage_url = storage.normalize(storage_url)
    names = set()
    for url in storage.list_files(storage_url, suffixes=(METRICS, STATUS, "meta.json")):
        rel = url[len(storage_url) + 1:].split("/")
        if len(rel) == 2 or (len(rel) == 3 and rel[1].startswith("checkpoint_")):
            names.add(rel[0])
    return [run_summary(storage.join(storage_url, name)) for name in sorted(names)]


def run_summary(run_dir: str) -> dict:
    """name, status (running/interrupted/finished/failed/unknown), epochs done and planned, the epoch
    it can be resumed from, model, best val mIoU and epoch, updated, error, and ``problem``: a file
    of this run that could not be read (named), or None."""
    row = {"name": run_dir.rstrip("/").rsplit("/", 1)[-1], "status": "unknown", "epochs": 0,
           "planned_epochs": None, "resumable_epoch": 0, "model": None, "best_val_miou": None,
           "best_epoch": None, "updated": None, "error": None, "problem": None}
    try:
        status = read_status(run_dir)
        row.update(status=shown_status(status), planned_epochs=status.get("epochs"), model=status.get("model"),
                   updated=status.get("updated"), error=status.get("error"))
        row["epochs"] = max((r["epoch"] for r in read_metrics(run_dir)), default=0)
        row["resumable_epoch"] = resumable_epoch(run_dir)
        best = best_checkpoint(run_dir)
    except (RunFileError, ValueError, OSError) as exc:
        row["problem"] = storage.redact(str(exc))
        row["epochs"] = row["epochs"] or None  # unknown, not zero
        return row
    meta = best[1] if best else {}
    config = meta.get("train_config") or {}
    row.update(planned_epochs=row["planned_epochs"] or config.get("epochs"), model=row["model"] or meta.get("arch"),
               best_val_miou=(meta.get("metrics") or {}).get("val_miou"), best_epoch=meta.get("epoch"))
    return row


def resumable_epoch(run_dir: str) -> int:
    """The newest epoch with a finished checkpoint folder (meta.json written), 0 if none."""
    from roadseg_dist.models.checkpoint import read_meta

    return max((int(read_meta(url).get("epoch") or 0) for url in checkpoint_dirs(run_dir)), default=0)


class Heartbeat:
    """The driver's status.json: ``running`` with the epoch reached and the resumable one, rewritten
    when they change and at least every ``HEARTBEAT_S``; then ``finished`` or ``failed``."""

    def __init__(self, run_dir: str, clock=None, **fields):
        import time

        self.run_dir, self.fields, self.clock = run_dir, {**fields, "heartbeat_s": HEARTBEAT_S}, clock or time.monotonic
        self.last = -float("inf")

    def beat(self, force: bool = False, **fields) -> None:
        """Rewrite the running status (a failed write is retried at the next beat)."""
        changed = any(self.fields.get(k) != v for k, v in fields.items())
        self.fields.update(fields)
        if not (force or changed or self.clock() - self.last >= HEARTBEAT_S):
            return
        try:
            write_status(self.run_dir, "running", **self.fields)
            self.last = self.clock()
        except OSError:
            pass  # storage busy or full: the next beat tries again; the run goes on

    def end(self, status: str, **fields) -> str | None:
        """The final status; returns why it could not be written (None when it was)."""
        final = {k: v for k, v in {**self.fields, **fields}.items() if k != "heartbeat_s"}
        try:
            write_status(self.run_dir, status, **final)
        except OSError as exc:
            return f"{storage.redact(storage.join(self.run_dir, STATUS))} could not be updated: {exc}"
        return None
