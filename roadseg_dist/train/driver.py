"""``roadseg train``: check the inputs, build the ``TorchTrainer``, follow the run, print a summary.

Ray's own logs stay quiet; the driver's progress comes from the run's ``metrics.jsonl``, which rank 0
writes once per epoch, and from a zero-CPU ``ProgressBoard`` actor where every rank posts its batch
count, so the same view works for a local Ray and for a remote cluster. Before anything starts the
settings are resolved here (absolute paths, ``--cpus-per-worker auto`` -> a number that fits, see
``resources``); a run that stops moving for ``--stall-timeout`` fails with a diagnosis (``watchdog``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
import time

from roadseg_dist import settings, storage
from roadseg_dist.ops import progress, resources, watchdog
from roadseg_dist.errors import JobError
from roadseg_dist.settings import SettingsError
from roadseg_dist.train import checkpoints, rundir
from roadseg_dist.train.settings import TrainSettings


def check_inputs(s: TrainSettings) -> str:
    """Fail early, on the driver, with an error that says what to do; returns the run dir."""
    from roadseg_dist.data import ingest

    for url, split in [(url, "train") for url in s.data] + [(s.main_data, "val")]:
        read_index(url, split)
    samples = ingest.epoch_size(train_index(s), s.weights)
    if samples < s.num_workers:
        raise JobError(f"the train split has {samples} samples an epoch, fewer than --num-workers {s.num_workers}")
    if s.init_from:
        check_init_from(s)
    if s.mlflow:
        from roadseg_dist.train.tracking import mlflow_client
        try:
            mlflow_client(s.mlflow)
        except RuntimeError as exc:
            raise JobError(str(exc)) from None
    run_dir = storage.join(s.storage, s.name)
    exists = rundir.run_exists(run_dir)
    if exists and not s.resume:
        raise SettingsError(f"run {storage.redact(run_dir)} already exists: pass --resume to continue "
                            f"it, or choose another --name")
    return run_dir


def read_index(url: str, split: str):
    from roadseg_dist.data import shards

    try:
        return shards.read_index(url, split)
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        raise JobError(f"--data: cannot read the {split} index of {storage.redact(url)}: "
                       f"{storage.redact(str(exc))}") from None


def train_index(s: TrainSettings):
    """The train split of every --data set as one index (``ingest.train_sets``)."""
    from roadseg_dist.data import ingest

    return ingest.train_sets([(url, read_index(url, "train")) for url in s.data])


def check_init_from(s: TrainSettings) -> None:
    """--init-from must hold the model this run builds: its arch, width and classes."""
    from roadseg_dist.labels import NUM_CLASSES
    from roadseg_dist.models.checkpoint import read_meta

    meta = read_meta(s.init_from)
    want = {"arch": s.model, "arch_kwargs": {"base_channels": s.base_channels} if s.base_channels else {},
            "num_classes": NUM_CLASSES}
    have = {k: meta.get(k) or ({} if k == "arch_kwargs" else None) for k in want}
    if have != want:
        raise SettingsError(f"--init-from {storage.redact(meta['checkpoint'])} holds {have['arch']} "
                            f"{have['arch_kwargs'] or ''} with {have['num_classes']} classes, but this run builds "
                            f"{want['arch']} {want['arch_kwargs'] or ''} with {want['num_classes']}: pass the "
                            f"checkpoint's --model (and --base-channels), or start without --init-from")


def resume_point(run_dir: str, out) -> tuple[str, int]:
    """--resume: the newest checkpoint that loads, saying which newer ones were skipped and why."""
    url, epoch, skipped = checkpoints.resume_point(run_dir)
    for folder, why in skipped:
        out(f"resume: skipping {storage.redact(folder)}: {why}")
    if url is None:
        raise SettingsError(f"--resume: {storage.redact(run_dir)} holds no checkpoint to continue from"
                            + (" that loads" if skipped else "")
                            + "; start it without --resume (remove the folder first if it exists)")
    out(f"resume: from {storage.redact(url)} (epoch {epoch})")
    return url, epoch


def build_trainer(s: TrainSettings, feed, clock, resume_from: str | None = None, board=None):
    """The ``TorchTrainer``: the workers get the settings resolved here (absolute paths, CPUs), the train
    split as a Ray Dataset that Ray Train splits (``data/feed.py``) and where to resume from."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.config import LoggingConfig
    from ray.train.torch import TorchTrainer

    from roadseg_dist.ops.cluster import storage_settings
    from roadseg_dist.data import feed as feed_mod
    from roadseg_dist.data import ingest
    from roadseg_dist.train.loop import train_func

    resources = {"CPU": s.cpus_per_worker}
    if s.gpu:
        resources["GPU"] = 1
    fs, path = storage.arrow_filesystem(s.storage)
    index = train_index(s)
    dataset = feed_mod.train_dataset(index, s.num_workers, clock, feed, weights=s.weights,
                                     seed=s.seed, crop=s.crop, scale_range=s.scale_range, flip=s.flip,
                                     jitter=s.jitter)
    return TorchTrainer(
        train_func,
        train_loop_config={"settings": s, "board": board, "clock": clock, "feed": feed, "resume_from": resume_from,
                           "epoch_samples": ingest.epoch_size(index, s.weights)},
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.gpu, resources_per_worker=resources,
                                     placement_strategy=s.placement_strategy),
        datasets={"train": dataset},
        dataset_config=feed_mod.data_config(feed, s.num_workers),
        run_config=RunConfig(
            name=s.name, storage_path=path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=None),  # train/checkpoints.py prunes (--keep)
            failure_config=FailureConfig(max_failures=s.max_failures),
            worker_runtime_env={"env_vars": storage_settings()},  # never keys
            logging_config=LoggingConfig(log_level="WARNING")),
    )


