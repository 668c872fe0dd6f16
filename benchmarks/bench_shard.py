"""Sharding throughput beside a plain copy of the same files to the same S3 server.

    .venv/bin/python benchmarks/bench_shard.py [--images 160] [--height 360] [--width 640]

Starts moto's S3 server on loopback, writes a synthetic BDD100K split locally, warms Ray's workers up
on the val split, then measures, in one run: (1) a plain parallel copy of its images and masks to s3://bench/copy, (2) `roadseg shard` of the
same split to s3://bench/shards (Ray tasks; validation, class counts, tar writing and the index
included; Ray's start-up excluded), and (3) the re-run, which only checks the published shards.
Prints MB/s for each and the shard/copy ratio.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                      AWS_DEFAULT_REGION="us-east-1")
    return proc, endpoint


def plain_copy(files: list[str], root: str, dest: str, threads: int) -> None:
    from roadseg_dist import storage

    def one(path):
        storage.upload(path, storage.join(dest, os.path.relpath(path, root)))

    with cf.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, files))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--shard-size", type=int, default=20)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()

    import boto3

    from roadseg_dist.ops.cluster import init_ray, shutdown_ray
    from roadseg_dist.data import bdd100k, synth
    from roadseg_dist.shard import job as shard_job

    proc, endpoint = start_s3()
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "bdd100k")
            t = time.perf_counter()
            synth.generate(root, train=args.images, val=8, height=args.height, width=args.width, videos=0)
            print(f"synthetic split: {args.images} images {args.height}x{args.width} "
                  f"in {time.perf_counter() - t:.1f} s")
            samples = bdd100k.find_samples(root, "train")
            files = [p for s in samples for p in (s.image, s.label)]
            mb = sum(os.path.getsize(p) for p in files) / 1e6

            for attempt in range(3):  # a raylet can miss its 30 s start-up window on a busy machine
                try:
                    init_ray("local", args.cpus)
                    break
                except Exception as exc:  # noqa: BLE001
                    print(f"Ray did not start ({exc}); retrying")
                    shutdown_ray()
            # warm-up: start Ray's worker processes (and their imports) before anything is timed
            shard_job.run(shard_job.ShardSettings(root=root, dest="s3://bench/warmup", split="val", shard_size=2))
            t = time.perf_counter()
            plain_copy(files, root, "s3://bench/copy", threads=int(args.cpus / shard_job.TASK_CPUS))
            copy_s = time.perf_counter() - t

            settings = shard_job.ShardSettings(root=root, dest="s3://bench/shards", split="train",
                                            shard_size=args.shard_size)
            first = shard_job.run(settings)
            again = shard_job.run(settings)
            shutdown_ray()
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    shard_mbs, copy_mbs = mb / first["seconds"], mb / copy_s
    print(f"source files : {len(files)} files, {mb:.1f} MB; {first['shards']} shards of {args.shard_size}; "
          f"{args.cpus} CPUs")
    print(f"plain copy   : {copy_s:6.2f} s  {copy_mbs:7.2f} MB/s  ({int(args.cpus / shard_job.TASK_CPUS)} threads)")
    print(f"shard        : {first['seconds']:6.2f} s  {shard_mbs:7.2f} MB/s  (validate + count + tar + index)")
    print(f"shard re-run : {again['seconds']:6.2f} s  {mb / again['seconds']:7.2f} MB/s  "
          f"({again['skipped']} of {again['shards']} shards already complete, {again['written']} written)")
    print(f"ratio shard/copy: {shard_mbs / copy_mbs:.2f}x")
    print(f"objects written: copy {len(files)}, shard {first['shards'] + 2} ({len(files) / (first['shards'] + 2):.0f}x fewer)")


if __name__ == "__main__":
    main()
