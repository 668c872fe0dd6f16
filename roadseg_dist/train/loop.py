"""The per-worker training function: ordinary PyTorch DDP plus Ray Train's report/get_checkpoint.

Reads top to bottom like torchvision's reference script: ``ddp_loss``, ``poly_schedule``,
``train_one_epoch``, ``evaluate``; then, as in litgpt, ``train_func`` only wires three steps:

    setup(config)            settings, model (DDP, channels_last, compile), optimizer, schedule,
                             loss (train/losses.py), restore from Ray's checkpoint, rank 0's tracker
    run_epoch(job, epoch)    rank 0 sets the epoch clock -> this rank's split of the train dataset
                             (Ray Train's data path, data/feed.py) -> train_one_epoch -> evaluate
                             (val shards of this rank, confusion matrix all-reduced)
    save_epoch(job, ...)     rank 0: metrics.jsonl, curves.png, TensorBoard/MLflow, checkpoint (and a
                             copy of the best) -> ray.train.report on every rank; Ray's copy of the
                             checkpoint goes through train/checkpoints.commit (meta.json last)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from roadseg_dist import storage
from roadseg_dist.data import ingest
from roadseg_dist.labels import CLASSES, NUM_CLASSES
from roadseg_dist.metrics import ConfusionMatrix
from roadseg_dist.models.predict import as_input, autocast  # bf16/fp16 on GPU, float32 on CPU
from roadseg_dist.train import losses, rundir
from roadseg_dist.train.saving import restore_point, save_epoch


# --- loss and schedule ---------------------------------------------------------------------------

def global_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over all workers (itself when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def ddp_loss(loss_sum: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """The loss to backpropagate, from a loss's (sum over pixels, normaliser) (train/losses.py).

    Dividing by the normaliser of the *global* batch (all-reduced) makes N workers x batch b give
    exactly the gradient of 1 worker x batch N*b; DDP averages gradients over workers, hence the
    world-size factor.
    """
    return loss_sum * world_size() / global_sum(norm.detach()).clamp_min(1.0)


def poly_schedule(total_steps: int, warmup_steps: int = 0, power: float = 0.9):
    """LambdaLR factor: linear warm-up to 1, then (1 - progress) ** power down to 0."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 1.0 - progress) ** power
    return factor


def class_weight_tensor(weights) -> torch.Tensor:
    """The stats' class weights ({name: w} or a list in class order) as a (19,) tensor."""
    if isinstance(weights, dict):
        missing = [c for c in CLASSES if c not in weights]
        if missing:
            raise ValueError(f"class_weights in the train stats lack {missing}: re-run `roadseg shard`")
        weights = [weights[c] for c in CLASSES]
    return torch.tensor([float(w) for w in weights], dtype=torch.float32)


def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float, momentum: float):
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


# --- one epoch -----------------------------------------------------------------------------------

