"""``roadseg eval``: score a checkpoint on a sharded split (``score.score_split``, on Ray), write
OUT/eval.json, eval.md and iou.png (``report``), return the result."""
from __future__ import annotations

import time

from roadseg_dist import storage
from roadseg_dist.eval.report import write_eval_reports
from roadseg_dist.eval.score import plan_scoring, progress_echo, score_split
from roadseg_dist.eval.settings import EvalSettings
from roadseg_dist.ops import progress


def run(s: EvalSettings, console=None) -> dict:
    """``roadseg eval``: score, write the reports, return the result dict (also in eval.json)."""
    from roadseg_dist import settings
    from roadseg_dist.models.checkpoint import CheckpointError, load_model

    s = settings.absolute_paths(s)
    try:
        # fail fast, on the driver, on a bad checkpoint; the actors load the checkpoint resolved here
        _, meta = load_model(s.checkpoint, "cpu")
    except (FileNotFoundError, ValueError) as exc:
        raise CheckpointError(f"cannot load checkpoint {storage.redact(s.checkpoint)}: {exc}") from exc
    plan = plan_scoring(s.workers, s.cpus_per_worker, s.gpu, s.address, s.num_cpus)
    start = time.time()
    with progress.Progress(f"eval {s.split}", None, "images", echo=progress_echo(console),
                           terminal=console.is_terminal if console else None) as bar:
        bar.log(plan.summary())
        cm, images = score_split(
            meta["checkpoint"], s.data, s.split, size=s.size, limit=s.limit, batch_size=s.batch_size,
            workers=s.workers, cpus_per_worker=plan.cpus_per_worker, gpu=s.gpu, save_preds=s.save_preds,
            channels_last=s.channels_last, compile=s.compile,
            progress=lambda done, total: bar.update(done, total=total), stall_timeout=s.stall_timeout)
    seconds = time.time() - start
    result = {
        "checkpoint": storage.redact(meta["checkpoint"]), "arch": meta.get("arch", "?"), "epoch": meta.get("epoch"),
        "data": storage.redact(s.data), "split": s.split, "images": images,
        "size": list(s.size) if s.size else None, "metrics": cm.compute(),
        "confusion": cm.mat.tolist(), "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 3) if seconds > 0 else 0.0,
        "predictions": storage.redact(s.save_preds) if s.save_preds else None,
    }
    result["reports"] = {k: storage.redact(v) for k, v in write_eval_reports(result, s.output_dir()).items()}
    return result
