"""The run's JSON report and the driver's progress line."""
from __future__ import annotations

import json
import time
from typing import Any

from roadseg_dist import __version__, settings as settings_mod, storage


def build(s, *, sources: int, skipped: int, done: int, failures: list[dict[str, str]], frames: int,
          seconds: float, frames_total: int) -> dict[str, Any]:
    """What a person or a script wants to know after a run; nothing secret (URLs are redacted)."""
    config = {k: (storage.redact(v) if isinstance(v, str) else v)
              for k, v in settings_mod.to_dict(s).items()}
    return {
        "roadseg_version": __version__,
        "input": storage.redact(s.input), "output": storage.redact(s.output),
        "checkpoint": storage.redact(s.checkpoint), "settings": config,
        "precision": precision(s),            # what --amp resolved to: fp32, bf16 or fp16
        "sources": sources,
        "videos_done": done + skipped,        # complete now, this run or an earlier one
        "videos_done_this_run": done,
        "videos_skipped": skipped,            # already complete before this run: nothing rewritten
        "videos_failed": len(failures),
        "failures": sorted(failures, key=lambda f: f["id"]),
        "frames_this_run": frames,
        "frames_total": frames_total,
        "seconds": round(seconds, 3),
        "frames_per_second": round(frames / seconds, 3) if seconds > 0 else 0.0,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def precision(s) -> str:
    """What ``--amp`` resolves to: exact for a local Ray (this machine runs the actors); on a cluster
    each actor resolves ``auto`` on its own node."""
    from roadseg_dist.ops import resources
    from roadseg_dist.models.predict import inference_amp

    if s.amp == "auto" and not resources.is_local(s.address):
        return "auto (per node: fp16 on GPUs, bf16 on CPUs that have it, else fp32)"
    amp = inference_amp("cuda" if s.gpu else "cpu", s.amp)
    return "fp32" if amp == "off" else amp


def write(output: str, report: dict[str, Any]) -> None:
    storage.write_text(storage.join(output, "report.json"), json.dumps(report, indent=1) + "\n")