def resource_request(s: TrainSettings, cpus: float) -> resources.Request:
    """Workers x CPUs (auto or given) plus one decode task: what must fit the Ray cluster.

    ``cpus``: the cluster's CPUs, which decide auto's split (``ingest.worker_share``)."""
    from roadseg_dist.data import ingest

    if s.ingest_cpus == resources.AUTO:
        share = ingest.worker_share(cpus, s.num_workers, s.gpu)
        task = min(1.0, share * cpus)  # the task size ingest.size_feed will choose
    else:
        share = min(1.0, s.ingest_cpus * s.num_workers / max(cpus, 1e-9))
        task = min(1.0, s.ingest_cpus * s.num_workers)
    return resources.Request(
        job="train", workers=s.num_workers, cpus_per_worker=s.cpus_per_worker, gpus_per_worker=1 if s.gpu else 0,
        task_cpus=task, task_share=share, worker_name="training worker",
        task_name="decode/augment task", task_flag="--ingest-cpus")


def size_feed(s: TrainSettings, offer: resources.Offer):
    """Resolve ``--cpus-per-worker`` and the ingest's auto settings against what Ray offers."""
    from roadseg_dist.data import ingest

    plan = resources.plan(resource_request(s, offer.capacity("CPU")), offer)
    feed = ingest.size_feed(offer.capacity("CPU"), s.num_workers, plan.cpus_per_worker, gpu=s.gpu,
                            ingest_cpus=s.ingest_cpus, prefetch=s.prefetch_batches,
                            batch_bytes=s.batch_size * s.crop[0] * s.crop[1] * 4, rows=s.batch_size)
    return plan, feed


def format_epoch(r: dict, epochs: int) -> str:
    restored = f"  (restored from epoch {r['restored_from_epoch']})" if r.get("restored_from_epoch") else ""
    return (f"epoch {r['epoch']:>3}/{epochs}  loss {r['train_loss']:.4f}  val mIoU {r['val_miou']:.4f}  "
            f"pixel acc {r['val_pixel_acc']:.4f}  {r['images_per_s']:.1f} img/s  {r['seconds']:.1f}s{restored}")


