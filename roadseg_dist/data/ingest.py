"""Reading shards for training, as plain code: the epoch plan, the sizing of the feed, the read body.

Flow of one epoch (the Ray side is ``data/feed.py``)::

    epoch_reads(index, world, seed, epoch)    this epoch's samples: N % world left out (a different
                                              tail each epoch), grouped by shard, shards shuffled
      -> read_blocks(ReadTask)                 in Ray Data read tasks anywhere in the cluster: stream
                                              the tar, decode + augment (data/augment.py), blocks of
                                              ``rows`` samples in numpy arrays (no row-by-row records),
                                              joined by Ray Data up to its target block size
      -> streaming_split(world, equal=True)    Ray Train's data path: each block to one rank, equal
                                              counts, so every sample at most once per epoch
      -> batches on the worker                 uint8, prefetched, pinned on CUDA; normalised on the device

``plan_epoch`` (a rank's part when ranks read by a fixed plan) stays as the definition of "this epoch's
samples": ``epoch_reads`` is the union of its parts. ``size_feed`` turns the node's CPUs and GPUs into
the ingest's defaults. Validation is split by shard across ranks (``val_shards_for_rank``), decoded in
the worker at full resolution: every val sample exactly once, unequal counts allowed (no gradients).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Sequence

import numpy as np

from roadseg_dist import storage
from roadseg_dist.data.shards import decode_sample, read_samples
from roadseg_dist.labels import MEAN, STD

# --- the epoch plan (pure) -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReadTask:
    """Read these samples (by key) from one shard file (a name relative to the data folder)."""
    shard: str
    keys: tuple[str, ...]


COPY = "#copy"  # a sample's key in its n-th extra copy of an epoch: "key#copy1" (its own augmentation)


def train_sets(sets: Sequence[tuple[str, Any]]):
    """Several shard sets' train indexes (url, index) as one: ``shard`` the shard's full URL, ``set``
    the set's position (what ``weights`` count by)."""
    import pandas as pd

    return pd.concat([index.assign(shard=[storage.join(url, sh) for sh in index["shard"]], set=i)
                      for i, (url, index) in enumerate(sets)], ignore_index=True)


