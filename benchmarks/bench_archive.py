"""Benchmark of `roadseg infer` on archives of many short clips, side by side in one run:

  one file vs clips   the same real frames (OpenCV's vtest.avi re-encoded to H.264, 795 frames at 10
                      frames/s) as one file and as 1-second clips, segmented with the same model and
                      settings: frames/s of each and their ratio (goal >= 0.8)
  driver per source   `roadseg infer --outputs stats` (no image files, a near-free model: what is left is
                      the per-source work) over 1,000 and 10,000 tiny clips: the driver's peak RSS and CPU
                      seconds, per source (flat = the driver does not grow with the archive)
  S3 requests         the 1,000-clip run again on the loopback S3 server: requests per source, the
                      driver's and the tasks' apart (each through its own counting proxy)

The driver is `roadseg infer` in its own process on a Ray this script starts, so its peak RSS and
CPU (os.wait4) are the driver's alone.

    .venv/bin/python benchmarks/bench_archive.py [--sources 1000,10000] [--s3-sources 1000]
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

import av
import numpy as np
import torch

from roadseg_dist.models.checkpoint import save_checkpoint
from roadseg_dist.models.zoo import build_model

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def h264(frames: list[np.ndarray], path: str, fps: int = 10) -> str:
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"bf": "2", "g": str(fps), "preset": "veryfast"}
        s.codec_context.time_base = Fraction(1, fps)
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="bgr24")
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


def vtest_frames() -> list[np.ndarray]:
    with av.open(VTEST) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


def usage_cpu(proc) -> float:
    return proc.rusage.ru_utime + proc.rusage.ru_stime


def usage_rss(proc) -> float:
    return proc.peak_rss / 2 ** 20


class Tracked(subprocess.Popen):
    """A Popen that keeps the child's CPU (os.wait4 when it is reaped) and samples its own RSS (the
    kernel's ru_maxrss also counts the short-lived helpers a process forks)."""

    def __init__(self, *args, **kwargs):
        import threading

        super().__init__(*args, **kwargs)
        self.peak_rss = 0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        import psutil

        try:
            me = psutil.Process(self.pid)
            while self.returncode is None:
                self.peak_rss = max(self.peak_rss, me.memory_info().rss)
                time.sleep(0.1)
        except psutil.Error:
            return

    def _try_wait(self, wait_flags):
        pid, status, self.rusage = os.wait4(self.pid, wait_flags)
        return pid, status


def run_driver(args: list[str], address: str, env: dict | None = None) -> tuple[float, float, float, str]:
    cmd = [sys.executable, "-m", "roadseg_dist.cli", "infer", *args, "--address", address, "--no-view"]
    t0 = time.perf_counter()
    proc = Tracked(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or os.environ.copy(), text=True)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        raise SystemExit(f"roadseg infer failed ({proc.returncode}):\n{err[-3000:]}")
    return seconds, usage_cpu(proc), usage_rss(proc), out


def frames_per_second(out: str) -> float:
    import json

    report = json.load(open(os.path.join(out, "report.json")))
    return report["frames_this_run"] / report["seconds"]


def one_file_vs_clips(root: str, ckpt: str, address: str) -> None:
    frames = vtest_frames()
    os.makedirs(os.path.join(root, "one"))
    h264(frames, os.path.join(root, "one", "vtest.mp4"))
    clips = os.path.join(root, "clips")
    os.makedirs(clips)
    for k in range(0, len(frames), 10):
        h264(frames[k:k + 10], os.path.join(clips, f"vtest-{k // 10:03d}.mp4"))
    run_driver([ckpt, os.path.join(root, "one"), os.path.join(root, "warm")], address)  # workers and imports warm
    rates = {}
    for name in ("one", "clips"):
        seconds, _, _, _ = run_driver([ckpt, os.path.join(root, name), os.path.join(root, f"out-{name}")], address)
        rates[name] = frames_per_second(os.path.join(root, f"out-{name}"))
        print(f"  {name:>5}: {len(frames)} frames in {len(os.listdir(os.path.join(root, name)))} file(s), "
              f"{rates[name]:.2f} frames/s ({seconds:.1f} s with the driver's start)", flush=True)
    print(f"one file vs 1-second clips: clips / one file = {rates['clips'] / rates['one']:.2f} (goal >= 0.8)")


def tiny_archive(folder: str, n: int, clip: str) -> None:
    for i in range(n):
        day = os.path.join(folder, f"day{i // 1000:02d}")
        os.makedirs(day, exist_ok=True)
        os.link(clip, os.path.join(day, f"clip{i:05d}.mp4"))


