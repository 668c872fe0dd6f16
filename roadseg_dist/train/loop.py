"""The per-worker training function: ordinary PyTorch DDP plus Ray Train's report/get_checkpoint.

Reads top to bottom like torchvision's reference script: ``criterion``, ``poly_schedule``,
``train_one_epoch``, ``evaluate``, then ``train_func`` which ties them together per epoch:

    plan this rank's samples -> Ray Data decode/augment -> train_one_epoch (DDP)
    -> evaluate (val shards of this rank, confusion matrix all-reduced)
    -> rank 0: metrics.jsonl + curves.png + checkpoint (and a copy of the best) -> ray.train.report
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from roadseg_dist import storage
from roadseg_dist.data import ingest
from roadseg_dist.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES
from roadseg_dist.metrics import ConfusionMatrix
from roadseg_dist.models.predict import autocast  # bf16/fp16 on GPU, float32 on CPU
from roadseg_dist.train import run
from roadseg_dist.train.plots import render_curves


# --- loss and schedule ---------------------------------------------------------------------------

def criterion(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None):
    """Cross-entropy ignoring 255, as (sum over pixels, normaliser = summed pixel weights).

    Returning the sum and its normaliser separately lets DDP normalise by the labelled pixels of the
    *global* batch, so N workers x batch b give exactly the gradient of 1 worker x batch N*b.
    """
    loss_sum = F.cross_entropy(logits.float(), target.long(), weight=weight, ignore_index=IGNORE_INDEX,
                               reduction="sum")
    labelled = target[target != IGNORE_INDEX].long()
    norm = weight[labelled].sum() if weight is not None else torch.tensor(
        float(labelled.numel()), device=logits.device)
    return loss_sum, norm.float()


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over all workers (itself when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def ddp_loss(loss_sum: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """The loss to backpropagate: DDP averages gradients over workers, hence the world-size factor."""
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
                    weight: torch.Tensor | None = None, on_batch=None) -> dict:
    """One pass over this worker's batches; returns summed loss/normaliser (for a global mean)."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    norm_sum = torch.zeros((), device=device)
    images = 0
    for batch in batches:
        x = ingest.to_model_input(batch["image"], device)
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
def evaluate(model, batches, device, *, amp: str = "off", num_classes: int = NUM_CLASSES) -> ConfusionMatrix:
    """Confusion matrix of this worker's val batches, summed over all workers.

    ``model`` must be the plain module (not the DDP wrapper): ranks hold different numbers of val
    samples, and a DDP forward would wait for the others.
    """
    model.eval()
    cm = ConfusionMatrix(num_classes)
    for batch in batches:
        x = ingest.to_model_input(batch["image"], device)
        with autocast(device, amp):
            pred = model(x).argmax(1)
        cm.update(batch["label"], pred)
    cm.all_reduce()
    return cm


# --- the Ray Train entry point -------------------------------------------------------------------

