"""Reading shards for training: the epoch plan, decode + augment, and the Ray Data pipeline.

Flow of one epoch on one training worker::

    plan_epoch(index, world_size, seed, epoch)[rank]      plain code: which samples this rank sees
      -> ReadTask(shard, keys) ...                         grouped by shard, in a new order each epoch
      -> Ray Data: flat_map(read_decode_augment)           CPU tasks anywhere in the cluster, streaming
                                                           each tar from storage (never a local copy)
      -> iter_batches(local shuffle)                       uint8 batches to the worker
      -> to_model_input                                    normalised float on the worker's device

Why the plan is plain code rather than ``streaming_split``: the issue asks that every training
sample is seen exactly once per epoch, in a new but seeded order, with equal splits (DDP needs the
same number of steps everywhere). Deciding the assignment up front from the index makes that a
pure, testable function and the run repeatable; Ray Data still does the expensive part (reading,
decoding, augmenting) in parallel CPU tasks that may run on nodes other than the GPUs. Each rank
reads whole shards except at most two boundary shards it shares with its neighbours.

Validation is split by shard across ranks in plain code (``val_shards_for_rank``): every val sample
exactly once, unequal counts allowed because no gradient is synchronised there.
"""
from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Iterator, Sequence

import cv2
import numpy as np

from roadseg_dist import storage
from roadseg_dist.data.shards import decode_sample, read_samples
from roadseg_dist.labels import IGNORE_INDEX, MEAN, STD


# --- the epoch plan (pure) -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ReadTask:
    """Read these samples (by key) from one shard file (a name relative to the data folder)."""
    shard: str
    keys: tuple[str, ...]


def epoch_order(index, seed: int, epoch: int) -> list[tuple[str, str]]:
    """All (shard, key) pairs of a split in this epoch's order: shards shuffled, keys shuffled within."""
    rng = np.random.default_rng([seed, epoch])
    by_shard = {s: sorted(g) for s, g in index.groupby("shard")["key"]}
    shards = sorted(by_shard)
    order: list[tuple[str, str]] = []
    for i in rng.permutation(len(shards)):
        keys = by_shard[shards[i]]
        order.extend((shards[i], keys[j]) for j in rng.permutation(len(keys)))
    return order


def plan_epoch(index, world_size: int, seed: int, epoch: int) -> list[list[ReadTask]]:
    """Split one epoch's samples into ``world_size`` equal, disjoint, contiguous parts.

    ``N % world_size`` samples (the tail of this epoch's order, so different ones each epoch) are left
    out so that every rank runs the same number of steps.
    """
    order = epoch_order(index, seed, epoch)
    per_rank = len(order) // world_size
    if per_rank == 0:
        raise ValueError(f"the train split has {len(order)} samples, fewer than the {world_size} "
                         f"workers: use fewer workers or more data")
    parts = []
    for rank in range(world_size):
        chunk = order[rank * per_rank:(rank + 1) * per_rank]
        tasks: list[ReadTask] = []
        for shard, key in chunk:
            if tasks and tasks[-1].shard == shard:
                tasks[-1] = ReadTask(shard, tasks[-1].keys + (key,))
            else:
                tasks.append(ReadTask(shard, (key,)))
        parts.append(tasks)
    return parts


def val_shards_for_rank(index, rank: int, world_size: int) -> list[str]:
    """Validation shards of one rank: every shard goes to exactly one rank."""
    return sorted(index["shard"].unique())[rank::world_size]


# --- decode and augment (pure) -------------------------------------------------------------------

def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """Per-sample randomness from (seed, epoch, key): the same augmentation wherever the task runs."""
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])


def random_scale(rgb: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                 scale_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = scale_range
    s = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    if s == 1.0:
        return rgb, label
    h, w = label.shape
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return (cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))


def random_crop(rgb: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                crop: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop HxW at a random place; images smaller than the crop are padded (label 255 = not scored)."""
    ch, cw = crop
    h, w = label.shape
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        h, w = label.shape
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return rgb[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]


def photometric_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s]."""
    if strength <= 0:
        return rgb
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    x = rgb.astype(np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * s + gray
    return np.clip(x, 0, 255).astype(np.uint8)


def augment(rgb: np.ndarray, label: np.ndarray, rng: np.random.Generator, *, crop: tuple[int, int],
            scale_range=(0.5, 2.0), flip: bool = True, jitter: float = 0.2):
    """Training augmentation: random scale, crop, horizontal flip, photometric jitter."""
    rgb, label = random_scale(rgb, label, rng, scale_range)
    rgb, label = random_crop(rgb, label, rng, crop)
    if flip and rng.random() < 0.5:
        rgb, label = rgb[:, ::-1], label[:, ::-1]
    rgb = photometric_jitter(rgb, rng, jitter)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(label)


def to_model_input(images, device=None):
    """uint8 (N, H, W, 3) array/tensor -> normalised float (N, 3, H, W), the models' input contract."""
    from roadseg_dist.models.predict import normalize

    return normalize(images, MEAN, STD, device)


# --- reading shards ------------------------------------------------------------------------------

def read_decode_augment(row: dict, *, seed: int, epoch: int, crop, scale_range, flip,
                        jitter) -> Iterator[dict]:
    """Ray Data ``flat_map`` body: one ReadTask row -> its augmented samples, one at a time (flat memory)."""
    for key, jpg, png in read_samples(row["shard"], list(row["keys"])):
        rgb, label = decode_sample(jpg, png)
        rgb, label = augment(rgb, label, sample_rng(seed, epoch, key), crop=tuple(crop),
                             scale_range=tuple(scale_range), flip=flip, jitter=jitter)
        yield {"key": key, "image": rgb, "label": label}


# --- Ray Data pipeline ---------------------------------------------------------------------------

def train_dataset(data_url: str, tasks: Sequence[ReadTask], *, seed: int, epoch: int, crop,
                  scale_range=(0.5, 2.0), flip: bool = True, jitter: float = 0.2,
                  ingest_cpus: float = 0.5):
    """A Ray Dataset of one rank's augmented samples for one epoch (rows: key, image, label)."""
    import ray.data

    rows = [{"shard": storage.join(data_url, t.shard), "keys": list(t.keys)} for t in tasks]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    body = functools.partial(read_decode_augment, seed=seed, epoch=epoch, crop=tuple(crop),
                             scale_range=tuple(scale_range), flip=flip, jitter=jitter)
    return ds.flat_map(body, num_cpus=ingest_cpus)


def iter_train_batches(dataset, batch_size: int, shuffle_buffer: int, seed: int) -> Iterator[dict]:
    """numpy batches {key, image (N,H,W,3) uint8, label (N,H,W) uint8}, locally shuffled."""
    kwargs = {}
    if shuffle_buffer > 1:
        kwargs = dict(local_shuffle_buffer_size=shuffle_buffer, local_shuffle_seed=seed)
    yield from dataset.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=False,
                                    prefetch_batches=2, **kwargs)


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
