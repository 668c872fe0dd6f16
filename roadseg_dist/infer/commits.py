"""Finished sources, committed in batches: one manifest and one frames part per batch (``state.commit``).

The driver adds each source the moment all of it is written; a batch is written when it holds
MAX_SOURCES sources or MAX_ROWS stats rows, when ``max_seconds()`` have passed since its first
source, and at the end. So the requests to storage per source are a fraction of one, the driver
holds at most one batch of rows, and a crash loses at most that many seconds of finished sources
(they are redone).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

from roadseg_dist import retries
from roadseg_dist.infer import stats as stats_mod
from roadseg_dist.infer.process import OutputError
from roadseg_dist.infer.state import State
from roadseg_dist.retries import OUTAGE_PAUSES_S

MAX_SOURCES = 2000
MAX_ROWS = 250_000   # ~40 MB of rows in the driver


def max_seconds() -> float:
    """Seconds between commits at most: ROADSEG_COMMIT_SECONDS, else 30 (what a crash can cost)."""
    value = os.environ.get("ROADSEG_COMMIT_SECONDS", "")
    try:
        seconds = float(value) if value else 30.0
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"ROADSEG_COMMIT_SECONDS={value!r} is not a number of seconds")
    return seconds


class Commits:
    def __init__(self, state: State, with_stats: bool, clock: Callable[[], float] = time.monotonic):
        self.state, self.with_stats, self.clock = state, with_stats, clock
        self.every_s = max_seconds()
        self.sources: list[dict[str, Any]] = []
        self.tables: list = []
        self.rows = 0
        self.since: float | None = None
        self.written = 0  # batches
        self.frames = self.committed = 0  # frames and sources committed by this run
        self.retry_at = 0.0  # after a failed commit in an S3 outage, not before this

    def add(self, source: dict[str, Any], table) -> None:
        """A finished source (id, identity, frames, ...) and its stats rows."""
        self.sources.append(source)
        if self.with_stats:
            self.tables.append(table)
            self.rows += len(table)
        self.since = self.clock() if self.since is None else self.since
        self.tick()

    def tick(self) -> None:
        """Write the batch if it is full or old enough (the driver also calls this while it waits)."""
        if self.sources and self.clock() >= self.retry_at and (
                len(self.sources) >= MAX_SOURCES or self.rows >= MAX_ROWS or self.clock() - self.since >= self.every_s):
            self.flush(final=False)

    def flush(self, final: bool = True) -> None:
        """Write the batch. In an S3 outage: while the run goes on, keep it for a later tick; at the
        end, pause and try again (``retries.through_outages``). A full disk is an ``OutputError``."""
        if not self.sources:
            return
        import pyarrow as pa

        table = pa.concat_tables(self.tables) if self.with_stats else None
        if table is not None and not len(table):
            table = stats_mod.empty()
        try:
            retries.through_outages(self.state.commit, self.sources, table, pauses=OUTAGE_PAUSES_S if final else ())
        except retries.StorageError as exc:
            if final or not exc.transient:
                raise
            self.retry_at = self.clock() + OUTAGE_PAUSES_S[0]
            return
        except OSError as exc:
            raise OutputError(self.state.root, exc) from None
        self.written += 1
        self.frames += sum(int(s.get("frames", 0)) for s in self.sources)
        self.committed += len(self.sources)
        self.sources, self.tables, self.rows, self.since = [], [], 0, None
