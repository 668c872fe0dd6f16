"""BDD100K as WebDataset shards: writing them with Ray tasks, reading and verifying them.

Flow of ``roadseg shard ROOT DEST --split S`` (``run_shard``):

    find_samples (pair + list)  ->  plan_shards (by count or bytes)  ->  one Ray task per shard:
        read sources, validate, write a deterministic tar to a temp file, publish it under its final
        name unless the same bytes are already there  ->  DEST/S-stats.json  ->  DEST/S-index.parquet

The index is written last: a destination without it is not a finished dataset. Shards are
byte-for-byte deterministic (fixed tar headers, sorted keys), so a re-run compares each shard with
what is already published and rewrites nothing that is complete and correct.

Read side, for training and evaluation: ``shard_urls``, ``read_index``, ``read_stats``, ``iter_shard``,
``decode_sample``.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import io
import json
import os
import re
import tarfile
import tempfile
import time
from typing import Iterator

import numpy as np

from roadseg_dist import labels, settings, storage
from roadseg_dist.data import bdd100k
from roadseg_dist.data.bdd100k import DatasetError, Sample

SPLITS = ("train", "val")
TASK_CPUS = 0.5     # a shard task is mostly I/O and JPEG decoding; leave room for other Ray work
READ_THREADS = 4    # source reads in flight per shard task


# --- names --------------------------------------------------------------------------------------

def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def index_url(data_url: str, split: str) -> str:
    return storage.join(data_url, f"{split}-index.parquet")


def stats_url(data_url: str, split: str) -> str:
    return storage.join(data_url, f"{split}-stats.json")


# --- read API -----------------------------------------------------------------------------------

def read_index(data_url: str, split: str):
    """The split's index as a pandas DataFrame (one row per sample, in shard order)."""
    import pandas as pd

    url = index_url(data_url, split)
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise FileNotFoundError(f"{storage.redact(url)} does not exist: {storage.redact(data_url)} holds no finished "
                                f"{split!r} shards (run `roadseg shard ROOT {storage.redact(data_url)} "
                                f"--split {split}`)") from None
    return pd.read_parquet(io.BytesIO(data))


def read_stats(data_url: str, split: str) -> dict:
    return json.loads(storage.read_text(stats_url(data_url, split)))


def shard_urls(data_url: str, split: str) -> list[str]:
    """URLs of the split's shards, from its index (so only a finished dataset is read)."""
    names = read_index(data_url, split)["shard"].drop_duplicates().tolist()
    return [storage.join(data_url, name) for name in names]


