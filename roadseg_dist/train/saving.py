"""The end of an epoch on a worker, and the start of a resumed one.

    save_epoch(job, record, samples)  rank 0 writes metrics.jsonl, curves.png, the checkpoint (and a copy of
                                      the best), TensorBoard/MLflow (``write_epoch``); every rank then calls
                                      ``ray.train.report``, whose copy of the checkpoint goes through
                                      ``checkpoints.ray_upload`` (meta.json last, --keep pruning)
    restore_point(job, ...)           Ray's latest checkpoint of this fit (a restarted worker group), else the
                                      driver's --resume point: weights, optimizer, schedule, scaler

A write that fails (a full disk, storage gone) is a JobError naming the file and what to do.
"""
from __future__ import annotations

import tempfile

from roadseg_dist import storage
from roadseg_dist.train import checkpoints, rundir
from roadseg_dist.train.plots import render_curves


def save_epoch(job, record: dict, samples: list) -> None:
    """Rank 0 writes the epoch's files, checkpoint and tracking; every rank reports to Ray Train,
    whose copy of the checkpoint goes through ``checkpoints.ray_upload`` (meta.json last, pruning)."""
    import ray.train

    from roadseg_dist.train.tracking import epoch_scalars

    epoch = record["epoch"]
    report_checkpoint = None
    with tempfile.TemporaryDirectory(prefix="roadseg-ckpt-") as tmp:
        if job.rank == 0:
            write_epoch(job, record, samples, tmp)
            report_checkpoint = ray.train.Checkpoint.from_directory(tmp)
        metrics = {"epoch": epoch, "val_miou": record["val_miou"], **epoch_scalars(record)}
        ray.train.report(metrics, checkpoint=report_checkpoint, checkpoint_dir_name=rundir.checkpoint_name(epoch),
                         checkpoint_upload_fn=checkpoints.ray_upload(job.run_dir, job.s.keep))


def write_epoch(job, record: dict, samples: list, tmp: str) -> None:
    """Rank 0: metrics.jsonl, curves.png, the checkpoint in ``tmp``, the best copy, TensorBoard/MLflow.
    A write that fails (a full disk, storage gone) is a JobError naming the file."""
    from roadseg_dist.models import checkpoint as ckpt_format
    from roadseg_dist.train.tracking import overlay_panel

    s, epoch = job.s, record["epoch"]
    with checkpoints.writing(storage.join(job.run_dir, rundir.METRICS)):
        records = rundir.append_metrics(job.run_dir, record)
    curves = render_curves(records, s.name)
    with checkpoints.writing(storage.join(job.run_dir, rundir.CURVES)):
        storage.write_bytes(storage.join(job.run_dir, rundir.CURVES), curves)
    metrics = {k: record[k] for k in ("train_loss", "val_miou", "val_pixel_acc", "val_pixels")}
    state = {"optimizer": job.optimizer.state_dict(), "scheduler": job.scheduler.state_dict(),
             "scaler": job.scaler.state_dict(), "epoch": epoch}
    with checkpoints.writing(tmp):
        ckpt_format.save_checkpoint(tmp, job.plain, epoch=epoch, metrics=metrics, train_config=s,
                                    input_size=list(s.crop), train_state=state)
    if record["val_miou"] > job.best_miou:
        checkpoints.keep_best(job.run_dir, tmp, epoch)
        job.best_miou = record["val_miou"]
        job.tracker.best(tmp, epoch, record["val_miou"])
    with checkpoints.writing(storage.join(job.run_dir, "tensorboard")):
        job.tracker.log_epoch(record, [overlay_panel(*t) for t in samples], curves)


def restore_point(job, ray_checkpoint, resume_from: str | None) -> int:
    """Restore the newest state: Ray's latest checkpoint of this fit (a restarted worker group), else
    the driver's ``--resume`` point (train/checkpoints.resume_point); the epoch restored, 0 if none."""
    if ray_checkpoint is not None:
        url = storage.join(job.run_dir, ray_checkpoint.path.rstrip("/").rsplit("/", 1)[-1])
    elif resume_from:
        url = resume_from
    else:
        return 0
    return restore(url, job.plain, job.optimizer, job.scheduler, job.scaler)


def restore(url: str, model, optimizer, scheduler, scaler) -> int:
    """Load weights and optimizer/schedule/scaler state from a checkpoint folder; returns its epoch."""
    from roadseg_dist.models import checkpoint as ckpt_format

    model.load_state_dict(ckpt_format.read_weights(url))
    state = ckpt_format.load_train_state(url)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return int(state["epoch"])
