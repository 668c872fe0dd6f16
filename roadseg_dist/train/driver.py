"""``roadseg train``: check the inputs, build the ``TorchTrainer``, follow the run, print a summary.

Ray's own logs stay quiet; the driver's progress comes from the run's ``metrics.jsonl``, which rank 0
writes once per epoch, so the same view works for a local Ray and for a remote cluster.
"""
from __future__ import annotations

import threading
import time

import click

from roadseg_dist import storage
from roadseg_dist.train import run
from roadseg_dist.train.settings import TrainSettings


def check_inputs(s: TrainSettings) -> str:
    """Fail early, on the driver, with an error that says what to do; returns the run dir."""
    from roadseg_dist.data import shards

    for split in ("train", "val"):
        try:
            index = shards.read_index(s.data, split)
        except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
            raise click.ClickException(f"--data: cannot read the {split} index: {storage.redact(str(exc))}") from None
        if split == "train" and len(index) < s.num_workers:
            raise click.ClickException(f"the train split has {len(index)} samples, fewer than "
                                       f"--num-workers {s.num_workers}")
    if s.mlflow:
        from roadseg_dist.train.tracking import mlflow_client
        try:
            mlflow_client(s.mlflow)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
    run_dir = storage.join(s.storage, s.name)
    exists = run.run_exists(run_dir)
    if exists and not s.resume:
        raise click.UsageError(f"run {storage.redact(run_dir)} already exists: pass --resume to continue "
                               f"it, or choose another --name")
    if s.resume and not run.checkpoint_dirs(run_dir):
        raise click.UsageError(f"--resume: {storage.redact(run_dir)} holds no checkpoint to continue from; "
                               f"start it without --resume (remove the folder first if it exists)")
    return run_dir


def build_trainer(s: TrainSettings):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.config import LoggingConfig
    from ray.train.torch import TorchTrainer

    from roadseg_dist.cluster import storage_env
    from roadseg_dist.train.loop import train_func

    resources = {"CPU": s.cpus_per_worker}
    if s.gpu:
        resources["GPU"] = 1
    fs, path = storage.arrow_filesystem(s.storage)
    return TorchTrainer(
        train_func,
        train_loop_config=s.to_config(),
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.gpu, resources_per_worker=resources,
                                     placement_strategy=s.placement_strategy),
        run_config=RunConfig(
            name=s.name, storage_path=path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=s.keep),
            failure_config=FailureConfig(max_failures=s.max_failures),
            worker_runtime_env={"env_vars": storage_env()},
            logging_config=LoggingConfig(log_level="WARNING")),
    )


def format_epoch(r: dict, epochs: int) -> str:
    restored = f"  (restored from epoch {r['restored_from_epoch']})" if r.get("restored_from_epoch") else ""
    return (f"epoch {r['epoch']:>3}/{epochs}  loss {r['train_loss']:.4f}  val mIoU {r['val_miou']:.4f}  "
            f"pixel acc {r['val_pixel_acc']:.4f}  {r['images_per_s']:.1f} img/s  {r['seconds']:.1f}s{restored}")


def follow(run_dir: str, done: threading.Event, printed: set, epochs: int, echo, poll_s: float = 1.0) -> None:
    """Print each new line of metrics.jsonl until ``done`` is set (then once more)."""
    while True:
        finished = done.wait(poll_s)
        try:
            records = run.read_metrics(run_dir)
        except Exception:  # noqa: BLE001 - a half-visible file on a flaky store: try again next tick
            records = []
        for r in records:
            key = (r["epoch"], r.get("restored_from_epoch"), round(r["seconds"], 3))
            if key not in printed:
                printed.add(key)
                echo(format_epoch(r, epochs))
        if finished:
            return


def train(s: TrainSettings, echo=click.echo) -> dict:
    """Run (or resume) a training run to the end; returns the summary that is also printed."""
    from roadseg_dist.cluster import init_ray

    run_dir = check_inputs(s)
    init_ray(s.address, s.num_cpus)
    trainer = build_trainer(s)
    echo(f"run {storage.redact(run_dir)}: {s.model}, {s.num_workers} worker(s) on "
         f"{'GPU' if s.gpu else 'CPU'}, {s.epochs} epochs, batch {s.batch_size}/worker, crop "
         f"{s.crop[0]}x{s.crop[1]}" + (" (resuming)" if s.resume else ""))
    done, printed, outcome = threading.Event(), set(), {}
    printed.update((r["epoch"], r.get("restored_from_epoch"), round(r["seconds"], 3))
                   for r in run.read_metrics(run_dir))

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            outcome["error"] = exc
        finally:
            done.set()

    t0 = time.time()
    thread = threading.Thread(target=fit, name="roadseg-fit", daemon=True)
    thread.start()
    follow(run_dir, done, printed, s.epochs, echo)
    thread.join()
    if "error" in outcome:
        run.write_status(run_dir, "failed", error=storage.redact(str(outcome["error"]))[:1000])
        raise click.ClickException(f"training failed: {storage.redact(str(outcome['error']))[:2000]}")
    return summarize(run_dir, time.time() - t0, echo)


def summarize(run_dir: str, seconds: float, echo=click.echo) -> dict:
    records = run.read_metrics(run_dir)
    best = run.best_checkpoint(run_dir)
    summary = {
        "run_dir": run_dir,
        "epochs": len(records),
        "best_val_miou": best[1]["metrics"]["val_miou"] if best else None,
        "best_epoch": best[1].get("epoch") if best else None,
        "best_checkpoint": best[0] if best else None,
        "checkpoints": run.checkpoint_dirs(run_dir),
        "metrics": storage.join(run_dir, run.METRICS),
        "curves": storage.join(run_dir, run.CURVES),
        "seconds": seconds,
    }
    if best:
        echo(f"best val mIoU {summary['best_val_miou']:.4f} at epoch {summary['best_epoch']}: "
             f"{storage.redact(summary['best_checkpoint'])}")
    echo(f"curves {storage.redact(summary['curves'])}, metrics {storage.redact(summary['metrics'])}, "
         f"{len(summary['checkpoints'])} checkpoint folder(s), {seconds:.0f}s")
    return summary