def driver_per_source(root: str, address: str, counts: list[int]) -> str:
    ckpt = os.path.join(root, "ckpt-free")
    save_checkpoint(ckpt, build_model("unet", base_channels=2), input_size=(24, 32))
    clip = h264([np.full((64, 96, 3), 60 * i, np.uint8) for i in range(2)], os.path.join(root, "tiny.mp4"))
    print(f"{'sources':>8} {'seconds':>8} {'sources/s':>10} {'driver CPU s':>13} {'CPU ms/source':>14} "
          f"{'peak RSS MB':>12} {'RSS KB/source':>14}")
    for n in counts:
        folder = os.path.join(root, f"tiny{n}")
        tiny_archive(folder, n, clip)
        seconds, cpu, rss, _ = run_driver([ckpt, folder, os.path.join(root, f"out-tiny{n}"), "--outputs", "stats"],
                                          address)
        print(f"{n:>8} {seconds:8.1f} {n / seconds:10.1f} {cpu:13.1f} {1000 * cpu / n:14.2f} {rss:12.0f} "
              f"{1024 * rss / n:14.1f}", flush=True)
    return clip


def s3_requests(root: str, ckpt: str, clip: str, n: int) -> None:
    """Requests per source at two proxies: one in front of the driver, one in front of the Ray workers."""
    sys.path.insert(0, TESTS)
    from faulty_s3_proxy import FaultyProxy

    from roadseg_dist import storage
    from roadseg_dist.ops.cluster import init_ray, shutdown_ray
    from roadseg_dist.demo import loopback_s3

    class Counting(FaultyProxy):
        def __init__(self, upstream):
            super().__init__(upstream, every=1 << 30)
            self.kinds: collections.Counter = collections.Counter()

        def _forward(self, request: bytes) -> bytes:
            line = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            kind = "LIST" if line[0] == "GET" and "list-type" in line[1] else line[0]
            with self.lock:
                self.kinds[kind] += 1
            return super()._forward(request)

    with loopback_s3("bench-archive") as bucket:
        upstream = os.environ["AWS_ENDPOINT_URL"]
        data = open(clip, "rb").read()
        fs, _ = storage.filesystem(bucket)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: storage.write_bytes(f"{bucket}/in/day{i // 1000:02d}/clip{i:05d}.mp4", data),
                          range(n)))
        storage.write_bytes(f"{bucket}/ckpt/meta.json", storage.read_bytes(os.path.join(ckpt, "meta.json")))
        storage.upload(os.path.join(ckpt, "model.pt"), f"{bucket}/ckpt/model.pt")
        with Counting(upstream) as for_driver, Counting(upstream) as for_tasks:
            os.environ["AWS_ENDPOINT_URL"] = for_tasks.endpoint  # what the Ray this starts passes its workers
            storage.s3fs_filesystem.cache_clear()
            shutdown_ray()
            init_ray()
            import ray

            address = ray.get_runtime_context().gcs_address
            env = {**os.environ, "AWS_ENDPOINT_URL": for_driver.endpoint}
            run_driver([f"{bucket}/ckpt", f"{bucket}/in", f"{bucket}/out", "--outputs", "stats"], address, env)
            for who, proxy in (("driver", for_driver), ("tasks", for_tasks)):
                kinds = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(proxy.kinds.items()))
                print(f"S3 requests per source, {who}: {sum(proxy.kinds.values()) / n:.2f} ({kinds})")
            shutdown_ray()
            os.environ["AWS_ENDPOINT_URL"] = upstream


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", default="1000,10000", help="tiny-clip archive sizes for the driver figures")
    ap.add_argument("--s3-sources", type=int, default=1000, help="tiny clips on loopback S3 (0: skip)")
    ap.add_argument("--no-clips", action="store_true", help="skip the one-file vs clips comparison")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="bench-archive-")
    try:
        torch.manual_seed(0)
        ckpt = os.path.join(root, "ckpt")
        save_checkpoint(ckpt, build_model("unet", base_channels=16), input_size=(192, 256))
        from roadseg_dist.ops.cluster import init_ray, shutdown_ray

        init_ray()
        import ray

        address = ray.get_runtime_context().gcs_address
        print(f"{os.cpu_count()} cpus; unet-16 at 192x256 (the bench_infer model); each `roadseg infer` a driver "
              "process of its own on one local Ray", flush=True)
        if not args.no_clips:
            one_file_vs_clips(root, ckpt, address)
        clip = driver_per_source(root, address, [int(x) for x in args.sources.split(",") if x])
        shutdown_ray()
        if args.s3_sources:
            s3_requests(root, os.path.join(root, "ckpt-free"), clip, args.s3_sources)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
