"""The Ray side of the training ingest: the dataset Ray Train splits, the epoch clock, a worker's batches.

    driver   clock = epoch_clock()                         a zero-CPU actor: the epoch being read
             TorchTrainer(datasets={"train": train_dataset(...)}, dataset_config=data_config(feed, workers))
    worker   shard = ray.train.get_dataset_shard("train")  (Ray Train's own data path)
             rank 0: start_epoch(clock, epoch); every rank: train_batches(shard, ...)
    Ray Data, in Ray Train's split coordinator, once per epoch:
             EpochSamples.get_read_tasks()                 ingest.epoch_reads(index, world, seed, epoch)
             read tasks (ingest.read_blocks)               numpy blocks -> Arrow tensors, no row records
             streaming_split(world, equal=True)            each block to one rank, equal counts

Why a clock: Ray Train builds the dataset once per worker group and Ray Data executes it again at
every epoch, but the reads depend on the epoch (which samples, each sample's augmentation). Ray Data
starts an epoch only when every rank asked for it, and rank 0 sets the clock before asking, so the
read tasks of an epoch always see that epoch. A restarted worker group sets it again from its
checkpoint's epoch; the clock belongs to the driver, lives on the driver's node and outlives the workers
and the nodes they ran on.
"""
from __future__ import annotations

import functools
import warnings
from typing import Iterator

import numpy as np
import torch
from ray.data import Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.collate_fn import NumpyBatchCollateFn

from roadseg_dist.data import ingest


class EpochClock:
    """The epoch the training workers are about to read (set by rank 0, read by the datasource)."""

    def __init__(self, epoch: int = 1):
        self.epoch = int(epoch)

    def set(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def get(self) -> int:
        return self.epoch


def epoch_clock(first_epoch: int = 1, **actor_options):
    """The clock, at the run's first epoch (Ray Data plans the dataset once when it is created). The driver
    passes where it lives (``ops.cluster.on_this_node()``), so losing a worker's node does not lose it."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(EpochClock).options(**actor_options).remote(first_epoch)


def start_epoch(clock, epoch: int) -> None:
    """Rank 0, before any rank iterates its shard for ``epoch``."""
    import ray

    ray.get(clock.set.remote(epoch))


def _read(shard_url: str, keys: tuple, kwargs: dict):
    for block in ingest.read_blocks(shard_url, keys, **kwargs):
        yield BlockAccessor.batch_to_block(block)


class EpochSamples(Datasource):
    """This epoch's samples of the train split (one or several shard sets, ``ingest.train_sets``: shard
    column = full URLs), one read task per shard, asked anew at each epoch; ``weights`` mix the sets."""

    def __init__(self, index, world: int, clock, *, seed: int, crop, scale_range=(0.5, 2.0),
                 flip: bool = True, jitter: float = 0.2, rows: int = 8, weights: tuple = ()):
        self.world, self.clock, self.seed, self.weights = world, clock, seed, tuple(weights)
        self.index = index[["shard", "key", "set"]].reset_index(drop=True)
        self.kwargs = dict(crop=tuple(crop), scale_range=tuple(scale_range), flip=flip, jitter=jitter, rows=rows)
        self.row_bytes = int(crop[0]) * int(crop[1]) * 4  # RGB + label, uint8

    def get_name(self) -> str:
        return "TrainShards"

    def estimate_inmemory_data_size(self) -> int:
        return (ingest.epoch_size(self.index, self.weights) // self.world) * self.world * self.row_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        import ray

        from roadseg_dist.ops.cluster import quicken_ray_data

        quicken_ray_data()  # this runs where the epoch is executed: Ray Train's split coordinator
        epoch = ray.get(self.clock.get.remote())
        tasks = ingest.epoch_reads(self.index, self.world, self.seed, epoch, self.weights)
        kwargs = {**self.kwargs, "seed": self.seed, "epoch": epoch}
        return [ReadTask(functools.partial(_read, t.shard, t.keys, kwargs),
                         BlockMetadata(num_rows=len(t.keys), size_bytes=len(t.keys) * self.row_bytes,
                                       input_files=None, exec_stats=None),
                         per_task_row_limit=per_task_row_limit)
                for t in tasks]


def train_dataset(index, world: int, clock, feed: ingest.Feed, **augment):
    """The Ray Dataset of the train split (``ingest.train_sets``) that Ray Train splits across ``world``
    ranks, every epoch anew."""
    import ray.data

    source = EpochSamples(index, world, clock, rows=feed.rows, **augment)
    # One block per read task at least (override_num_blocks=1): asked for its default 200 blocks, Ray Data
    # fused a SplitBlocks(20) into the read, so every sample was a block of its own to schedule, split and
    # move (2 cores, 720p: 64 -> 93-97 samples/s, 20 -> 14.5 CPU-ms a sample; the read tasks also overlap).
    # A read task's blocks of ``rows`` samples are then joined by Ray Data up to its target block size (128
    # MiB): a 32-sample shard of 512x1024 crops leaves as one block. Held to ``rows`` samples a block (its
    # target lowered), the first batch of an epoch came twice as soon (0.33 s against 0.67) but every sample
    # cost ~1.5 CPU-ms more: eight blocks a shard to put, split and fetch, not one (rows 4; 2 cores: 106-112
    # against 117-126 samples/s), so the target stays Ray Data's.
    return ray.data.read_datasource(source, num_cpus=feed.task_cpus, override_num_blocks=1)


def data_config(feed: ingest.Feed, workers: int):
    """Ray Train's ``DataConfig``: split the train dataset, decode tasks within the ingest's CPUs."""
    from ray.data import ExecutionOptions, ExecutionResources
    from ray.train import DataConfig

    limits = ExecutionResources(cpu=max(feed.task_cpus, feed.ingest_cpus * workers))
    return DataConfig(datasets_to_split=["train"], execution_options=ExecutionOptions(resource_limits=limits))


class Tensors(NumpyBatchCollateFn):
    """numpy batch -> uint8 tensors without a copy; keys as a (N, L) uint8 tensor of UTF-8 bytes."""

    def __call__(self, batch: dict) -> dict:
        with warnings.catch_warnings():  # Arrow's buffers are read-only; nothing writes to them
            warnings.simplefilter("ignore", UserWarning)
            out = {name: torch.as_tensor(batch[name]) for name in ("image", "label")}
        keys = np.char.encode(np.asarray(batch["key"]).astype(str), "utf-8")
        out["key"] = torch.from_numpy(np.ascontiguousarray(keys).view(np.uint8).reshape(len(keys), -1))
        return out


def batch_keys(batch: dict) -> list[str]:
    """The sample keys of a batch from ``train_batches``."""
    return [bytes(row).rstrip(b"\0").decode() for row in batch["key"].numpy()]


def train_batches(shard, batch_size: int, feed: ingest.Feed, shuffle_buffer: int = 0,
                  seed: int = 0) -> Iterator[dict]:
    """One epoch of a worker's shard: {key, image (N,H,W,3), label (N,H,W)} uint8 CPU tensors, prefetched
    (pinned for CUDA), optionally mixed in a local shuffle buffer."""
    kwargs = {}
    if shuffle_buffer > 1:
        kwargs = dict(local_shuffle_buffer_size=max(shuffle_buffer, batch_size), local_shuffle_seed=seed)
    yield from shard.iter_torch_batches(batch_size=batch_size, prefetch_batches=feed.prefetch_batches,
                                        device="cpu", collate_fn=Tensors(), pin_memory=feed.pin_memory,
                                        drop_last=False, **kwargs)