def weighted(index, weights: Sequence[float], rng: np.random.Generator):
    """This epoch's rows of each set: ``round(weight x its size)`` of them, a random subset under 1,
    whole extra copies (keys ``key#copyN``) and a random rest above it."""
    import pandas as pd

    parts = []
    for i, w in enumerate(weights):
        rows = index[index["set"] == i]
        n, want = len(rows), int(round(w * len(rows)))
        for copy in range(want // n + 1 if n else 0):
            take = rows if (copy + 1) * n <= want else rows.iloc[np.sort(rng.permutation(n)[:want - copy * n])]
            parts.append(take.assign(key=take["key"] + f"{COPY}{copy}") if copy else take)
    return pd.concat(parts, ignore_index=True) if parts else index.iloc[:0]


def epoch_size(index, weights: Sequence[float] = ()) -> int:
    """Samples in one epoch of the train split (before the ``N % world`` tail is left out)."""
    if not weights:
        return len(index)
    counts = index["set"].value_counts()
    return sum(int(round(w * counts.get(i, 0))) for i, w in enumerate(weights))


def epoch_order(index, seed: int, epoch: int, weights: Sequence[float] = ()) -> list[tuple[str, str]]:
    """All (shard, key) pairs of a split in this epoch's order: shards shuffled, keys shuffled within;
    with ``weights``, the sets of a ``train_sets`` index mixed by them first (``weighted``)."""
    rng = np.random.default_rng([seed, epoch])
    if weights:
        index = weighted(index, weights, rng)
    by_shard = {s: sorted(g) for s, g in index.groupby("shard")["key"]}
    shards = sorted(by_shard)
    order: list[tuple[str, str]] = []
    for i in rng.permutation(len(shards)):
        keys = by_shard[shards[i]]
        order.extend((shards[i], keys[j]) for j in rng.permutation(len(keys)))
    return order


def _grouped(pairs: Sequence[tuple[str, str]]) -> list[ReadTask]:
    tasks: list[ReadTask] = []
    for shard, key in pairs:
        if tasks and tasks[-1].shard == shard:
            tasks[-1] = ReadTask(shard, tasks[-1].keys + (key,))
        else:
            tasks.append(ReadTask(shard, (key,)))
    return tasks


def plan_epoch(index, world_size: int, seed: int, epoch: int, weights: Sequence[float] = ()) -> list[list[ReadTask]]:
    """Split one epoch's samples into ``world_size`` equal, disjoint, contiguous parts.

    ``N % world_size`` samples (the tail of this epoch's order, so different ones each epoch) are left
    out so that every rank runs the same number of steps.
    """
    order = epoch_order(index, seed, epoch, weights)
    per_rank = len(order) // world_size
    if per_rank == 0:
        raise ValueError(f"the train split has {len(order)} samples, fewer than the {world_size} "
                         f"workers: use fewer workers or more data")
    return [_grouped(order[rank * per_rank:(rank + 1) * per_rank]) for rank in range(world_size)]


def epoch_reads(index, world_size: int, seed: int, epoch: int, weights: Sequence[float] = ()) -> list[ReadTask]:
    """The read tasks of one epoch for all ranks together: one per shard, the epoch's shard order.

    The same samples as the union of ``plan_epoch``'s parts; which rank trains on which block is then
    decided by Ray Data's streaming split (equal counts), not by the plan.
    """
    parts = plan_epoch(index, world_size, seed, epoch, weights)
    merged: dict[str, list[str]] = {}
    for part in parts:
        for task in part:
            merged.setdefault(task.shard, []).extend(task.keys)
    return [ReadTask(shard, tuple(keys)) for shard, keys in merged.items()]


def val_shards_for_rank(index, rank: int, world_size: int) -> list[str]:
    """Validation shards of one rank: every shard goes to exactly one rank."""
    return sorted(index["shard"].unique())[rank::world_size]


# --- sizing the feed (pure) ----------------------------------------------------------------------

GPU_WORKER_CPUS = 2.0     # a GPU worker's own process: the Python loop, NCCL, copies to the device
MAX_PREFETCH_BYTES = 512 * 2**20


@dataclasses.dataclass(frozen=True)
class Feed:
    """How the ingest runs beside the training workers (``size_feed``)."""
    ingest_cpus: float        # decode/augment CPUs per training worker: Ray Data's limit is this x workers
    task_cpus: float          # CPUs one decode/augment task reserves
    prefetch_batches: int     # batches each worker fetches ahead
    pin_memory: bool          # page-locked host batches (CUDA): asynchronous copies to the GPU
    rows: int                 # samples a read task decodes into one numpy block (Ray Data joins them: feed.py)

    def describe(self, workers: int) -> str:
        return (f"ingest: {self.ingest_cpus:g} CPU of decode/augment per worker ({self.ingest_cpus * workers:g} "
                f"in all, tasks of {self.task_cpus:g} CPU), prefetch {self.prefetch_batches} batch(es)"
                + (", pinned host memory" if self.pin_memory else ""))


def worker_share(cpus: float, workers: int, gpu: bool) -> float:
    """``--cpus-per-worker auto``'s share of the CPUs left to the ingest: half on CPUs (the workers
    compute too), on GPUs all but ``GPU_WORKER_CPUS`` per worker (the GPU computes)."""
    if not gpu or cpus <= 0:
        return 0.5
    return max(0.5, 1.0 - GPU_WORKER_CPUS * workers / cpus)


def size_feed(cpus: float, workers: int, cpus_per_worker: float, *, gpu: bool, ingest_cpus="auto",
              prefetch="auto", batch_bytes: int = 0, rows: int = 8) -> Feed:
    """The ingest's defaults from what the cluster offers and what the workers took.

    auto ingest: what the workers leave, shared by them (2 cores, 2 CPU workers of 0.5: 0.5 each).
    Tasks of 1 CPU (OpenCV runs single-threaded in them), smaller only when the whole ingest has less:
    more tasks than cores make Ray keep more worker processes than the node's soft limit, and it kills
    the idle ones between epochs, so every epoch starts new processes (measured on 2 cores: 64 CPU-ms a
    sample with 0.5-CPU tasks, 37 with 1-CPU tasks). Prefetch: 4 batches on GPUs, 2 on CPUs (the step
    is slow there), at most 512 MiB a worker.
    """
    if ingest_cpus == "auto":
        ingest_cpus = max(0.0, cpus - workers * cpus_per_worker) / workers
        ingest_cpus = math.floor(ingest_cpus / 0.05 + 1e-9) * 0.05
    ingest_cpus = float(ingest_cpus)
    total = ingest_cpus * workers
    task_cpus = round(min(1.0, total), 2)
    if prefetch == "auto":
        prefetch = 4 if gpu else 2
        if batch_bytes:
            prefetch = max(1, min(prefetch, MAX_PREFETCH_BYTES // batch_bytes))
    return Feed(ingest_cpus=round(ingest_cpus, 2), task_cpus=task_cpus, prefetch_batches=int(prefetch),
                pin_memory=gpu, rows=rows)


# --- reading -------------------------------------------------------------------------------------

def read_blocks(shard_url: str, keys: Sequence[str], **augment_kwargs) -> Iterator[dict]:
    """One read task's body: stream a shard, decode + augment its ``keys`` into numpy blocks."""
    import cv2

    from roadseg_dist.data.augment import decode_augment

    cv2.setNumThreads(1)  # a task reserves its CPUs; OpenCV's own threads would take others'
    asked: dict[str, list[str]] = {}  # a sample read once, augmented once per copy asked for
    for key in keys:
        asked.setdefault(key.split(COPY)[0], []).append(key)
    samples = ((k, jpg, png) for key, jpg, png in read_samples(shard_url, list(asked)) for k in asked[key])
    yield from decode_augment(samples, **augment_kwargs)


def to_model_input(images, device=None):
    """uint8 (N, H, W, 3) array/tensor -> normalised float (N, 3, H, W), the models' input contract."""
    from roadseg_dist.models.predict import normalize

    return normalize(images, MEAN, STD, device)


def iter_val_batches(data_url: str, shards: Sequence[str], batch_size: int) -> Iterator[dict]:
    """Full-resolution validation batches of the given shards; a batch never mixes image sizes."""
    keys, images, labels = [], [], []

    def flush():
        batch = {"key": np.array(keys), "image": np.stack(images), "label": np.stack(labels)}
        keys.clear(), images.clear(), labels.clear()
        return batch

    for shard in shards:
        for key, jpg, png in read_samples(storage.join(data_url, shard)):
            rgb, label = decode_sample(jpg, png)
            if images and (len(images) == batch_size or images[0].shape != rgb.shape):
                yield flush()
            keys.append(key), images.append(rgb), labels.append(label)
    if images:
        yield flush()
