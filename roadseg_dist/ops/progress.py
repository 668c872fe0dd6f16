"""Progress of a long job, readable where jobs actually run.

Progress goes to stderr, never stdout: stdout holds a command's results, for scripts to parse. On a
terminal: a rich bar. Anywhere else (``roadseg submit``, RayJob logs, CI, ``2>&1 | tee``): a plain
line every ``interval`` seconds (``ROADSEG_PROGRESS_SECONDS``, default 15) and at each milestone
(start, every quarter, each new failure, the end)::

    shard train: 6/10 shards (60%), 1.3 shards/s, ETA 3s, 0 failed, 5s elapsed

``Progress`` decides what to print from (done, total, failures, clock) alone, so its timing is tested
without sleeping. Workers that run elsewhere (Ray Train ranks) report through a ``ProgressBoard``
actor that the driver reads.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

DEFAULT_INTERVAL_S = 15.0
MILESTONES = (0.25, 0.5, 0.75, 1.0)


def interval_s() -> float:
    try:
        return float(os.environ.get("ROADSEG_PROGRESS_SECONDS", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def plain_echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # flushed: a pipe would otherwise hold the line until the end


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """done/total of ``unit`` with rate and ETA; use as a context manager around the work."""

    def __init__(self, label: str, total: int | None = None, unit: str = "items", *,
                 echo: Callable[[str], None] | None = None, interval: float | None = None,
                 terminal: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.unit = label, total, unit
        self.done, self.failures, self.note = 0, 0, ""
        self.clock, self.start = clock, clock()
        self.interval = interval_s() if interval is None else interval
        self.terminal = (echo is None and stderr_is_terminal()) if terminal is None else terminal
        self.echo = echo or plain_echo
        self._last_line_at: float | None = None
        self._milestone = -1
        self._failures_shown = 0
        self._shown: tuple | None = None
        self._bar = self._task = None

    # -- the text -------------------------------------------------------------------------------
    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.done}/{self.total}" if self.total else f"{self.done}"]
        parts[0] += f" {self.unit}"
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{rate:.2f} {self.unit}/s" if rate < 10 else f"{rate:.0f} {self.unit}/s")
        if self.total and 0 < self.done < self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        parts.append(f"{self.failures} failed")
        parts.append(f"{_duration(elapsed)} elapsed")
        note = f" [{self.note}]" if self.note else ""
        return f"{self.label}: " + ", ".join(parts) + note

    def due(self) -> bool:
        """Whether a plain line is due now: the first update, a milestone, a new failure, or the interval."""
        if self._last_line_at is None or self.failures > self._failures_shown:
            return True
        if self.total:
            reached = max((i for i, m in enumerate(MILESTONES) if self.done >= m * self.total), default=-1)
            if reached > self._milestone:
                return True
        return self.clock() - self._last_line_at >= self.interval

    # -- updates ----------------------------------------------------------------------------------
    def update(self, done: int | None = None, *, advance: int = 0, total: int | None = None,
               failures: int | None = None, note: str | None = None) -> None:
        if total is not None:
            self.total = total
        if done is not None:
            self.done = done
        self.done += advance
        if failures is not None:
            self.failures = failures
        if note is not None:
            self.note = note
        self._show()

    def tick(self) -> None:
        """Nothing new, but time passed: print the line if the interval is up (heartbeat)."""
        self._show()

    def log(self, text: str) -> None:
        """A line of its own (an epoch summary), above the bar on a terminal."""
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            self.echo(text)

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, total=self.total,
                             description=f"{self.label}" + (f" [{self.note}]" if self.note else ""))
            return
        if not self.due():
            return
        self.echo(self.line())
        self._shown = (self.done, self.total, self.failures)
        self._last_line_at = self.clock()
        self._failures_shown = self.failures
        if self.total:
            self._milestone = max((i for i, m in enumerate(MILESTONES) if self.done >= m * self.total), default=-1)

    # -- context ----------------------------------------------------------------------------------
    def __enter__(self) -> "Progress":
        if self.terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total)
        else:
            self._show()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
        if exc[0] is None and not self.terminal and self._shown != (self.done, self.total, self.failures):
            self._last_line_at = None  # the final line, unless the last one already said it all
            self._show()


class ProgressBoard:
    """Where workers running elsewhere post how far they are; the driver reads ``snapshot()``.

    Made a zero-CPU Ray actor by ``remote_board``, so it never competes with the job for CPUs.
    """

    def __init__(self):
        self.posts: dict[str, dict] = {}
        self.version = 0

    def post(self, who: str, **fields) -> None:
        self.posts[str(who)] = dict(fields, at=time.time())
        self.version += 1

    def snapshot(self) -> dict:
        return {"version": self.version, "posts": dict(self.posts)}


def remote_board():
    import ray

    from roadseg_dist.ops.cluster import on_this_node

    return ray.remote(num_cpus=0, max_restarts=0)(ProgressBoard).options(**on_this_node()).remote()


class Poster:
    """A worker's side of a board: ``post(**fields)`` at most every ``every_s`` (or when forced);
    fire-and-forget, so a batch never waits for the driver. Without a board it does nothing."""

    def __init__(self, board, who: str, every_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.board, self.who, self.every_s, self.clock = board, str(who), every_s, clock
        self.last = -float("inf")

    def __call__(self, force: bool = False, **fields) -> None:
        if self.board is None or (not force and self.clock() - self.last < self.every_s):
            return
        self.last = self.clock()
        self.board.post.remote(self.who, **fields)