def iter_shard(shard_url: str) -> Iterator[tuple[str, bytes, bytes]]:
    """Stream a shard: (key, jpg bytes, png bytes) per sample, in stored order."""
    key, parts = None, {}
    with storage.open_input(shard_url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            k, _, ext = base.partition(".")
            if k != key:
                if key is not None:
                    yield _complete(shard_url, key, parts)
                key, parts = k, {}
            parts[ext.lower()] = tar.extractfile(member).read()
    if key is not None:
        yield _complete(shard_url, key, parts)


def _complete(shard_url: str, key: str, parts: dict) -> tuple[str, bytes, bytes]:
    if "jpg" not in parts or "png" not in parts:
        raise ValueError(f"{storage.redact(shard_url)}: sample {key!r} lacks its "
                         f"{'jpg' if 'jpg' not in parts else 'png'} member")
    return key, parts["jpg"], parts["png"]


def decode_sample(jpg: bytes, png: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Shard members -> (RGB uint8 HxWx3, train-id label uint8 HxW)."""
    return bdd100k.decode_image(jpg, "jpg member"), bdd100k.decode_mask(png, "png member")


# --- settings -----------------------------------------------------------------------------------

def parse_bytes(text) -> int | None:
    """``"256MB"``, ``"1GiB"``, ``"5e8"`` or an int -> bytes."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([\d.e+]+)\s*([kmgt]?)(i?b?)\s*", str(text).lower())
    if not m:
        import click
        raise click.BadParameter(f"{text!r} is not a size in bytes: write e.g. 500000000, 256MB or 1GiB")
    value = float(m.group(1))
    power = " kmgt".index(m.group(2) or " ")
    base = 1024 if m.group(3).startswith("i") else 1000
    return int(value * base ** power)


@dataclasses.dataclass
class ShardSettings:
    root: str = settings.field(help="BDD100K root (local path, file:// or s3://)", argument=True)
    dest: str = settings.field(help="where the shards go (local path, file:// or s3://)", argument=True)
    split: str = settings.field("train", help="which split to shard", choices=SPLITS)
    shard_size: int = settings.field(256, help="samples per shard")
    shard_bytes: int | None = settings.field(None, help="bytes per shard instead of --shard-size, e.g. 256MB",
                                             parse=parse_bytes)
    workers: int = settings.field(0, help="shard tasks running at once (0: as many as the cluster's CPUs allow)")
    verify: bool = settings.field(False, help="re-read every shard afterwards and check it against the index")
    address: str | None = settings.field(None, help="Ray address; default RAY_ADDRESS or a local Ray")

    def validate(self) -> None:
        import click

        if self.shard_size < 1:
            raise click.BadParameter(f"--shard-size must be at least 1, got {self.shard_size}")
        if self.shard_bytes is not None and self.shard_bytes < 1:
            raise click.BadParameter(f"--shard-bytes must be positive, got {self.shard_bytes}")
        if self.workers < 0:
            raise click.BadParameter(f"--workers must be 0 (auto) or more, got {self.workers}")
        if self.split not in SPLITS:
            raise click.BadParameter(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")


# --- planning -----------------------------------------------------------------------------------

def plan_shards(samples: list[Sample], shard_size: int, shard_bytes: int | None = None) -> list[list[Sample]]:
    """Split samples (in key order) into shards of ``shard_size`` samples, or of about ``shard_bytes``."""
    if shard_bytes is None:
        return [samples[i:i + shard_size] for i in range(0, len(samples), shard_size)]
    groups, current, used = [], [], 0
    for s in samples:
        if current and used + s.nbytes > shard_bytes:
            groups.append(current)
            current, used = [], 0
        current.append(s)
        used += s.nbytes
    if current:
        groups.append(current)
    return groups


# --- one shard (runs in a Ray task) ---------------------------------------------------------------

def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # fixed header fields so the same samples always give the same bytes
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def load_sample(sample: Sample) -> tuple[bytes, bytes, dict]:
    """Read and validate one sample: (jpg bytes, train-id png bytes, index row without ``shard``)."""
    jpg = storage.read_bytes(sample.image)
    raw = storage.read_bytes(sample.label)
    image_name, label_name = storage.redact(sample.image), storage.redact(sample.label)
    image = bdd100k.decode_image(jpg, image_name)
    if sample.label_kind == "colormap":
        png, mask = bdd100k.colormap_to_mask_png(raw, label_name)
    else:
        png, mask = raw, bdd100k.decode_mask(raw, label_name)
    bdd100k.check_pair(image, mask, image_name, label_name)
    counts = bdd100k.class_pixels(mask)
    row = {"key": sample.key, "bytes": len(jpg) + len(png), "height": int(mask.shape[0]),
           "width": int(mask.shape[1]), "labelled_pixels": int(counts.sum()), "class_pixels": counts.tolist()}
    return jpg, png, row


def _load_or_problem(sample: Sample):
    """``load_sample``, or the problem it found as one line naming the file."""
    try:
        return load_sample(sample)
    except FileNotFoundError as exc:
        return f"{storage.redact(str(exc.filename or exc))}: file disappeared during the run"
    except ValueError as exc:
        return str(exc)


def _same_file(local: str, url: str) -> bool:
    """Is the object at ``url`` byte-identical to the local file? (size first, then the bytes)"""
    try:
        if storage.size(url) != os.path.getsize(local):
            return False
    except FileNotFoundError:
        return False
    with open(local, "rb") as a, storage.open_input(url) as b:
        while True:
            x = a.read(1 << 20)
            y = b.read(len(x)) if x else b.read(1)
            if x != y:
                return False
            if not x:
                return True


def build_shard(shard_url: str, samples: list[Sample], index_to_invalidate: str) -> dict:
    """Validate and write one shard; publish it only if the destination does not already hold it.

    Returns {"shard", "rows", "problems", "written", "bytes"}. With problems, nothing is published.
    """
    name = shard_url.rsplit("/", 1)[-1]
    rows, problems = [], []
    fd, tmp = tempfile.mkstemp(prefix="roadseg-shard-", suffix=".tar")
    os.close(fd)
    try:
        # a few reads in flight hide object-store latency; the tar is still written in key order
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar, cf.ThreadPoolExecutor(READ_THREADS) as pool:
            for sample, loaded in zip(samples, pool.map(_load_or_problem, samples)):
                if isinstance(loaded, str):
                    problems.append(loaded)
                    continue
                jpg, png, row = loaded
                _tar_add(tar, f"{sample.key}.jpg", jpg)
                _tar_add(tar, f"{sample.key}.png", png)
                rows.append({**row, "shard": name})
        size = os.path.getsize(tmp)
        written = False
        if not problems and not _same_file(tmp, shard_url):
            # the published index no longer describes the shards once one of them changes
            storage.remove(index_to_invalidate)
            storage.upload(tmp, shard_url)
            written = True
        return {"shard": name, "rows": rows, "problems": problems, "written": written, "bytes": size}
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def check_shard(shard_url: str, expected: list[dict]) -> list[str]:
    """Re-read a shard and compare it with its index rows: keys, order, sizes, decodable, class counts."""
    where = storage.redact(shard_url)
    problems, seen = [], []
    try:
        for key, jpg, png in iter_shard(shard_url):
            seen.append((key, jpg, png))
    except (OSError, ValueError, tarfile.TarError) as exc:
        return [f"{where}: cannot be read as a tar of samples ({exc})"]
    keys = [k for k, _, _ in seen]
    want = [r["key"] for r in expected]
    if keys != want:
        missing, extra = sorted(set(want) - set(keys)), sorted(set(keys) - set(want))
        return [f"{where}: holds keys {len(keys)} but the index lists {len(want)} "
                f"(missing {missing[:5]}, unexpected {extra[:5]}, or a different order)"]
    for (key, jpg, png), row in zip(seen, expected):
        if len(jpg) + len(png) != row["bytes"]:
            problems.append(f"{where}: sample {key} has {len(jpg) + len(png)} bytes, the index says {row['bytes']}")
            continue
        try:
            image, mask = decode_sample(jpg, png)
        except ValueError as exc:
            problems.append(f"{where}: sample {key}: {exc}")
            continue
        if image.shape[:2] != (row["height"], row["width"]) or \
                bdd100k.class_pixels(mask).tolist() != list(row["class_pixels"]):
            problems.append(f"{where}: sample {key} does not match its index row (size or class pixels)")
    return problems


# --- stats --------------------------------------------------------------------------------------

def split_stats(split: str, index, shard_bytes: int) -> dict:
    """Totals, class frequencies and suggested class weights (ENet's 1/ln(1.02 + f), mean 1 over present)."""
    counts = np.zeros(labels.NUM_CLASSES, np.int64)
    for row in index["class_pixels"]:
        counts += np.asarray(row, np.int64)
    total = int(counts.sum())
    freq = counts / total if total else np.zeros(labels.NUM_CLASSES)
    present = counts > 0
    weights = np.zeros(labels.NUM_CLASSES)
    weights[present] = 1.0 / np.log(1.02 + freq[present])
    if present.any():
        weights[present] /= weights[present].mean()
    return {
        "split": split, "samples": int(len(index)), "shards": int(index["shard"].nunique()), "bytes": int(shard_bytes),
        "labelled_pixels": total, "class_pixels": counts.tolist(),
        # lists of 19 in class order, like class_pixels, so they drop straight into a loss weight tensor
        "class_frequency": [round(float(f), 8) for f in freq],
        "class_weights": [round(float(w), 6) for w in weights],
    }


def index_bytes(index) -> bytes:
    buf = io.BytesIO()
    index.to_parquet(buf, index=False)
    return buf.getvalue()


def _publish_if_changed(url: str, data: bytes) -> bool:
    with contextlib.suppress(FileNotFoundError):
        if storage.read_bytes(url) == data:
            return False
    storage.write_bytes(url, data)
    return True


# --- the job --------------------------------------------------------------------------------------

def _run_tasks(remote_fn, calls: list[tuple], workers: int, description: str) -> list:
    """Run ``remote_fn`` over ``calls`` with at most ``workers`` in flight; a progress bar on the driver."""
    import ray
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: dict = {}
    pending = {}
    queue = list(enumerate(calls))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as progress:
        bar = progress.add_task(description, total=len(calls))
        while queue or pending:
            while queue and len(pending) < workers:
                i, args = queue.pop(0)
                pending[remote_fn.remote(*args)] = i
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
                progress.advance(bar)
    return [results[i] for i in range(len(calls))]


def _remote(fn):
    """``fn`` as a Ray task; it reaches the storage this driver sees even if that changed since Ray started."""
    import ray
    from roadseg_dist.cluster import storage_settings

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


def _stale_shards(dest: str, split: str, keep: set[str]) -> list[str]:
    if not storage.exists(dest):
        return []
    pattern = re.compile(rf"{re.escape(split)}-\d{{6}}\.tar$")
    return [u for u in storage.list_files(dest, (".tar",), recursive=False)
            if pattern.fullmatch(u.rsplit("/", 1)[-1]) and u.rsplit("/", 1)[-1] not in keep]


def verify(data_url: str, split: str, workers: int = 0, address: str | None = None) -> dict:
    """Re-read every shard of a finished split in Ray tasks; raise DatasetError on any mismatch."""
    from roadseg_dist.cluster import init_ray

    index = read_index(data_url, split)
    init_ray(address)
    groups = {name: g.to_dict("records") for name, g in index.groupby("shard", sort=True)}
    remote = _remote(check_shard)
    calls = [(storage.join(data_url, name), rows) for name, rows in groups.items()]
    results = _run_tasks(remote, calls, workers or _auto_workers(len(calls)), f"verify {split}")
    problems = [p for r in results for p in r]
    if problems:
        raise DatasetError(problems, f"the {split!r} shards under {storage.redact(data_url)}")
    return {"verified_shards": len(calls), "verified_samples": int(len(index))}


def run_shard(s: ShardSettings) -> dict:
    """Shard one split of a BDD100K root into ``s.dest``; returns a summary. Raises DatasetError."""
    import pandas as pd
    from roadseg_dist.cluster import init_ray

    root, dest = storage.normalize(s.root), storage.normalize(s.dest)
    init_ray(s.address)
    start = time.perf_counter()  # the throughput figure leaves Ray's start-up out
    samples = bdd100k.find_samples(root, s.split)
    plan = plan_shards(samples, s.shard_size, s.shard_bytes)
    storage.makedirs(dest)
    idx_url = index_url(dest, s.split)
    remote = _remote(build_shard)
    calls = [(storage.join(dest, shard_name(s.split, i)), group, idx_url) for i, group in enumerate(plan)]
    workers = s.workers or _auto_workers(len(calls))
    results = _run_tasks(remote, calls, workers, f"shard {s.split}")

    problems = [p for r in results for p in r["problems"]]
    if problems:
        raise DatasetError(problems, f"split {s.split!r} of {storage.redact(root)}; no index was written")
    stale = _stale_shards(dest, s.split, {r["shard"] for r in results})
    if stale:  # shards of an earlier, larger run of this split
        storage.remove(idx_url)
        for url in stale:
            storage.remove(url)
    index = pd.DataFrame([row for r in results for row in r["rows"]],
                         columns=["key", "shard", "bytes", "height", "width", "labelled_pixels", "class_pixels"])
    total_bytes = sum(r["bytes"] for r in results)
    stats = split_stats(s.split, index, total_bytes)
    _publish_if_changed(stats_url(dest, s.split), json.dumps(stats, indent=2).encode())
    _publish_if_changed(idx_url, index_bytes(index))  # last: its presence marks a finished dataset
    seconds = time.perf_counter() - start
    summary = {"split": s.split, "dest": storage.redact(dest), "samples": len(index), "shards": len(results),
               "written": sum(r["written"] for r in results), "skipped": sum(not r["written"] for r in results),
               "removed_stale": len(stale), "bytes": total_bytes, "seconds": round(seconds, 2),
               "mb_per_s": round(total_bytes / 1e6 / max(seconds, 1e-9), 2)}
    if s.verify:
        summary.update(verify(dest, s.split, s.workers))
    return summary