def epoch_key(r: dict) -> tuple:
    return r["epoch"], r.get("restored_from_epoch"), round(r["seconds"], 3)


class Follower:
    """The driver's view of a run: epoch lines from metrics.jsonl, batches from the workers' board."""

    def __init__(self, s: TrainSettings, run_dir: str, steps_per_epoch: int, board, bar, dog, status):
        self.s, self.run_dir, self.steps, self.board, self.bar, self.dog = s, run_dir, steps_per_epoch, board, bar, dog
        self.status = status  # rundir.Heartbeat
        self.printed = {epoch_key(r) for r in rundir.read_metrics(run_dir)}
        self.board_version = 0  # the board's version before any post

    def pending(self) -> str:
        posts = self._posts()
        ranks = ", ".join(f"rank {who}: epoch {p.get('epoch')} {p.get('stage', 'train')} batch "
                          f"{p.get('batches', 0)}/{self.steps}" for who, p in sorted(posts.items()))
        return (f"training batches (ranks that posted: {ranks})" if ranks else
                f"the {self.s.num_workers} training worker(s) to start their first epoch: none has reported yet")

    def _posts(self) -> dict:
        import ray

        if self.board is None:
            return {}
        snap = ray.get(self.board.snapshot.remote(), timeout=10)
        if snap["version"] != self.board_version:
            self.board_version = snap["version"]
            self.dog.beat("a worker reported progress")
        return snap["posts"]

    def poll(self) -> None:
        try:
            records = rundir.read_metrics(self.run_dir)
        except Exception:  # noqa: BLE001 - a half-visible file on a flaky store: try again next tick
            records = []
        for r in records:
            if epoch_key(r) not in self.printed:
                self.printed.add(epoch_key(r))
                self.dog.beat(f"epoch {r['epoch']} finished")
                self.bar.log(format_epoch(r, self.s.epochs))
        self.status.beat(epoch=max((r["epoch"] for r in records), default=self.status.fields.get("epoch", 0)))
        try:
            posts = self._posts()
        except Exception:  # noqa: BLE001 - the board is a view; training goes on without it
            posts = {}
        done = [(p.get("epoch", 1) - 1) * self.steps + p.get("batches", 0) for p in posts.values()]
        epoch = min((p.get("epoch", 1) for p in posts.values()), default=1)
        if done:
            self.bar.update(min(done), note=f"epoch {epoch}/{self.s.epochs}")
        else:
            self.bar.tick()