def train_func(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from roadseg_dist.cluster import quiet_ray_data
    from roadseg_dist.data import shards
    from roadseg_dist.models import checkpoint as ckpt_format
    from roadseg_dist.models.zoo import build_model
    from roadseg_dist.progress import Poster

    quiet_ray_data()
    s = config["settings"]  # resolved on the driver: absolute paths, CPUs; never rebuilt here
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    post = Poster(config.get("board"), rank)
    device = ray.train.torch.get_device()
    run_dir = storage.join(s.storage, s.name)

    train_index = shards.read_index(s.data, "train")
    val_index = shards.read_index(s.data, "val")
    steps_per_epoch = math.ceil((len(train_index) // world) / s.batch_size)

    torch.manual_seed(s.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    arch_kwargs = {"base_channels": s.base_channels} if s.base_channels else {}
    model = build_model(s.model, num_classes=NUM_CLASSES, pretrained=s.pretrained, **arch_kwargs)
    if world > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # no CPU kernel for SyncBN
    model = ray.train.torch.prepare_model(model)
    plain = model.module if hasattr(model, "module") else model

    optimizer = build_optimizer(model, s.optimizer, s.lr, s.weight_decay, s.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(
        s.epochs * steps_per_epoch, round(s.warmup_epochs * steps_per_epoch), s.poly_power))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and s.amp == "fp16")
    weight = None
    if s.class_weights:
        weight = class_weight_tensor(shards.read_stats(s.data, "train")["class_weights"]).to(device)
    val_pixels_expected = int(val_index["labelled_pixels"].sum())

    start_epoch, restored_from = 1, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            restored_from = restore(folder, plain, optimizer, scheduler, scaler)
        start_epoch = restored_from + 1

    if s.record_keys:
        storage.write_text(storage.join(run_dir, "debug", f"worker-rank{rank}.json"),
                           json.dumps({"pid": os.getpid(), "restored_from": restored_from}))

    best = run.best_checkpoint(run_dir) if rank == 0 and restored_from else None
    best_miou = (best[1].get("metrics") or {}).get("val_miou", -1.0) if best else -1.0

    for epoch in range(start_epoch, s.epochs + 1):
        t0 = time.time()
        post(force=True, epoch=epoch, batches=0)
        tasks = ingest.plan_epoch(train_index, world, s.seed, epoch)[rank]
        ds = ingest.train_dataset(s.data, tasks, seed=s.seed, epoch=epoch, crop=s.crop,
                                  scale_range=s.scale_range, flip=s.flip, jitter=s.jitter,
                                  ingest_cpus=s.ingest_cpus)
        seen: list[str] = []
        batches = ingest.iter_train_batches(ds, s.batch_size, s.shuffle_buffer, seed=s.seed * 1000 + epoch)
        batches = each(batches, lambda i: post(epoch=epoch, batches=i - 1))
        stats = train_one_epoch(model, batches, optimizer, scheduler, scaler, device, amp=s.amp,
                                weight=weight, on_batch=lambda b: seen.extend(map(str, b["key"])))
        post(force=True, epoch=epoch, batches=steps_per_epoch, stage="validation")
        train_seconds = time.time() - t0
        if s.record_keys:
            storage.write_text(storage.join(run_dir, "debug", f"keys-epoch{epoch:04d}-rank{rank}.json"),
                               json.dumps(seen))

        val = ingest.iter_val_batches(s.data, ingest.val_shards_for_rank(val_index, rank, world),
                                      s.val_batch_size)
        val = each(val, lambda i: post(epoch=epoch, batches=steps_per_epoch, stage=f"validation batch {i}"))
        cm = evaluate(plain, val, device, amp=s.amp)
        loss_sum = global_sum(stats["loss_sum"]).item()
        norm = global_sum(stats["norm"]).item()
        images = int(global_sum(torch.tensor(float(stats["images"]), device=device)).item())
        scores = cm.compute()
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / max(norm, 1.0),
            "val_miou": scores["miou"],
            "val_pixel_acc": scores["pixel_acc"],
            "val_pixels": cm.labelled_pixels,
            "val_pixels_expected": val_pixels_expected,
            "val_iou": scores["iou"],
            "train_images": images,
            "images_per_s": images / max(train_seconds, 1e-9),
            "lr": scheduler.get_last_lr()[0],
            "seconds": time.time() - t0,
            "workers": world,
        }
        if restored_from and epoch == start_epoch:
            record["restored_from_epoch"] = restored_from

        report_checkpoint = None
        with tempfile.TemporaryDirectory(prefix="roadseg-ckpt-") as tmp:
            if rank == 0:
                records = run.append_metrics(run_dir, record)
                storage.write_bytes(storage.join(run_dir, run.CURVES), render_curves(records, s.name))
                metrics = {k: record[k] for k in ("train_loss", "val_miou", "val_pixel_acc", "val_pixels")}
                state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict(), "epoch": epoch}
                ckpt_format.save_checkpoint(tmp, plain, epoch=epoch, metrics=metrics,
                                            train_config=redacted_config(s), input_size=list(s.crop),
                                            train_state=state)
                if record["val_miou"] > best_miou:
                    keep_best(run_dir, tmp, epoch)
                    best_miou = record["val_miou"]
                report_checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({"epoch": epoch, "val_miou": record["val_miou"]}, checkpoint=report_checkpoint,
                             checkpoint_dir_name=run.checkpoint_name(epoch))


def each(batches, on_each):
    """The batches, calling ``on_each(i)`` before handing out the i-th (progress for the driver)."""
    for i, batch in enumerate(batches, 1):
        on_each(i)
        yield batch


def restore(folder: str, model, optimizer, scheduler, scaler) -> int:
    """Load weights and optimizer/schedule/scaler state from a checkpoint folder; returns its epoch."""
    from roadseg_dist.models import checkpoint as ckpt_format

    model.load_state_dict(torch.load(os.path.join(folder, "model.pt"), map_location="cpu", weights_only=True))
    state = ckpt_format.load_train_state(folder)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return int(state["epoch"])


def keep_best(run_dir: str, local_checkpoint: str, epoch: int) -> None:
    """Copy a new best checkpoint into the run dir, then drop the previous best copy.

    meta.json is uploaded last, so a folder without it is an unfinished copy that readers skip.
    """
    target = storage.join(run_dir, run.best_name(epoch))
    names = sorted(os.listdir(local_checkpoint), key=lambda n: n == "meta.json")
    for name in names:
        storage.upload(os.path.join(local_checkpoint, name), storage.join(target, name))
    for url in run.checkpoint_dirs(run_dir):
        folder = url.rsplit("/", 1)[-1]
        if folder.startswith(run.BEST_PREFIX) and folder != run.best_name(epoch):
            storage.remove(url, recursive=True)


def redacted_config(s) -> dict:
    """The settings for meta.json: no credentials even if someone put them in a URL."""
    return {k: (storage.redact(v) if isinstance(v, str) else v) for k, v in s.to_config().items()}

