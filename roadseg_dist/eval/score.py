"""Scoring a checkpoint on a sharded split, in parallel on Ray (``roadseg eval`` and ``roadseg compare``).

    plan_reads(index, workers)                       the split's samples as (shard, keys) read tasks
      -> Ray Data: flat_map(read_task_rows)          CPU tasks streaming (key, jpg, png) from storage
      -> map_batches(Scorer, actor pool)             decode, predict at the label's full resolution,
                                                     a confusion matrix per batch (+ masks for --save-preds)
      -> driver: sum the matrices                    metrics.ConfusionMatrix.compute (the BDD100K definitions)
      -> OUT/eval.json, eval.md, iou.png             numbers, a Markdown table, a per-class IoU chart

Prediction (``label_size_masks``, on ``models/predict``) and the reports (``report.py``) are plain
functions; only ``score_split`` touches Ray.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from roadseg_dist import storage
from roadseg_dist.ops import resources, watchdog
from roadseg_dist.errors import JobError
from roadseg_dist.metrics import ConfusionMatrix
from roadseg_dist.ops.watchdog import DEFAULT_STALL_TIMEOUT

READ_TASK_CPUS = 0.25  # a read task streams a tar: mostly waiting on storage


# --- prediction (plain torch) ----------------------------------------------------------------------

def label_size_masks(model, images: Sequence[np.ndarray], meta: dict, *, size: tuple[int, int] | None = None,
                     out_sizes: Sequence[tuple[int, int]] | None = None, device="cpu",
                     channels_last: bool = False) -> list[np.ndarray]:
    """RGB uint8 images (H, W, 3) -> train-id masks (uint8), each at its ``out_sizes`` entry
    (default: the image's own size). Same-sized images go through the model together; with ``size``
    the model runs at that HxW and its logits are resized to the output size. On CUDA under fp16
    autocast, as ``roadseg infer`` runs."""
    import torch.nn.functional as F

    from roadseg_dist.models.checkpoint import input_normalization
    from roadseg_dist.models.predict import INFERENCE_AMP, normalize, predict

    mean, std = input_normalization(meta)
    out_sizes = list(out_sizes or [img.shape[:2] for img in images])
    masks: list[np.ndarray | None] = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault((img.shape, tuple(out_sizes[i])), []).append(i)
    for (shape, out_size), idx in groups.items():
        x = normalize(np.stack([images[i] for i in idx]), mean, std, device)
        if size is not None and tuple(size) != tuple(shape[:2]):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        for i, mask in zip(idx, predict(model, x, out_size, amp=INFERENCE_AMP, channels_last=channels_last)):
            masks[i] = mask
    return masks  # type: ignore[return-value]


# --- the Ray pipeline -------------------------------------------------------------------------------

def plan_reads(index, workers: int, limit: int | None = None) -> list[dict]:
    """The split's samples as read tasks ``{"shard", "keys"}`` in index order, a shard cut into
    pieces where needed so that every model actor gets work (about four tasks per actor).

    A piece re-reads its shard's tar only up to its last key, so the cut costs little."""
    rows = index[["shard", "key"]].itertuples(index=False)
    samples = [(r.shard, r.key) for r in rows][: limit or None]
    per_task = max(1, -(-len(samples) // (4 * workers)))
    shards: dict[str, list[str]] = {}
    for shard, key in samples:
        shards.setdefault(shard, []).append(key)
    tasks = []
    for shard, keys in shards.items():
        pieces = -(-len(keys) // per_task)
        step = -(-len(keys) // pieces)  # equal pieces rather than a short last one
        tasks += [{"shard": shard, "keys": keys[i:i + step]} for i in range(0, len(keys), step)]
    return tasks


def read_task_rows(task: dict, data: str) -> Iterator[dict]:
    """Ray Data ``flat_map`` body: one read task -> its samples as (key, jpg, png) bytes rows."""
    from roadseg_dist.data.shards import read_samples

    for key, jpg, png in read_samples(storage.join(data, task["shard"]), list(task["keys"])):
        yield {"key": key, "jpg": jpg, "png": png}


class Scorer:
    """Model actor: loads the checkpoint once; each batch -> its confusion matrix (flattened)."""

    def __init__(self, checkpoint: str, size=None, save_preds: str | None = None, device: str = "cpu",
                 threads: int = 1, channels_last: bool = False, compile: bool = False):
        import torch

        from roadseg_dist.models.checkpoint import load_model
        from roadseg_dist.models.predict import optimize

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.device, self.channels_last = device, channels_last
        model, self.meta = load_model(checkpoint, device)
        self.model = optimize(model, channels_last=channels_last, compile=compile).eval()
        self.size = size
        self.save_preds = save_preds

    def __call__(self, batch: dict) -> dict:
        from roadseg_dist.data.shards import decode_sample
        from roadseg_dist.render import encode_mask_png

        decoded = [decode_sample(bytes(j), bytes(p)) for j, p in zip(batch["jpg"], batch["png"])]
        images = [rgb for rgb, _ in decoded]
        targets = [label for _, label in decoded]
        preds = label_size_masks(self.model, images, self.meta, size=self.size,
                              out_sizes=[t.shape for t in targets], device=self.device,
                              channels_last=self.channels_last)
        cm = ConfusionMatrix()
        for key, target, pred in zip(batch["key"], targets, preds):
            cm.update(target, pred)
            if self.save_preds:
                storage.write_bytes(storage.join(self.save_preds, f"{key}.png"), encode_mask_png(pred))
        return {"confusion": cm.mat.reshape(1, -1), "images": np.array([len(images)])}


def score_split(checkpoint: str, data: str, split: str = "val", *, size=None, limit: int | None = None,
                batch_size: int = 4, workers: int = 2, cpus_per_worker: float = 1.0, gpu: bool = False,
                save_preds: str | None = None, progress=None, channels_last: bool = False,
                compile: bool = False, stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> tuple[ConfusionMatrix, int]:
    """Run the model over the split on Ray; the summed confusion matrix and the number of images.

    ``progress(done, total)`` is called on the driver as batches finish. Ray must be initialised.
    No scored batch for ``stall_timeout`` seconds raises ``watchdog.StallError`` with a diagnosis.
    """
    import functools

    import ray.data

    from roadseg_dist.data.shards import read_index

    index = read_index(data, split)
    tasks = plan_reads(index, workers, limit)
    if not tasks:
        raise JobError(f"the {split} split under {storage.redact(data)} has no samples")
    total = sum(len(t["keys"]) for t in tasks)
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    ds = ds.flat_map(functools.partial(read_task_rows, data=data), num_cpus=READ_TASK_CPUS)
    ds = ds.map_batches(
        Scorer, batch_size=batch_size, batch_format="numpy",
        # min_size=1: a pool that must start whole could take every CPU and starve the read tasks
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
        num_cpus=cpus_per_worker, num_gpus=1 if gpu else 0,
        fn_constructor_kwargs=dict(checkpoint=checkpoint, size=size, save_preds=save_preds,
                                   device="cuda" if gpu else "cpu", threads=max(1, int(cpus_per_worker)),
                                   channels_last=channels_last, compile=compile))
    cm = ConfusionMatrix()
    done = 0
    dog = watchdog.Watchdog("eval", stall_timeout, pending=lambda: (
        f"scored batches from {workers} model actor(s) x {cpus_per_worker:g} CPU: {done}/{total} images done"))
    with watchdog.watch(dog):
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for flat, n in zip(batch["confusion"], batch["images"]):
                cm.merge(ConfusionMatrix.from_counts(flat))
                done += int(n)
            dog.beat(f"{done}/{total} images scored")
            if progress:
                progress(done, total)
    return cm, done


def plan_scoring(workers: int, cpus_per_worker, gpu: bool, address: str | None, num_cpus,
                 job: str = "eval") -> resources.Plan:
    """Model actors x CPUs (auto or given) plus one read task must fit; starts Ray if needed."""
    from roadseg_dist.ops.cluster import init_ray

    request = resources.Request(
        job=job, workers=workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=1 if gpu else 0,
        task_cpus=READ_TASK_CPUS, task_share=0.25, worker_name="model actor", task_name="read task",
        workers_flag="--workers")
    resources.check_before_start(request, address, num_cpus)
    init_ray(address, num_cpus)
    return resources.plan(request, resources.offer_from_ray(resources.is_local(address), num_cpus))


# --- the job ----------------------------------------------------------------------------------------

def progress_echo(console):
    """Plain progress lines through ``console`` (a rich Console), or None for stdout."""
    return None if console is None else (lambda line: console.print(line, highlight=False, markup=False))