def run(s: TrainSettings, echo=None) -> dict:
    """Run (or resume) a training run to the end; returns the summary that is also printed.

    ``echo``: where lines go (default: stdout, with a bar on a terminal and plain lines otherwise).
    Raises ResourceError before starting when the job cannot fit, StallError when it stops moving,
    JobError (naming the file and what to do) when the workers failed.
    """
    import ray

    from roadseg_dist.ops.cluster import init_ray, on_this_node
    from roadseg_dist.data import feed as feed_mod
    from roadseg_dist.data import ingest

    out = echo or progress.plain_echo
    s = settings.absolute_paths(s)  # the workers run in Ray's session folder, not in this cwd
    run_dir = check_inputs(s)
    resume_from, restored = resume_point(run_dir, out) if s.resume else (None, 0)
    local_cpus = float(int(s.num_cpus or os.cpu_count() or 2))
    resources.check_before_start(resource_request(s, local_cpus), s.address, s.num_cpus)
    init_ray(s.address, s.num_cpus)
    plan, feed = size_feed(s, resources.offer_from_ray(resources.is_local(s.address), s.num_cpus))
    s = dataclasses.replace(s, cpus_per_worker=plan.cpus_per_worker)
    checkpoints.forget_ray_snapshot(run_dir)  # resuming: our resume point, not Ray's list
    board, clock = progress.remote_board(), feed_mod.epoch_clock(restored + 1, **on_this_node())
    trainer = build_trainer(s, feed, clock, resume_from, board)
    steps = math.ceil((ingest.epoch_size(train_index(s), s.weights) // s.num_workers) / s.batch_size)
    out(f"run {storage.redact(run_dir)}: {s.model}, {s.num_workers} worker(s) on "
        f"{'GPU' if s.gpu else 'CPU'}, {s.epochs} epochs, batch {s.batch_size}/worker, crop "
        f"{s.crop[0]}x{s.crop[1]}" + (" (resuming)" if s.resume else ""))
    out(plan.summary())
    out(feed.describe(s.num_workers))
    status = rundir.Heartbeat(run_dir, epoch=restored, epochs=s.epochs, model=s.model)
    try:
        outcome = follow(s, trainer, run_dir, steps, board, status, echo)
    except BaseException as exc:  # Ctrl-C or a stall: the run stops here, and status.json says so
        why = "stopped by the user (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else str(exc).split("\n")[0]
        status.end("failed", error=storage.redact(why)[:1000])
        raise
    ray.kill(board)
    ray.kill(clock)
    if "error" in outcome:
        reason = failure_reason(outcome["error"])
        unsaved = status.end("failed", error=reason[:1000])
        raise JobError(f"training failed: {reason}" + (f" ({unsaved})" if unsaved else ""))
    unsaved = status.end("finished", epoch=s.epochs)
    if unsaved:
        out(f"warning: {unsaved}")
    return summarize(run_dir, outcome["seconds"], out)


def follow(s: TrainSettings, trainer, run_dir: str, steps: int, board, status, echo) -> dict:
    """Run ``fit()`` in a thread; print epochs and batches, beat status.json, watch for stalls."""
    done, outcome = threading.Event(), {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            outcome["error"] = exc
        finally:
            done.set()

    t0 = time.time()
    dog = watchdog.Watchdog("train", s.stall_timeout)
    status.beat(force=True)
    with progress.Progress("train", s.epochs * steps, "batches", echo=echo) as bar:
        follower = Follower(s, run_dir, steps, board, bar, dog, status)
        dog.pending = follower.pending
        threading.Thread(target=fit, name="roadseg-fit", daemon=True).start()
        while not done.wait(1.0):
            follower.poll()
            dog.check()
        follower.poll()
    outcome["seconds"] = time.time() - t0
    return outcome


def failure_reason(exc: BaseException) -> str:
    """The worker's own error when Ray Train reports one (our errors say what to do), else Ray's."""
    failures = getattr(exc, "worker_failures", None) or {}
    for _, failure in sorted(failures.items()):
        cause = getattr(failure, "cause", None) or failure
        lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        if lines:  # a traceback's first line says where, its last what (Ray's OOM kill: the other way round)
            text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
            return storage.redact(f"{type(cause).__name__}: {text}")[:2000]
    return storage.redact(str(exc))[:2000]


def summarize(run_dir: str, seconds: float, echo=progress.plain_echo) -> dict:
    records = rundir.read_metrics(run_dir)
    if not records:
        raise JobError(f"training ended without writing {rundir.METRICS} to {storage.redact(run_dir)}: "
                                   f"no epoch was saved where you pointed --storage")
    best = rundir.best_checkpoint(run_dir)
    summary = {
        "run_dir": run_dir,
        "epochs": len(records),
        "best_val_miou": best[1]["metrics"]["val_miou"] if best else None,
        "best_epoch": best[1].get("epoch") if best else None,
        "best_checkpoint": best[0] if best else None,
        "checkpoints": rundir.checkpoint_dirs(run_dir),
        "metrics": storage.join(run_dir, rundir.METRICS),
        "curves": storage.join(run_dir, rundir.CURVES),
        "seconds": seconds,
    }
    if best:
        echo(f"best val mIoU {summary['best_val_miou']:.4f} at epoch {summary['best_epoch']}: "
             f"{storage.redact(summary['best_checkpoint'])}")
    echo(f"curves {storage.redact(summary['curves'])}, metrics {storage.redact(summary['metrics'])}, "
         f"{len(summary['checkpoints'])} checkpoint folder(s), {seconds:.0f}s")
    return summary
