"""``roadseg shard ROOT DEST --split S``: BDD100K -> WebDataset shards with one Ray task per shard.

    find_samples (pair + list)  ->  plan_shards (by count or bytes)  ->  one Ray task per shard
    (shard_writer.build_shard: read, validate, write a deterministic tar, stage it if it changed)
    ->  any problem: drop the staged shards, raise (DEST as it was)
    ->  else publish: withdraw the index, move staged shards into place, drop stale ones,
        DEST/S-stats.json, DEST/S-index.parquet

Validate, then publish: nothing under DEST changes until every shard of the split is built, so a
re-run over a source with one bad sample leaves the existing dataset exactly as it was. The index is
written last: a destination without it is not a finished dataset. Shards are byte-for-byte
deterministic, so a re-run compares each shard with what is already published and rewrites nothing
that is complete and correct. ``verify`` re-reads every shard in Ray tasks.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import re
import time

from roadseg_dist import storage
from roadseg_dist.data import bdd100k
from roadseg_dist.data.bdd100k import DatasetError
from roadseg_dist.data.shard_writer import build_shard, index_bytes, plan_shards, split_stats
from roadseg_dist.data.shards import check_shard, index_url, read_index, shard_name, stats_url
from roadseg_dist.ops.progress import Progress
from roadseg_dist.ops.watchdog import DEFAULT_STALL_TIMEOUT, Watchdog
from roadseg_dist.shard.settings import ShardSettings

TASK_CPUS = 0.5     # a shard task is mostly I/O and JPEG decoding; leave room for other Ray work
MOVE_THREADS = 8    # staged shards moved into place at once (on S3 a server-side copy each)
INDEX_COLUMNS = ["key", "shard", "bytes", "height", "width", "labelled_pixels", "class_pixels"]


# --- Ray glue -------------------------------------------------------------------------------------

def _run_tasks(remote_fn, calls: list[tuple], workers: int, description: str,
               stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> list:
    """Run ``remote_fn`` over ``calls`` with at most ``workers`` in flight, showing progress on the
    driver; no shard finished for ``stall_timeout`` seconds raises ``StallError`` with a diagnosis."""
    import ray

    results: dict = {}
    pending = {}
    queue = list(enumerate(calls))
    dog = Watchdog(description, stall_timeout, pending=lambda: f"{len(pending)} shard task(s) running, "
                   f"{len(queue)} queued, {len(results)}/{len(calls)} done")
    with Progress(description, len(calls), "shards") as bar:
        while queue or pending:
            while queue and len(pending) < workers:
                i, args = queue.pop(0)
                pending[remote_fn.remote(*args)] = i
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
                dog.beat(f"{len(results)}/{len(calls)} shards done")
            bar.update(len(results))
            dog.check()
    return [results[i] for i in range(len(calls))]


def _check_resources(address: str | None) -> None:
    """One shard task (TASK_CPUS) must fit the connected Ray, or nothing would ever run."""
    from roadseg_dist.ops import resources

    request = resources.Request(job="shard", workers=1, cpus_per_worker=TASK_CPUS, worker_name="shard task",
                                workers_flag="--workers", cpus_flag="the shard task size")
    resources.plan(request, resources.offer_from_ray(resources.is_local(address)))


def _remote(fn):
    """``fn`` as a Ray task; it reaches the storage this driver sees even if that changed since Ray started."""
    import ray
    from roadseg_dist.ops.cluster import storage_settings

    task = ray.remote(num_cpus=TASK_CPUS, max_retries=3)(fn)
    job_env = (ray.get_runtime_context().runtime_env or {}).get("env_vars", {}) or {}
    here = storage_settings()  # where, never keys
    if any(job_env.get(k) != v for k, v in here.items()):
        task = task.options(runtime_env={"env_vars": here})
    return task


def _auto_workers(n_tasks: int) -> int:
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, min(n_tasks, int(cpus / TASK_CPUS)))


# --- the job --------------------------------------------------------------------------------------

def _stale_shards(dest: str, split: str, keep: set[str]) -> list[str]:
    if not storage.exists(dest):
        return []
    pattern = re.compile(rf"{re.escape(split)}-\d{{6}}\.tar$")
    return [u for u in storage.list_files(dest, (".tar",), recursive=False)
            if pattern.fullmatch(u.rsplit("/", 1)[-1]) and u.rsplit("/", 1)[-1] not in keep]


def _publish_if_changed(url: str, data: bytes) -> bool:
    with contextlib.suppress(FileNotFoundError):
        if storage.read_bytes(url) == data:
            return False
    storage.write_bytes(url, data)
    return True


def verify(data_url: str, split: str, workers: int = 0, address: str | None = None) -> dict:
    """Re-read every shard of a finished split in Ray tasks; raise DatasetError on any mismatch."""
    from roadseg_dist.ops.cluster import init_ray

    index = read_index(data_url, split)
    init_ray(address)
    groups = {name: g.to_dict("records") for name, g in index.groupby("shard", sort=True)}
    calls = [(storage.join(data_url, name), rows) for name, rows in groups.items()]
    results = _run_tasks(_remote(check_shard), calls, workers or _auto_workers(len(calls)), f"verify {split}")
    problems = [p for r in results for p in r]
    if problems:
        raise DatasetError(problems, f"the {split!r} shards under {storage.redact(data_url)}")
    return {"verified_shards": len(calls), "verified_samples": int(len(index))}


def staging_url(dest: str, split: str) -> str:
    """Where this split's changed shards wait until all of them are built (not a shard name: no
    reader, nor ``_stale_shards``, ever takes it for part of the dataset)."""
    return storage.join(dest, f".roadseg-staging-{split}")


def _publish(s: "ShardSettings", dest: str, results: list[dict]) -> tuple[int, list[str]]:
    """Move the staged shards into place and drop stale ones (the index withdrawn first), then write
    stats and, last, the index; (total shard bytes, stale shard URLs)."""
    import pandas as pd

    idx_url, staging = index_url(dest, s.split), staging_url(dest, s.split)
    changed = [r["shard"] for r in results if r["changed"]]
    stale = _stale_shards(dest, s.split, {r["shard"] for r in results})  # of an earlier, larger run
    if changed or stale:
        storage.remove(idx_url)  # it no longer describes the shards once one of them changes
        with cf.ThreadPoolExecutor(MOVE_THREADS) as pool:
            list(pool.map(lambda name: storage.move(storage.join(staging, name), storage.join(dest, name)),
                          changed))
        for url in stale:
            storage.remove(url)
    index = pd.DataFrame([row for r in results for row in r["rows"]], columns=INDEX_COLUMNS)
    total_bytes = sum(r["bytes"] for r in results)
    stats = split_stats(s.split, index, total_bytes)
    _publish_if_changed(stats_url(dest, s.split), json.dumps(stats, indent=2).encode())
    _publish_if_changed(idx_url, index_bytes(index))  # last: its presence marks a finished dataset
    return total_bytes, stale


def run(s: ShardSettings) -> dict:
    """Shard one split of a BDD100K root into ``s.dest``; returns a summary. Raises DatasetError,
    leaving ``s.dest`` as it was, when any sample of the split is bad."""
    from roadseg_dist.ops.cluster import init_ray

    root, dest = storage.normalize(s.root), storage.normalize(s.dest)
    init_ray(s.address)
    _check_resources(s.address)
    start = time.perf_counter()  # the throughput figure leaves Ray's start-up out
    samples = bdd100k.find_samples(root, s.split)
    plan = plan_shards(samples, s.shard_size, s.shard_bytes)
    storage.makedirs(dest)
    staging = staging_url(dest, s.split)
    storage.remove(staging, recursive=True)  # what a crashed run left
    calls = [(storage.join(dest, shard_name(s.split, i)), group, storage.join(staging, shard_name(s.split, i)))
             for i, group in enumerate(plan)]
    workers = s.workers or _auto_workers(len(calls))
    try:
        results = _run_tasks(_remote(build_shard), calls, workers, f"shard {s.split}", s.stall_timeout)
        problems = [p for r in results for p in r["problems"]]
        if problems:
            raise DatasetError(problems, f"split {s.split!r} of {storage.redact(root)}; nothing under "
                               f"{storage.redact(dest)} was changed")
        total_bytes, stale = _publish(s, dest, results)
    finally:
        storage.remove(staging, recursive=True)
    seconds = time.perf_counter() - start
    summary = {"split": s.split, "dest": storage.redact(dest), "samples": sum(len(r["rows"]) for r in results),
               "shards": len(results), "written": sum(r["changed"] for r in results),
               "skipped": sum(not r["changed"] for r in results), "removed_stale": len(stale),
               "bytes": total_bytes, "seconds": round(seconds, 2),
               "mb_per_s": round(total_bytes / 1e6 / max(seconds, 1e-9), 2)}
    if s.verify:
        summary.update(verify(dest, s.split, s.workers))
    return summary
