"""Reading BDD100K WebDataset shards: names, the index and stats, samples, decoding, verification.

The format is webdataset's: a tar whose members ``<key>.jpg`` and ``<key>.png`` form one sample.
This module is the read side every stage uses (training ingest, evaluation, ``--verify``); the
writing job lives in ``shard/job.py`` (Ray tasks) and ``data/shard_writer.py`` (one shard).

    read_index(data, split)      the split's index.parquet (one row per sample, in shard order)
    read_stats(data, split)      the split's stats.json (class pixels, frequencies, weights)
    iter_shard(url)              (key, jpg, png) per sample, streamed with webdataset's tar iterators
    read_samples(url, keys)      only the samples named, stopping once all were found
    decode_sample(jpg, png)      (RGB uint8 HxWx3, train-id label uint8 HxW)
    check_shard(url, rows)       a re-read shard compared with its index rows
"""
from __future__ import annotations

import io
import json
import tarfile
from typing import Iterable, Iterator

import numpy as np
from webdataset import tariterators

from roadseg_dist import storage
from roadseg_dist.data import bdd100k

SPLITS = ("train", "val")


# --- names --------------------------------------------------------------------------------------

def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def index_url(data_url: str, split: str) -> str:
    return storage.join(data_url, f"{split}-index.parquet")


def stats_url(data_url: str, split: str) -> str:
    return storage.join(data_url, f"{split}-stats.json")


# --- index and stats ----------------------------------------------------------------------------

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


# --- samples ------------------------------------------------------------------------------------

def iter_shard(shard_url: str) -> Iterator[tuple[str, bytes, bytes]]:
    """Stream a shard: (key, jpg bytes, png bytes) per sample, in stored order. A shard that is not a
    whole tar (cut short, overwritten) is a ``DatasetError`` naming it and the command that rewrites it."""
    try:
        with storage.open_input(shard_url) as f:
            # group_by_keys wants the URL on every member, as webdataset's own url opener adds it
            members = ({**m, "__url__": shard_url} for m in tariterators.tar_file_iterator(f))
            for sample in tariterators.group_by_keys(members):
                key = sample["__key__"].rsplit("/", 1)[-1]
                missing = [ext for ext in ("jpg", "png") if ext not in sample]
                if missing:
                    raise ValueError(f"{storage.redact(shard_url)}: sample {key!r} lacks its {missing[0]} member")
                yield key, sample["jpg"], sample["png"]
    except (tarfile.TarError, EOFError) as exc:
        raise damaged_shard(shard_url, exc) from None


def damaged_shard(shard_url: str, exc: BaseException) -> bdd100k.DatasetError:
    """The one-line error for a shard that cannot be read as a tar, saying how to rewrite it."""
    folder, name = storage.normalize(shard_url).rsplit("/", 1)
    split = name.rsplit("-", 1)[0] if "-" in name else "SPLIT"
    why = str(exc).split(" @ ", 1)[0] or type(exc).__name__  # webdataset appends the file object's repr
    return bdd100k.DatasetError(
        f"shard {storage.redact(shard_url)} is damaged ({why}: cut short, or not a tar written by "
        f"`roadseg shard`); re-run `roadseg shard ROOT {storage.redact(folder)} --split {split}` "
        "to rewrite it")


def read_samples(shard_url: str, keys: Iterable[str] | None = None) -> Iterator[tuple[str, bytes, bytes]]:
    """Stream (key, jpg, png) of one shard, only ``keys`` if given; stops once all were found."""
    wanted = None if keys is None else set(keys)
    for key, jpg, png in iter_shard(shard_url):
        if wanted is None or key in wanted:
            yield key, jpg, png
            if wanted is not None:
                wanted.discard(key)
                if not wanted:
                    return
    if wanted:
        raise ValueError(f"shard {storage.redact(shard_url)} lacks {len(wanted)} sample(s) named in the "
                         f"index (e.g. {sorted(wanted)[0]!r}): re-run `roadseg shard` for this split")


def decode_sample(jpg: bytes, png: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Shard members -> (RGB uint8 HxWx3, train-id label uint8 HxW)."""
    return bdd100k.decode_image(jpg, "jpg member"), bdd100k.decode_mask(png, "png member")


# --- verification -------------------------------------------------------------------------------

def check_shard(shard_url: str, expected: list[dict]) -> list[str]:
    """Re-read a shard and compare it with its index rows: keys, order, sizes, decodable, class counts."""
    where = storage.redact(shard_url)
    try:
        seen = list(iter_shard(shard_url))
    except bdd100k.DatasetError as exc:
        return [str(exc)]
    except (OSError, ValueError, tarfile.TarError) as exc:
        return [f"{where}: cannot be read as a tar of samples ({exc})"]
    keys = [k for k, _, _ in seen]
    want = [r["key"] for r in expected]
    if keys != want:
        missing, extra = sorted(set(want) - set(keys)), sorted(set(keys) - set(want))
        return [f"{where}: holds keys {len(keys)} but the index lists {len(want)} "
                f"(missing {missing[:5]}, unexpected {extra[:5]}, or a different order)"]
    problems = []
    for (key, jpg, png), row in zip(seen, expected):
        problem = _sample_problem(key, jpg, png, row)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems


def _sample_problem(key: str, jpg: bytes, png: bytes, row: dict) -> str | None:
    if len(jpg) + len(png) != row["bytes"]:
        return f"sample {key} has {len(jpg) + len(png)} bytes, the index says {row['bytes']}"
    try:
        image, mask = decode_sample(jpg, png)
    except ValueError as exc:
        return f"sample {key}: {exc}"
    if image.shape[:2] != (row["height"], row["width"]) or \
            bdd100k.class_pixels(mask).tolist() != list(row["class_pixels"]):
        return f"sample {key} does not match its index row (size or class pixels)"
    return None
