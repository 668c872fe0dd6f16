"""One shard's bytes through webdataset (our writer and reader) beside a bare ``tarfile`` loop.

    .venv/bin/python benchmarks/bench_shard_io.py [--samples 200] [--size 360x640] [--repeats 5]

Shards are written with webdataset's ``TarWriter`` and read with its tar iterators (``data/shards``);
this measures what the library costs over the plain standard-library loop doing the same work, on
the same in-memory samples (no validation; both read through ``storage.open_input``), and checks
that both writers give the same bytes. Prints MB/s of each and the ratio; best of --repeats.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: page cache, imports
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def plain_write(path: str, samples) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, jpg, png in samples:
            for ext, data in (("jpg", jpg), ("png", png)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
                tar.addfile(info, io.BytesIO(data))


def plain_read(path: str) -> int:
    from roadseg_dist import storage

    n = 0  # opened like iter_shard opens a shard, so only the tar iteration differs
    with storage.open_input(path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            n += len(tar.extractfile(member).read())
    return n


def main() -> None:
    import numpy as np

    from roadseg_dist.data import shard_writer, shards, synth
    from roadseg_dist.settings import parse_size

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--size", default="360x640")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    h, w = parse_size(args.size)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(args.samples):
        rgb, label = synth.render_scene(rng, h, w)
        samples.append((f"{i:06d}", synth.encode_jpg(rgb), synth.encode_png(label)))

    with tempfile.TemporaryDirectory() as tmp:
        ours, plain = os.path.join(tmp, "ours.tar"), os.path.join(tmp, "plain.tar")

        def ours_write():
            with open(ours, "wb") as f, shard_writer.tar_writer(f) as tar:
                for key, jpg, png in samples:
                    tar.write({"__key__": key, "jpg": jpg, "png": png})

        timings = {"write": (best_seconds(ours_write, args.repeats),
                             best_seconds(lambda: plain_write(plain, samples), args.repeats)),
                   "read": (best_seconds(lambda: sum(1 for _ in shards.iter_shard(ours)), args.repeats),
                            best_seconds(lambda: plain_read(plain), args.repeats))}
        mb = os.path.getsize(ours) / 1e6
        same = open(ours, "rb").read() == open(plain, "rb").read()
    print(f"{args.samples} samples {h}x{w}, one shard of {mb:.1f} MB; best of {args.repeats}")
    for what, (w_ours, w_plain) in timings.items():
        print(f"{what:5s}: webdataset {mb / w_ours:7.0f} MB/s   tarfile {mb / w_plain:7.0f} MB/s   "
              f"ratio {w_plain / w_ours:.2f}x")
    print(f"same bytes from both writers: {same}")


if __name__ == "__main__":
    main()