def train_one_epoch(model, batches, optimizer, scheduler, scaler, device, *, amp: str = "off",
                    weight: torch.Tensor | None = None, criterion: Callable = losses.cross_entropy,
                    channels_last: bool = False, on_batch=None) -> dict:
    """One pass over this worker's batches; returns summed loss/normaliser (for a global mean)."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    norm_sum = torch.zeros((), device=device)
    images = 0
    for batch in batches:
        x = as_input(ingest.to_model_input(batch["image"], device), channels_last)
        y = torch.as_tensor(batch["label"]).to(device, non_blocking=True).long()
        with autocast(device, amp):
            logits = model(x)
        part_sum, part_norm = criterion(logits, y, weight)
        loss = ddp_loss(part_sum, part_norm)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += part_sum.detach()
        norm_sum += part_norm.detach()
        images += len(y)
        if on_batch is not None:
            on_batch(batch)
    return {"loss_sum": loss_sum, "norm": norm_sum, "images": images}


@torch.no_grad()
def evaluate(model, batches, device, *, amp: str = "off", num_classes: int = NUM_CLASSES,
             channels_last: bool = False, samples: list | None = None, max_samples: int = 3) -> ConfusionMatrix:
    """Confusion matrix of this worker's val batches, summed over all workers.

    ``model`` must be the plain module (not the DDP wrapper): ranks hold different numbers of val
    samples, and a DDP forward would wait for the others. ``samples``, when given, receives the
    first ``max_samples`` (image, label, prediction) triples as numpy arrays (for the overlays).
    """
    model.eval()
    cm = ConfusionMatrix(num_classes)
    for batch in batches:
        x = as_input(ingest.to_model_input(batch["image"], device), channels_last)
        with autocast(device, amp):
            pred = model(x).argmax(1)
        cm.update(batch["label"], pred)
        if samples is not None and len(samples) < max_samples:
            for image, label, p in zip(batch["image"], batch["label"], pred.cpu().numpy()):
                if len(samples) < max_samples:
                    samples.append((np.asarray(image), np.asarray(label), p))
    cm.all_reduce()
    return cm


# --- the Ray Train entry point: setup / run_epoch / save_epoch ----------------------------------

@dataclasses.dataclass
class Worker:
    """Everything one worker trains with; built by ``setup``, advanced by ``run_epoch``/``save_epoch``."""
    s: Any                       # TrainSettings
    rank: int
    world: int
    device: torch.device
    run_dir: str
    model: torch.nn.Module       # what trains: DDP-wrapped and/or compiled
    plain: torch.nn.Module       # the bare module: evaluation and checkpoints
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    criterion: Callable
    weight: torch.Tensor | None
    epoch_samples: int
    val_index: Any
    train_shard: Any = None      # this rank's DataIterator of the train dataset (Ray Train's split)
    clock: Any = None            # data/feed.EpochClock handle: rank 0 sets the epoch being read
    feed: Any = None             # data/ingest.Feed: prefetch, pinning
    start_epoch: int = 1
    restored_from: int = 0
    best_miou: float = -1.0
    tracker: Any = None          # rank 0 only: tracking.Tracker
    post: Callable = lambda **_: None  # batch progress to the driver's board (progress.Poster)


def train_func(config: dict) -> None:
    job = setup(config)
    try:
        for epoch in range(job.start_epoch, job.s.epochs + 1):
            record, samples = run_epoch(job, epoch)
            save_epoch(job, record, samples)
    except BaseException:
        if job.tracker is not None:
            job.tracker.close("FAILED")
        raise
    if job.tracker is not None:
        job.tracker.close()


def setup(config: dict) -> Worker:
    import ray.train
    import ray.train.torch

    from roadseg_dist.ops.cluster import quiet_ray_data
    from roadseg_dist.data import shards
    from roadseg_dist.ops.progress import Poster

    quiet_ray_data()
    s = config["settings"]  # resolved on the driver: absolute paths, CPUs; never rebuilt here
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    epoch_samples = config["epoch_samples"]  # of every --data set, weighted: the driver counted them
    steps_per_epoch = math.ceil((epoch_samples // world) / s.batch_size)
    model, plain = worker_model(s, world, device)
    optimizer = build_optimizer(model, s.optimizer, s.lr, s.weight_decay, s.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(
        s.epochs * steps_per_epoch, round(s.warmup_epochs * steps_per_epoch), s.poly_power))
    weight = None
    if s.class_weights:
        weight = class_weight_tensor(shards.read_stats(s.main_data, "train")["class_weights"]).to(device)
    job = Worker(s=s, rank=rank, world=world, device=device, run_dir=storage.join(s.storage, s.name),
              model=model, plain=plain, optimizer=optimizer, scheduler=scheduler,
              scaler=torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and s.amp == "fp16"),
              criterion=losses.build_criterion(s.loss, ohem_thresh=s.ohem_thresh, ohem_min_kept=s.ohem_min_kept,
                                               dice_weight=s.dice_weight),
              weight=weight, epoch_samples=epoch_samples, val_index=shards.read_index(s.main_data, "val"),
              post=Poster(config.get("board"), rank), train_shard=ray.train.get_dataset_shard("train"),
              clock=config["clock"], feed=config["feed"])
    job.restored_from = restore_point(job, ray.train.get_checkpoint(), config.get("resume_from"))
    job.start_epoch = job.restored_from + 1
    if s.record_keys:
        storage.write_text(storage.join(job.run_dir, "debug", f"worker-rank{rank}.json"),
                           json.dumps({"pid": os.getpid(), "restored_from": job.restored_from}))
    if rank == 0:
        start_tracking(job)
    return job


def worker_model(s, world: int, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model to train: DDP and optionally compiled, the bare module inside it)."""
    import ray.train.torch

    from roadseg_dist.models.checkpoint import unwrap
    from roadseg_dist.models.predict import optimize
    from roadseg_dist.models.zoo import build_model

    torch.manual_seed(s.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    arch_kwargs = {"base_channels": s.base_channels} if s.base_channels else {}
    model = build_model(s.model, num_classes=NUM_CLASSES, pretrained=s.pretrained, **arch_kwargs)
    if s.init_from:  # fine-tuning: the weights of an earlier model (the driver checked they fit); a resume
        from roadseg_dist.models.checkpoint import load_model  # then loads its own checkpoint over them

        model.load_state_dict(load_model(s.init_from, num_classes=NUM_CLASSES)[0].state_dict())
    if world > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # no CPU kernel for SyncBN
    model = ray.train.torch.prepare_model(optimize(model, channels_last=s.channels_last))
    return optimize(model, compile=s.compile), unwrap(model)


def start_tracking(job: Worker) -> None:
    """Rank 0: the TensorBoard/MLflow tracker and the best mIoU so far (after a restore)."""
    from roadseg_dist.train.tracking import Tracker

    job.tracker = Tracker(job.run_dir, job.s, mlflow_uri=job.s.mlflow, experiment=job.s.mlflow_experiment)
    best = rundir.best_checkpoint(job.run_dir) if job.restored_from else None
    job.best_miou = (best[1].get("metrics") or {}).get("val_miou", -1.0) if best else -1.0


def run_epoch(job: Worker, epoch: int) -> tuple[dict, list]:
    """Train on this rank's part of the epoch, then score the val split; (metrics record, val samples)."""
    from roadseg_dist.data import feed as feed_mod

    s, t0 = job.s, time.time()
    steps = math.ceil((job.epoch_samples // job.world) / s.batch_size)
    job.post(force=True, epoch=epoch, batches=0)
    if job.rank == 0:
        feed_mod.start_epoch(job.clock, epoch)
    seen: list[str] = []
    batches = feed_mod.train_batches(job.train_shard, s.batch_size, job.feed, s.shuffle_buffer,
                                     seed=s.seed * 1000 + epoch)
    batches = each(batches, lambda i: job.post(epoch=epoch, batches=i - 1))
    keep_keys = (lambda b: seen.extend(feed_mod.batch_keys(b))) if s.record_keys else None
    stats = train_one_epoch(job.model, batches, job.optimizer, job.scheduler, job.scaler, job.device, amp=s.amp,
                            weight=job.weight, criterion=job.criterion, channels_last=s.channels_last,
                            on_batch=keep_keys)
    job.post(force=True, epoch=epoch, batches=steps, stage="validation")
    train_seconds = time.time() - t0
    if s.record_keys:
        storage.write_text(storage.join(job.run_dir, "debug", f"keys-epoch{epoch:04d}-rank{job.rank}.json"),
                           json.dumps(seen))
    val = ingest.iter_val_batches(s.main_data, ingest.val_shards_for_rank(job.val_index, job.rank, job.world),
                                  s.val_batch_size)
    val = each(val, lambda i: job.post(epoch=epoch, batches=steps, stage=f"validation batch {i}"))
    samples: list = []
    cm = evaluate(job.plain, val, job.device, amp=s.amp, channels_last=s.channels_last,
                  samples=samples if job.rank == 0 else None, max_samples=s.overlays)
    loss_sum = global_sum(stats["loss_sum"]).item()
    norm = global_sum(stats["norm"]).item()
    images = int(global_sum(torch.tensor(float(stats["images"]), device=job.device)).item())
    scores = cm.compute()
    record = {"epoch": epoch, "train_loss": loss_sum / max(norm, 1.0), "val_miou": scores["miou"],
              "val_pixel_acc": scores["pixel_acc"], "val_pixels": cm.labelled_pixels,
              "val_pixels_expected": int(job.val_index["labelled_pixels"].sum()), "val_iou": scores["iou"],
              "train_images": images, "images_per_s": images / max(train_seconds, 1e-9),
              "lr": job.scheduler.get_last_lr()[0], "seconds": time.time() - t0, "workers": job.world}
    if job.restored_from and epoch == job.start_epoch:
        record["restored_from_epoch"] = job.restored_from
    return record, samples


def each(batches, on_each):
    """The batches, calling ``on_each(i)`` before handing out the i-th (progress for the driver)."""
    for i, batch in enumerate(batches, 1):
        on_each(i)
        yield batch
