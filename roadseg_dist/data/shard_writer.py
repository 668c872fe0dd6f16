"""Writing one shard: read and validate its samples, write a deterministic tar, publish it if it changed.

Runs inside one Ray task of ``shard/job.py`` (and in plain tests). The tar is webdataset's
``TarWriter`` with every header field fixed (mtime 0, mode 0644, uid/gid 0, no user names, GNU
format), so the same samples always give the same bytes and a re-run can compare before it writes.
A task never touches the published dataset: a shard that changed goes to a staging URL, and the job
moves it into place only once every shard of the split is known to be good.

    plan_shards(samples, size, bytes)         samples (key order) -> groups, one per shard
    load_sample(sample)                       (jpg, train-id png, index row), or ValueError naming the file
    build_shard(url, samples, staging_url)    write one shard, stage it if it differs from ``url``
    split_stats(split, index, bytes)          totals, class frequencies and ENet-style class weights
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import os
import tarfile
from typing import BinaryIO

import numpy as np
import webdataset as wds

from roadseg_dist import labels, storage
from roadseg_dist.data import bdd100k
from roadseg_dist.data.bdd100k import Sample

READ_THREADS = 4    # source reads in flight per shard task


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


def tar_writer(fileobj: BinaryIO) -> wds.TarWriter:
    """A webdataset TarWriter whose headers never vary: the same samples always give the same bytes."""
    writer = wds.TarWriter(fileobj, user="", group="", mode=0o644, mtime=0, encoder=False, format="GNU_FORMAT")
    # webdataset 1.0.2 takes `format` but opens the tar with Python's default (PAX); our shards are GNU
    writer.tarstream.format = tarfile.GNU_FORMAT
    return writer


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


def _write_samples(tmp: str, samples: list[Sample], shard: str) -> tuple[list[dict], list[str]]:
    """Write the loadable samples to the tar ``tmp``, in key order; (index rows, problems)."""
    rows, problems = [], []
    # a few reads in flight hide object-store latency; the tar is still written in key order
    with open(tmp, "wb") as f, tar_writer(f) as tar, cf.ThreadPoolExecutor(READ_THREADS) as pool:
        for sample, loaded in zip(samples, pool.map(_load_or_problem, samples)):
            if isinstance(loaded, str):
                problems.append(loaded)
                continue
            jpg, png, row = loaded
            tar.write({"__key__": sample.key, "jpg": jpg, "png": png})
            rows.append({**row, "shard": shard})
    return rows, problems


def build_shard(shard_url: str, samples: list[Sample], staging_url: str) -> dict:
    """Validate and write one shard; when it differs from what ``shard_url`` holds, upload it to
    ``staging_url`` (the job publishes staged shards once no shard of the split has a problem).

    Returns {"shard", "rows", "problems", "changed", "bytes"}. With problems, nothing is staged.
    """
    name = shard_url.rsplit("/", 1)[-1]
    with storage.local_temp(prefix="roadseg-shard-", suffix=".tar") as tmp:
        rows, problems = _write_samples(tmp, samples, name)
        size = os.path.getsize(tmp)
        changed = not problems and not _same_file(tmp, shard_url)
        if changed:
            storage.upload(tmp, staging_url)
    return {"shard": name, "rows": rows, "problems": problems, "changed": changed, "bytes": size}


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
