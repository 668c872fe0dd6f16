"""The run's JSON report and the driver's progress line."""
from __future__ import annotations

import json
import time
from typing import Any

from roadseg_dist import __version__, settings as settings_mod, storage


def build(s, *, sources: int, skipped: int, done: list[str], failures: list[dict[str, str]], frames: int,
          seconds: float, frames_total: int) -> dict[str, Any]:
    """What a person or a script wants to know after a run; nothing secret (URLs are redacted)."""
    config = {k: (storage.redact(v) if isinstance(v, str) else v)
              for k, v in settings_mod.to_dict(s).items()}
    return {
        "roadseg_version": __version__,
        "input": storage.redact(s.input), "output": storage.redact(s.output),
        "checkpoint": storage.redact(s.checkpoint), "settings": config,
        "sources": sources,
        "videos_done": len(done) + skipped,   # complete now, this run or an earlier one
        "videos_done_this_run": len(done),
        "videos_skipped": skipped,            # already complete before this run: nothing rewritten
        "videos_failed": len(failures),
        "failures": sorted(failures, key=lambda f: f["id"]),
        "frames_this_run": frames,
        "frames_total": frames_total,
        "seconds": round(seconds, 3),
        "frames_per_second": round(frames / seconds, 3) if seconds > 0 else 0.0,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write(output: str, report: dict[str, Any]) -> None:
    storage.write_text(storage.join(output, "report.json"), json.dumps(report, indent=1) + "\n")


class ProgressBar:
    """The driver's progress, behind one call (``set``): a rich bar on a terminal; otherwise (a log, a
    job's output) a plain line every ``every_s`` seconds and at milestones (a video done or failed)."""

    def __init__(self, videos: int, frames_expected: int, enabled: bool = True, every_s: float = 15.0,
                 plain: bool | None = None, echo=print):
        import sys

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.enabled, self.videos, self.total = enabled, videos, max(frames_expected, 1)
        self.plain = (not sys.stdout.isatty()) if plain is None else plain
        self.every_s, self.echo = every_s, echo
        self.t0, self.frames, self.last_line, self.milestone = time.time(), 0, 0.0, (0, 0)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("frames  {task.fields[rate]:.1f}/s"), TimeElapsedColumn(),
                                 disable=not enabled or self.plain)
        self.task = self.progress.add_task(self._desc(0, 0), total=self.total, rate=0.0)

    def _desc(self, done: int, failed: int) -> str:
        tail = f", {failed} failed" if failed else ""
        return f"videos {done}/{self.videos}{tail}"

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        if self.enabled and self.plain:
            self.echo(self.line(*self.milestone))

    def line(self, videos_done: int, failed: int) -> str:
        elapsed = max(time.time() - self.t0, 1e-6)
        rate = self.frames / elapsed
        left = max(self.total - self.frames, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 and left else "-"
        return (f"infer: frames {self.frames}/{self.total}  videos {videos_done}/{self.videos}  "
                f"failed {failed}  {rate:.1f} frames/s  elapsed {elapsed:.0f}s  eta {eta}")

    def set(self, frames: int, videos_done: int, failed: int) -> None:
        self.frames = frames
        if self.total < frames:  # metadata under-counted frames
            self.total = frames
        if self.plain:
            now = time.time()
            if self.enabled and (now - self.last_line >= self.every_s or (videos_done, failed) != self.milestone):
                self.echo(self.line(videos_done, failed))
                self.last_line = now
            self.milestone = (videos_done, failed)
            return
        rate = self.frames / max(time.time() - self.t0, 1e-6)
        self.progress.update(self.task, total=self.total, completed=frames,
                             description=self._desc(videos_done, failed), rate=rate)
