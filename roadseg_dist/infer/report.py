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
    """One rich progress line on the driver: videos done, frames done, frames/s."""

    def __init__(self, videos: int, frames_expected: int, enabled: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.enabled, self.videos = enabled, videos
        self.t0, self.frames = time.time(), 0
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("frames  {task.fields[rate]:.1f}/s"), TimeElapsedColumn(),
                                 disable=not enabled)
        self.task = self.progress.add_task(self._desc(0, 0), total=max(frames_expected, 1), rate=0.0)

    def _desc(self, done: int, failed: int) -> str:
        tail = f", {failed} failed" if failed else ""
        return f"videos {done}/{self.videos}{tail}"

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def advance(self, n: int = 1) -> None:
        self.frames += n
        task = self.progress.tasks[0]
        if task.total is not None and self.frames > task.total:  # metadata under-counted frames
            self.progress.update(self.task, total=self.frames)
        self.progress.update(self.task, advance=n)

    def update(self, videos_done: int, failed: int) -> None:
        rate = self.frames / max(time.time() - self.t0, 1e-6)
        self.progress.update(self.task, description=self._desc(videos_done, failed), rate=rate)
