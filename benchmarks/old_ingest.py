"""The training ingest as it was on main before issue 27 (commit 8aa13a5), kept to measure against.

Per rank and epoch a Ray Dataset of read tasks (``from_items``), ``flat_map`` yielding one row dict
per sample (Ray Data builds blocks row by row), augmentation in float32 on the whole rescaled image,
``iter_batches`` with a local shuffle buffer in the consuming process, which also runs the executor.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

from roadseg_dist import storage
from roadseg_dist.data.augment import sample_rng
from roadseg_dist.data.shards import decode_sample, read_samples
from roadseg_dist.labels import IGNORE_INDEX


def random_scale(rgb, label, rng, scale_range):
    lo, hi = scale_range
    s = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    if s == 1.0:
        return rgb, label
    h, w = label.shape
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return (cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))


def random_crop(rgb, label, rng, crop):
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


def photometric_jitter(rgb, rng, strength):
    if strength <= 0:
        return rgb
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    x = rgb.astype(np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * s + gray
    return np.clip(x, 0, 255).astype(np.uint8)


def augment(rgb, label, rng, *, crop, scale_range=(0.5, 2.0), flip=True, jitter=0.2):
    rgb, label = random_scale(rgb, label, rng, scale_range)
    rgb, label = random_crop(rgb, label, rng, crop)
    if flip and rng.random() < 0.5:
        rgb, label = rgb[:, ::-1], label[:, ::-1]
    rgb = photometric_jitter(rgb, rng, jitter)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(label)


def read_decode_augment(row, *, seed, epoch, crop, scale_range, flip, jitter):
    for key, jpg, png in read_samples(row["shard"], list(row["keys"])):
        rgb, label = decode_sample(jpg, png)
        rgb, label = augment(rgb, label, sample_rng(seed, epoch, key), crop=tuple(crop),
                             scale_range=tuple(scale_range), flip=flip, jitter=jitter)
        yield {"key": key, "image": rgb, "label": label}


def train_dataset(data_url, tasks, *, seed, epoch, crop, scale_range=(0.5, 2.0), flip=True, jitter=0.2,
                  ingest_cpus=0.5):
    import ray.data

    rows = [{"shard": storage.join(data_url, t.shard), "keys": list(t.keys)} for t in tasks]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    body = functools.partial(read_decode_augment, seed=seed, epoch=epoch, crop=tuple(crop),
                             scale_range=tuple(scale_range), flip=flip, jitter=jitter)
    return ds.flat_map(body, num_cpus=ingest_cpus)


def iter_train_batches(dataset, batch_size, shuffle_buffer, seed):
    kwargs = {}
    if shuffle_buffer > 1:
        kwargs = dict(local_shuffle_buffer_size=shuffle_buffer, local_shuffle_seed=seed)
    yield from dataset.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=False,
                                    prefetch_batches=2, **kwargs)
