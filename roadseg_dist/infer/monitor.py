"""What the driver shows while units run: progress in frames, and the watchdog's heartbeat.

Units report when they end, which for a whole source can be minutes; the model actors count every
frame they answer. So a thread asks the actors every POLL_S seconds: frames that moved beat the
watchdog and update the progress line. The total is known for split sources (their plans) and
estimated for whole ones from the bytes: frames per byte of the sources finished so far.
"""
from __future__ import annotations

import threading

from roadseg_dist.ops import progress

POLL_S = 1.0


class Monitor:
    def __init__(self, job, actors: list, dog, pending: list, show: bool):
        self.job, self.actors, self.dog, self.sources = job, actors, dog, len(pending)
        quiet = {} if show else {"echo": lambda line: None, "terminal": False}
        self.bar = progress.Progress("infer", None, "frames", **quiet)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="infer-monitor")
        self.model_frames = 0
        self.base: dict[int, tuple] = {}  # actor -> its figures when first seen (_start)
        self.whole_bytes = sum(src.size for src in pending if src.id not in job.plans)

    def total(self) -> int | None:
        """Frames expected: the plans' counts, plus the whole sources' bytes at the rate seen so far."""
        job = self.job
        known = sum(max(p.get("frame_count", 0), 1) // max(1, p.get("stride", 1)) for p in job.plans.values())
        if not self.whole_bytes:
            return known or None
        if not job.whole_bytes_done:
            return None
        return known + int(job.whole_frames_done / job.whole_bytes_done * self.whole_bytes)

    def actor_stats(self) -> list[dict]:
        import ray

        return ray.get([a.stats.remote() for a in self.actors], timeout=10)

    def actors_summary(self) -> dict:
        """What crossed into and out of the model actors per frame, and their CPU beside the model's."""
        try:
            stats = self.actor_stats()
        except Exception:  # noqa: BLE001 - a summary, not the run's result
            return {}
        frames = max(1, sum(s["frames"] for s in stats))
        base = [self.base.get(i, self._start(s)) for i, s in enumerate(stats)]
        outside = sum(s["cpu_s"] - s["model_cpu_s"] - b[0] for s, b in zip(stats, base))
        model = sum(s["model_cpu_s"] - b[2] for s, b in zip(stats, base))
        counted = max(1, sum(s["frames"] - b[1] for s, b in zip(stats, base)))
        return {"actors": len(stats), "frames": sum(s["frames"] for s in stats),
                "frames_per_call": round(frames / max(1, sum(s["calls"] for s in stats)), 2),
                "bytes_in_per_frame": round(sum(s["bytes_in"] for s in stats) / frames),
                "bytes_out_per_frame": round(sum(s["bytes_out"] for s in stats) / frames),
                "cpu_ms_per_frame_outside_model": round(1000 * outside / counted, 3),
                "model_cpu_ms_per_frame": round(1000 * model / counted, 3)}

    @staticmethod
    def _start(s: dict) -> tuple[float, int, float]:
        """An actor's figures at its first answer: (CPU s outside the model, frames, the model's CPU s)."""
        return s["cpu_s"] - s["model_cpu_s"], s["frames"], s["model_cpu_s"]

    def _poll(self) -> None:
        try:
            stats = self.actor_stats()
        except Exception:  # noqa: BLE001 - a busy or restarting actor: the next poll asks again
            return
        for i, s in enumerate(stats):  # from the first answer on: loading the model is not per-frame work
            self.base.setdefault(i, self._start(s))
        frames = sum(int(s["frames"]) for s in stats)
        if frames > self.model_frames:
            self.dog.beat(f"{frames} frames segmented")
            self.model_frames = frames
        self.show(max(frames, self.job.frames_now))

    def show(self, done: int, final: bool = False) -> None:
        job = self.job
        total = done if final else self.total()
        self.bar.update(done, total=max(total, done) if total else None, failures=len(job.failures),
                        note=f"sources {job.sources_done}/{self.sources}")

    def _loop(self) -> None:
        while not self.stop.wait(POLL_S):
            self._poll()

    def __enter__(self) -> "Monitor":
        self.bar.__enter__()
        self.show(0)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        if exc[0] is None:
            self.show(self.job.frames_now, final=True)
        self.bar.__exit__(*exc)
