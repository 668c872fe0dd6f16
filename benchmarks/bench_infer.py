"""Benchmark of `roadseg infer`: side by side in one run, on a real OpenCV sample video (vtest.avi,
795 frames of 768x576), the same model and size everywhere:

  model-only        the model as infer's actors run it (BatchNorm folded, at the precision --amp auto
                    picks: bf16 on CPUs with native bf16, fp16 on GPUs) on frames already decoded in
                    memory (torch threads = all cores)
  sequential        a plain loop: decode a frame, run the model (as loaded), write mask PNG, colour PNG,
                    overlay JPEG
  read_videos peer  what a Ray user writes from Ray's docs: ray.data.read_videos + map_batches (model
                    actor, torch threads = all cores) + map_batches writing the same three files
  roadseg infer     the job with its defaults (also overlay.mp4 as H.264 and the stats), warm
  ratios            roadseg infer / each of the three
  fp32 line         the same at float32 everywhere: model-only and roadseg infer with --amp off
  confidence        roadseg infer with the confidence columns (the default) / with --no-confidence,
                    4 pairs in ABBA order, pooled; the model actors' and the machine's CPU-ms per
                    frame in those runs; and the CPU-ms per frame they add, timed directly
  tuned loop        the sequential loop with the model exactly as infer's actors run it (folded, at
                    --amp auto's precision): what the pipeline adds over a loop doing the same maths
  hops              bytes per frame between processes: decode -> model input (the same process),
                    unit -> model actor, model actor -> unit, full frames anywhere; and the model
                    actor's CPU-ms per frame outside the model (from the run's report.json)
  CPU-ms per 720p frame by stage, one thread (vtest's first 240 frames scaled to 1280x720, H.264 with
                    B-frames), the model's mask a road scene's labels at its size (an untrained model's
                    is near-uniform or noise): decode, resize to the model's size, mask + colour PNG,
                    overlay JPEG, H.264 video, stats; the total is what a unit spends per frame outside
                    the model
  near-free model   roadseg infer on that 720p clip with a model that costs almost nothing (U-Net, 2
                    base channels, at 24x32): e2e (the median of 3 warm runs) against the CPU ceiling
                    (cores / the stage total at that size), and where the machine's CPU went in that
                    run, per frame: unit tasks, model actors, the driver, Ray's own processes, idle;
                    when its frames were written (its first, its steady rate between 10 % and 90 % of
                    them, its last: start-up and end parted from what an archive's frames see); the
                    same units in plain processes side by side (no Ray, no model), and in plain Ray
                    tasks through warm model actors (the job's core)
  bytes read / object size for an S3 video (loopback moto server) cut into 10+ frame ranges

    .venv/bin/python benchmarks/bench_infer.py [--copies 2] [--size 192x256] [--model unet]
        [--base-channels 16] [--gpu]
"""
from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from fractions import Fraction

import av
import cv2
import numpy as np
import torch

from roadseg_dist import settings, storage
from roadseg_dist.data import synth
from roadseg_dist.infer import pipeline, plan, video_out
from roadseg_dist.video import decode as frames
from roadseg_dist import render
from roadseg_dist.infer.process import Target, Work, process
from roadseg_dist.infer.segment import predict_masks, preprocess
from roadseg_dist.infer.settings import InferSettings
from roadseg_dist.models.checkpoint import load_model, save_checkpoint
from roadseg_dist.models.predict import fold_batchnorm, inference_amp, normalize
from roadseg_dist.models.zoo import build_model

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
MODEL_ONLY_FRAMES = 1600  # the model-only pace settles within a few hundred frames
TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def cut(src: str, dst: str, n: int) -> str:
    """The first ``n`` frames of ``src`` as a new file, packets copied (the real encoding, no re-encode)."""
    with av.open(src) as inp, av.open(dst, "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for i, packet in enumerate(inp.demux(inp.streams.video[0])):
            if i >= n:
                break
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst


def decode_all(path: str) -> list[np.ndarray]:
    return [f for _, _, f in frames.decode_range(path, frames.FrameRange(0, block=1 << 20))]


def model_only(model, decoded, size, mean, std, batch: int, device: str, amp: str) -> float:
    """Frames/s of the model alone. On a CPU the frames are shrunk to the model's size in the loop; on a
    GPU they are shrunk beforehand (as a GPU actor receives them), so the figure is the GPU's own pace:
    the uint8 batch to the device, normalised there, the model, the masks back."""
    if device == "cuda":
        small = [render.model_input(decoded[i:i + batch], size) for i in range(0, len(decoded), batch)]
        batches = lambda: (normalize(b, mean, std, device) for b in small)  # noqa: E731
    else:
        batches = lambda: (preprocess(decoded[i:i + batch], size, mean, std)  # noqa: E731
                           for i in range(0, len(decoded), batch))
    for x in itertools.islice(batches(), 3):  # warm-up (cuDNN picks its algorithms)
        predict_masks(model, x, device, amp=amp)
    t0 = time.perf_counter()
    for x in batches():
        predict_masks(model, x, device, amp=amp)
    if device == "cuda":
        torch.cuda.synchronize()
    return len(decoded) / (time.perf_counter() - t0)


def loop_amp(device: str) -> str:
    """What the loop and the peer run at: float32 on a CPU, fp16 autocast on a GPU (as a user would)."""
    return "fp16" if device == "cuda" else "off"


def write_three(frame: np.ndarray, mask_small: np.ndarray, out: str, name: str) -> None:
    mask = render.resize_mask(mask_small, frame.shape[0], frame.shape[1])
    for kind, data in render.render_frame(frame, mask, {"mask", "color", "overlay"}).items():
        with open(os.path.join(out, f"{name}_{kind}{render.OUTPUTS[kind].extension}"), "wb") as f:
            f.write(data)


def tuned(ckpt: str, device: str) -> torch.nn.Module:
    """The model as infer's actors run it: BatchNorm folded. (Its input is already NHWC in memory, the
    permuted uint8 frames, so convolutions take oneDNN's / cuDNN's NHWC path without --channels-last.)"""
    return fold_batchnorm(load_model(ckpt, device=device)[0].eval())


def sequential(model, videos: list[str], out: str, size, mean, std, device: str, amp: str | None = None) -> float:
    amp = loop_amp(device) if amp is None else amp
    t0, n = time.perf_counter(), 0
    for v, video in enumerate(videos):
        cap = cv2.VideoCapture(video)
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            mask = predict_masks(model, preprocess([frame], size, mean, std), device, amp=amp)[0]
            write_three(frame, mask, out, f"{v}_{n:06d}")
            n += 1
    return n / (time.perf_counter() - t0)


class PeerModel:
    def __init__(self, ckpt: str, size, device: str):
        torch.set_num_threads(os.cpu_count() or 1)
        self.model, meta = load_model(ckpt, device=device)
        self.size, self.device = size, device
        self.mean, self.std = meta["normalization"]["mean"], meta["normalization"]["std"]

    def __call__(self, batch):
        bgr = [f[..., ::-1] for f in batch["frame"]]
        batch["mask"] = predict_masks(self.model, preprocess(bgr, self.size, self.mean, self.std), self.device,
                                      amp=loop_amp(self.device))
        return batch


def peer_write(batch, out: str):
    for i in range(len(batch["frame_index"])):
        write_three(np.ascontiguousarray(batch["frame"][i][..., ::-1]), batch["mask"][i], out,
                    f"{abs(hash(batch['path'][i])) % 1000}_{int(batch['frame_index'][i]):06d}")
    return {"n": np.array([len(batch["frame_index"])])}


def read_videos_peer(videos, ckpt, out, size, batch: int, gpu: bool) -> float:
    import ray.data

    t0 = time.perf_counter()
    ds = ray.data.read_videos(videos, include_paths=True)
    ds = ds.map_batches(PeerModel, fn_constructor_args=(ckpt, size, "cuda" if gpu else "cpu"), batch_size=batch,
                        compute=ray.data.ActorPoolStrategy(size=1), num_gpus=1 if gpu else 0)
    n = sum(int(r["n"]) for r in ds.map_batches(peer_write, fn_args=(out,), batch_size=batch).iter_rows())
    return n / (time.perf_counter() - t0)


def h264_720p(path: str, n: int = 60, src: str = VTEST) -> str:
    """A 720p H.264 clip with B-frames: vtest's frames scaled up, so the encoder sees real texture."""
    src = decode_all(src)[:n]
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt, s.options = 1280, 720, "yuv420p", {"bf": "3", "g": "25", "preset": "veryfast"}
        s.codec_context.time_base = Fraction(1, 25)
        for i, f in enumerate(src):
            frame = av.VideoFrame.from_ndarray(cv2.resize(f, (1280, 720)), format="bgr24")
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


CLIP_FRAMES = 240  # the per-stage clip: 10 s of 720p
STAGES = ("decode", "resize to the model", "mask+colour PNG", "overlay JPEG", "H.264 video", "stats")


def cpu_by_stage(video: str, mask_small: np.ndarray, out: str, process_ms: list | None = None) -> dict[str, float]:
    """CPU-ms per frame of each stage a unit runs, on this thread's CPU clock (every stage runs on the
    calling thread: OpenCV, the decoder and x264 are set to one thread), the model replaced by a fixed
    mask: the work of ``process._Sink.write`` taken apart, with overlay.mp4 encoded as a whole source's is.
    ``process_ms`` receives the whole process's CPU-ms per frame over the same span: well above the
    total, something else in this process (a leftover thread) was using CPU meanwhile."""
    cv2.setNumThreads(1)
    t = dict.fromkeys(STAGES, 0.0)
    n, size = 0, mask_small.shape
    p0 = time.process_time()
    stream = video_out.OverlayStream(os.path.join(out, "overlay.mp4"), 25.0, faststart=True)
    it = frames.decode_range(video, frames.FrameRange(0, block=1 << 20), planes=True)  # as a unit decodes
    while True:
        c = [time.thread_time()]
        got = next(it, None)
        c.append(time.thread_time())
        if got is None:
            break
        frame = got[2]
        render.model_input([frame], size)
        c.append(time.thread_time())
        rendered = render.Rendered(frame, mask_small)  # as process._Sink.write renders
        files = render.encode_files(rendered, {"mask", "color"})
        c.append(time.thread_time())
        files["overlay"] = render.encode_jpeg(rendered.overlay)
        c.append(time.thread_time())
        stream.add(rendered.overlay)
        c.append(time.thread_time())
        render.upsampled_fractions(mask_small, frame.shape[0], frame.shape[1])
        c.append(time.thread_time())
        for k, stage in enumerate(STAGES):
            t[stage] += c[k + 1] - c[k]
        n += 1
    c0 = time.thread_time()
    stream.close()
    t["H.264 video"] += time.thread_time() - c0
    if process_ms is not None:
        process_ms.append(1000 * (time.process_time() - p0) / n)
    return {k: 1000 * v / n for k, v in t.items()}


def scene_mask(size: tuple[int, int]) -> np.ndarray:
    """A road scene's train ids at the model's size (the synthetic generator's street: road, sidewalk,
    buildings, cars, people, sky), standing in for a trained model's mask: the PNG, overlay JPEG, H.264
    and stats costs depend on the mask, and an untrained model's is near-uniform or noise."""
    return synth.render_scene(np.random.default_rng(0), *size)[1].astype(np.uint8)


def default_target(out: str, size: tuple[int, int]) -> Target:
    """What a unit writes at infer's default outputs: mask, colour and overlay files, H.264 overlay.mp4, stats."""
    return Target(out, ("mask", "color", "overlay"), "h264", True, size, model="bench")


def fixed_masks(mask: np.ndarray):
    """A unit's ``submit`` whose model answers ``mask`` for every frame (confidence 1)."""
    return lambda x: (lambda m=np.repeat(mask[None], len(x), 0): (m, np.ones((len(x), 2), np.float32)))


def unit_cpu_ms(video: str, size: tuple[int, int], out: str) -> float:
    """CPU-ms per frame of one real unit (``process.process``: decode, resize, files, overlay.mp4,
    stats) on one thread, the model replaced by a fixed mask (``scene_mask``): the stages plus their glue."""
    mask = scene_mask(size)
    target = default_target(out, size)
    c0 = time.process_time()
    row = process(Work("unit", url=video), target, fixed_masks(mask))
    return 1000 * (time.process_time() - c0) / row["frames"]


class GpuUtilisation:
    """nvidia-smi's GPU utilisation sampled every 0.2 s while the block runs (nothing without ``on``)."""

    def __init__(self, on: bool):
        self.on, self.samples = on, []

    def __enter__(self):
        if self.on:
            import subprocess

            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "200"], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        if self.on:
            self.proc.terminate()
            out = self.proc.communicate()[0]
            self.samples = [float(x) for x in out.split() if x.replace(".", "").isdigit()]

    def summary(self) -> str:
        u = self.samples
        return f"mean {np.mean(u):.0f} %, median {np.median(u):.0f} %, {len(u)} samples" if u else "no samples"


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent (every process, every core): what a run costs, read
    before and after it on a quiet machine. Summing the processes below this one missed Ray's workers
    that exited during the run (they are not this process's to reap) and printed negative figures."""
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq"))


class ProcessCpu:
    """CPU seconds of every process on the machine while the block runs, by what it is: unit tasks
    (Ray's task workers: units, probes, joins), model actors, the driver (this process), Ray's own
    processes and actors, and the rest; plus the cores' idle time. Each process is read every 0.5 s
    and its last reading kept, so a worker that exits during the run still counts (up to 0.5 s)."""

    KINDS = ("unit tasks", "model actors", "driver", "Ray's own", "other", "idle")

    def __enter__(self):
        import threading

        self.seen, self.start, self.stop = {}, self._read(), threading.Event()
        self.t0, self.machine0 = time.perf_counter(), machine_cpu_s()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _loop(self):
        while not self.stop.wait(0.5):
            self.seen.update(self._read())

    @staticmethod
    def _read() -> dict:
        import psutil

        out = {}
        for p in psutil.process_iter(["name", "cmdline"]):
            try:
                t = p.cpu_times()
                out[p.pid] = (ProcessCpu._kind(p.pid, " ".join(p.info["cmdline"] or [p.info["name"] or ""])), t.user + t.system)
            except psutil.Error:
                continue
        return out

    @staticmethod
    def _kind(pid: int, title: str) -> str:
        if pid == os.getpid():
            return "driver"
        if title.startswith("ray::Segmenter"):
            return "model actors"
        if title.startswith("ray::") and not title.startswith(("ray::_", "ray::Dashboard", "ray::RuntimeEnv")):
            return "unit tasks"
        return "Ray's own" if "ray" in title else "other"

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.seen.update(self._read())
        self.wall, self.machine = time.perf_counter() - self.t0, machine_cpu_s() - self.machine0

    def per_frame(self, frames: int) -> dict[str, float]:
        """CPU-ms per frame by kind; "other" is what the machine spent beyond the processes read."""
        out = dict.fromkeys(self.KINDS, 0.0)
        for pid, (kind, cpu) in self.seen.items():
            out[kind] += cpu - self.start.get(pid, (kind, 0.0))[1]
        out["other"] += max(0.0, self.machine - sum(out.values()))
        out["idle"] = max(0.0, self.wall * (os.cpu_count() or 1) - self.machine)
        return {k: 1000 * v / max(1, frames) for k, v in out.items()}


def s3_bytes_ratio(video: str, segment: int) -> tuple[int, int, int]:
    """(ranges, bytes served, object size) for probe + every range of ``video`` read from loopback S3."""
    sys.path.insert(0, TESTS)
    from faulty_s3_proxy import FaultyProxy

    from roadseg_dist.demo import loopback_s3

    served = [0]

    class Counting(FaultyProxy):
        def _forward(self, request: bytes) -> bytes:
            reply = super()._forward(request)
            if request.startswith(b"GET ") and b"drive.mov" in request.split(b"\r\n", 1)[0]:
                served[0] += len(reply.partition(b"\r\n\r\n")[2])
            return reply

    with loopback_s3("bench-infer") as bucket:
        url = bucket + "/drive.mov"
        storage.upload(video, url)
        with Counting(os.environ["AWS_ENDPOINT_URL"], every=1 << 30) as proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
            storage.s3fs_filesystem.cache_clear()  # a client for the proxy's endpoint
            info = frames.probe(url)
            ranges = plan.plan_ranges(info, segment)
            for rng in ranges:
                for _ in frames.decode_range(url, rng):
                    pass
        return len(ranges), served[0], info.size


def hops(report: dict, size: tuple[int, int]) -> None:
    """Bytes per frame between processes, from what the run's model actors counted (report.json)."""
    import pickle

    a = report.get("model_actors") or {}
    if not a:
        print("hops: the run reported no model-actor figures")
        return
    n = max(1, int(a["frames_per_call"]))
    x, m = np.zeros((n, *size, 3), np.uint8), np.zeros((n, *size), np.uint8)
    framing = [len(pickle.dumps(v, protocol=5, buffer_callback=lambda b: None)) / n for v in (x, m)]
    bytes_in, bytes_out = a["bytes_in_per_frame"] + framing[0], a["bytes_out_per_frame"] + framing[1]
    ideal = size[0] * size[1] * 4  # model input (RGB) + mask (one byte a pixel), at the model's size
    print(f"hops, bytes per frame: decode -> model input 0 (one process); unit -> model actor {bytes_in:,.0f}; "
          f"model actor -> unit {bytes_out:,.0f}; full-resolution frames between processes 0; into and out of "
          f"the model actor / (model input + mask) = {(bytes_in + bytes_out) / ideal:.2f} (goal <= 1.2; "
          f"{a['frames_per_call']} frames a call)")
    print(f"model actor CPU-ms per frame outside the model: {a['cpu_ms_per_frame_outside_model']:.2f}")


def confidence_cost(job, first_with: tuple[float, dict], model, size, amp: str, batch: int, pairs: int) -> None:
    """infer's frames/s with the confidence columns (the default) and with --no-confidence, in ``pairs``
    pairs run back to back in ABBA order (with-without, without-with, ...): on a 2-core machine single
    runs of the same job drift by +-10%, far more than the effect, so the figure is the pooled one
    (all frames over all seconds of each arm) beside each pair's ratio. Beside them, from the same runs,
    the model actors' CPU-ms a frame and the machine's CPU-ms a frame, and the frames/s ratio those
    predict for a CPU-bound run (machine CPU without / (without + what the confidence adds)); and what
    the confidence adds to the model actor's work, timed directly on one thread: the ids and
    probabilities (``top_class``) against the ids alone (``max``), on this model's logits."""
    from roadseg_dist.models.predict import inference_autocast, normalize, top_class

    runs = {True: [(*first_with, float("nan"))], False: []}
    for i in range(2 * pairs - 1):
        conf = (i % 4) in (2, 3)  # (with) without | without with | with without | ...: the first with ran
        c0 = machine_cpu_s()
        fps, report = job(f"out-conf{i}", confidence=conf)
        runs[conf].append((fps, report, 1000 * (machine_cpu_s() - c0) / max(1, report["frames_this_run"])))
    fps = {k: [r[0] for r in v] for k, v in runs.items()}
    pooled = {k: sum(r[1]["frames_this_run"] for r in v) / sum(r[1]["frames_this_run"] / r[0] for r in v)
              for k, v in runs.items()}
    ratios = [w / n for w, n in zip(fps[True], fps[False])]
    model_ms = {k: float(np.nanmedian([r[1].get("model_actors", {}).get("model_cpu_ms_per_frame", np.nan)
                                       for r in v])) for k, v in runs.items()}
    machine_ms = {k: float(np.nanmedian([r[2] for r in v])) for k, v in runs.items()}
    added = model_ms[True] - model_ms[False]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a CPU model actor
    # as the actors make it: normalize's NHWC memory, so CPU bf16 logits come back channels_last
    x = normalize(torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8))
    with torch.inference_mode():
        t0 = time.thread_time()
        with inference_autocast(x.device, amp):
            logits = model(x)
        forward = time.thread_time() - t0
        took = {"ids": [], "confidence": []}
        for _ in range(9):
            for name, f in (("ids", lambda: logits.max(1).indices), ("confidence", lambda: top_class(logits))):
                t0 = time.thread_time()
                f()
                took[name].append(time.thread_time() - t0)
    torch.set_num_threads(threads)
    ms = {k: 1000 * float(np.median(v)) / batch for k, v in took.items()}
    print(f"confidence columns: roadseg infer frames/s with them (the default) "
          f"{', '.join(f'{v:.2f}' for v in fps[True])}; with --no-confidence {', '.join(f'{v:.2f}' for v in fps[False])} "
          f"({pairs} pairs, ABBA); pooled with / without {pooled[True] / pooled[False]:.3f} (goal >= 0.95; pairs "
          f"{', '.join(f'{r:.3f}' for r in ratios)}); model actors' model CPU-ms a frame {model_ms[True]:.2f} with, "
          f"{model_ms[False]:.2f} without (+{added:.2f}) of the machine's {machine_ms[False]:.1f} a frame: "
          f"CPU-bound ratio {machine_ms[False] / (machine_ms[False] + added):.3f}; "
          f"one thread, per frame: ids {ms['ids']:.2f} CPU-ms, ids + confidence {ms['confidence']:.2f}: "
          f"+{ms['confidence'] - ms['ids']:.2f} CPU-ms beside the forward pass's {1000 * forward / batch:.1f}",
          flush=True)


def node_cpu_ceiling(fps: float, unit_ms: float) -> None:
    """On a GPU node: the job's frames/s against what its unit tasks' CPUs can render at one real
    unit's CPU-ms per frame (the CPUs beside the GPU actors'): near 1, the node's CPUs are the limit."""
    tasks = max(1, (os.cpu_count() or 2) - torch.cuda.device_count())  # sizing.size_actors: 1 CPU per GPU actor
    ceiling = tasks * 1000 / unit_ms
    print(f"GPU node: roadseg infer {fps:.1f} frames/s; its {tasks} unit tasks' CPU ceiling {tasks} / {unit_ms:.1f} "
          f"CPU-ms = {ceiling:.1f} frames/s: e2e / CPU ceiling {fps / ceiling:.2f}", flush=True)


def _core_unit(work: Work, target: Target, actors: list) -> int:
    import cv2

    from roadseg_dist.infer.graph import Models

    cv2.setNumThreads(1)  # as the job's unit tasks
    return process(work, target, Models(actors))["frames"]


def core_rate(s: InferSettings, videos: list[str], size: tuple[int, int], out: str) -> float:
    """frames/s of the job's core alone: its sizing and model actors (warm), one plain Ray task per
    source running ``process.process`` through them as a unit does, and nothing else: no Ray Data, no
    driver loop, no process start-up, no probes or commits. e2e against it: what the job adds around it."""
    import ray
    from ray import cloudpickle

    from roadseg_dist.infer import graph, sizing as sizing_mod

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import benchmarks/
    sizing = sizing_mod.sizing_for(s)
    actors = graph.start_models(s, sizing, s.checkpoint, size)
    try:
        ray.get([a.ready.remote() for a in actors])
        target = default_target(out, size)
        unit = ray.remote(num_cpus=sizing.task_cpus)(_core_unit)
        t0 = time.perf_counter()
        frames = sum(ray.get([unit.remote(Work(f"v{i}", url=v), target, actors) for i, v in enumerate(videos)]))
        return frames / (time.perf_counter() - t0)
    finally:
        graph.stop_models(actors)


NEAR_FREE_RUNS = 3  # the median of these: one run on 2 cores varies by +-15 %
STEADY = (0.1, 0.9)  # the share of a job's frames between which its steady rate is read


def _plain_unit(video: str, mask: np.ndarray, out: str) -> int:
    """One source through ``process.process`` as a unit runs it, the model replaced by ``mask``, in a
    plain process (no Ray): the stages and their glue, files written."""
    import cv2

    cv2.setNumThreads(1)  # as the job's unit tasks
    return process(Work(os.path.basename(video), url=video), default_target(out, mask.shape), fixed_masks(mask))["frames"]


def plain_rate(videos: list[str], mask: np.ndarray, out: str) -> float:
    """frames/s of the sources through ``_plain_unit`` in as many plain processes as there are cores,
    side by side (started before timing): what the machine's cores give the stages at once."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    cpus = os.cpu_count() or 1
    with ProcessPoolExecutor(cpus, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(time.sleep, [0.5] * cpus))  # every process started and its imports done
        t0 = time.perf_counter()
        frames = sum(pool.map(_plain_unit, videos, [mask] * len(videos), [out] * len(videos)))
        return frames / (time.perf_counter() - t0)


def frame_times(out: str, t0: float) -> list[float]:
    """Seconds from ``t0`` (``time.time()``) at which each frame's mask file was written, sorted."""
    folders = [os.path.join(d.path, "mask") for d in os.scandir(out) if d.is_dir()]
    return sorted(e.stat().st_mtime - t0 for f in folders if os.path.isdir(f) for e in os.scandir(f))


def steady_rate(times: list[float]) -> float:
    """frames/s between the STEADY shares of a job's frames: past its start-up, before its last units."""
    a, b = (int(q * (len(times) - 1)) for q in STEADY)
    return (b - a) / max(1e-9, times[b] - times[a])


def near_free(args, root: str, job) -> None:
    """roadseg infer on the 720p clip (x copies) with a model that costs almost nothing, against the CPU
    ceiling of the stages at its size: the median of NEAR_FREE_RUNS warm runs; when its frames were
    written (their mask files' times: the job's start-up, its steady rate while every unit runs, its
    end); where the machine's CPU went (``ProcessCpu``); and the same stages in plain processes side by
    side (``plain_rate``) and in the job's core (``core_rate``)."""
    size = (24, 32)
    torch.manual_seed(0)
    ckpt = os.path.join(root, "ckpt-free")
    save_checkpoint(ckpt, build_model("unet", base_channels=2), input_size=size)
    inp = os.path.join(root, "in720")
    os.makedirs(inp)
    long = h264_720p(os.path.join(inp, "drive0.mov"), n=args.frames, src=args.video)
    for i in range(1, args.copies):
        shutil.copy(long, os.path.join(inp, f"drive{i}.mov"))
    videos = sorted(os.path.join(inp, f) for f in os.listdir(inp))
    os.makedirs(os.path.join(root, "cpu-free"))
    free_mask = np.tile(np.repeat(np.arange(4, dtype=np.uint8) * 4, size[1] // 4), (size[0], 1))
    total = sum(cpu_by_stage(long, free_mask, os.path.join(root, "cpu-free")).values())
    ceiling = (os.cpu_count() or 1) * 1000 / total
    job("out-free-cold", ckpt, inp)
    runs = []
    for i in range(NEAR_FREE_RUNS):
        out = f"out-free-{i}"
        with ProcessCpu() as cpu:
            t0 = time.time()
            fps, report = job(out, ckpt, inp)
            seconds = time.time() - t0
        runs.append((fps, report["frames_this_run"], cpu, frame_times(os.path.join(root, out), t0), seconds))
        shutil.rmtree(os.path.join(root, out), ignore_errors=True)
    fps, frames, cpu, times, seconds = median_run(runs)
    per = cpu.per_frame(frames)
    print(f"near-free model (unet-2 at 24x32) on {frames} 720p frames: roadseg infer {fps:.1f} frames/s (median of "
          f"{', '.join(f'{r[0]:.1f}' for r in runs)}); CPU ceiling {os.cpu_count()} cpus / {total:.1f} CPU-ms = "
          f"{ceiling:.1f}: e2e / ceiling {fps / ceiling:.2f} (goal >= 0.8)", flush=True)
    steady = steady_rate(times)
    print(f"  its frames over time (mask files' times): the first at {times[0]:.1f} s, the last at {times[-1]:.1f} s "
          f"of {seconds:.1f}; frames {STEADY[0]:.0%}-{STEADY[1]:.0%} at {steady:.1f} frames/s = "
          f"{steady / ceiling:.2f} of the ceiling (every unit running: an archive's rate past its first seconds; "
          f"the runs: {', '.join(f'{steady_rate(r[3]):.1f}' for r in runs)})", flush=True)
    plain = plain_rate(videos, free_mask, os.path.join(root, "plain-free"))
    print(f"  the same units in {os.cpu_count()} plain processes side by side (process.process, the mask fixed: no Ray, "
          f"no model) {plain:.1f} frames/s = {plain / ceiling:.2f} of the ceiling: what the cores give the stages at "
          f"once; the job's steady rate / plain {steady / plain:.2f}", flush=True)
    core = core_rate(settings.build(InferSettings, checkpoint=ckpt, input=inp, output=os.path.join(root, "core")),
                     videos, size, os.path.join(root, "core"))
    print(f"  its core alone (the job's units and warm model actors in plain Ray tasks: no Ray Data, no start-up) "
          f"{core:.1f} frames/s = {core / ceiling:.2f} of the ceiling; e2e / core {fps / core:.2f}", flush=True)
    print("  the median run's machine, CPU-ms per frame: " + ", ".join(f"{k} {v:.1f}" for k, v in per.items())
          + f" (the stages alone {total:.1f}; units, actors and the driver include their processes' start-up)",
          flush=True)


def median_run(runs: list) -> tuple:
    return sorted(runs, key=lambda r: r[0])[len(runs) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=2, help="sources: this many copies of vtest.avi (the issue measured 2)")
    ap.add_argument("--frames", type=int, default=795, help="the first N frames of vtest.avi (packets copied)")
    ap.add_argument("--size", default="192x256", help="model input HxW")
    ap.add_argument("--model", default="unet")
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--gpu", action="store_true", help="CUDA actors (fp16), decode and encode on CPU tasks")
    ap.add_argument("--video", default=VTEST, help="the source video (default: OpenCV's vtest.avi)")
    ap.add_argument("--hd", action="store_true", help="the sources are the video's frames scaled to 1280x720 and "
                                                      "encoded as H.264 with B-frames (the GPU figures' input)")
    ap.add_argument("--confidence-pairs", type=int, default=4,
                    help="runs with and without the confidence columns, in this many pairs (ABBA order)")
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 bytes-read figure (needs moto)")
    ap.add_argument("--no-peer", action="store_true", help="skip the read_videos peer (needs decord)")
    ap.add_argument("--no-fp32", action="store_true", help="skip the fp32 line (a short GPU lease)")
    ap.add_argument("--no-near-free", action="store_true", help="skip the near-free model line")
    args = ap.parse_args()
    size = settings.parse_size(args.size)
    device = "cuda" if args.gpu else "cpu"
    root = tempfile.mkdtemp(prefix="bench-infer-")
    try:
        videos = []
        os.makedirs(os.path.join(root, "in"))
        clip = (h264_720p(os.path.join(root, "vtest.mp4"), n=args.frames, src=args.video) if args.hd
                else cut(args.video, os.path.join(root, "vtest.avi"), args.frames))
        for i in range(args.copies):
            videos.append(shutil.copy(clip, os.path.join(root, "in", f"vtest{i}{os.path.splitext(clip)[1]}")))
        torch.manual_seed(0)
        ckpt = os.path.join(root, "ckpt")
        kwargs = {"base_channels": args.base_channels} if args.model == "unet" else {}
        save_checkpoint(ckpt, build_model(args.model, **kwargs), input_size=size)
        model, meta = load_model(ckpt, device=device)
        mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
        torch.set_num_threads(os.cpu_count() or 1)
        decoded = (decode_all(clip) * args.copies)[:MODEL_ONLY_FRAMES]
        h, w = decoded[0].shape[:2]
        print(f"{len(decoded)} frames of {w}x{h} ({os.path.basename(args.video)}, {args.frames} frames, x{args.copies}"
              f"{', H.264 720p' if args.hd else ''}), {args.model} at {size[0]}x{size[1]}, "
              f"batch {args.batch_size}, {device}, {os.cpu_count()} cpus")

        folded = tuned(ckpt, device)
        amp = inference_amp(device, "auto")
        fps_model = model_only(folded, decoded, size, mean, std, args.batch_size, device, amp)
        print(f"  model-only {fps_model:.2f} frames/s (--amp auto: {amp})", flush=True)
        if not args.no_fp32:
            fps_model32 = fps_model if amp == "off" else model_only(folded, decoded, size, mean, std, args.batch_size,
                                                                      device, "off")
            print(f"  model-only fp32 {fps_model32:.2f} frames/s", flush=True)
        del decoded
        os.makedirs(os.path.join(root, "seq"))
        # the loops and the peer take two sources: a rate, and on a GPU node's many CPUs the job takes more
        loop_videos = videos[:2]
        fps_seq = sequential(model, loop_videos, os.path.join(root, "seq"), size, mean, std, device)
        print(f"  sequential {fps_seq:.2f} frames/s", flush=True)

        from roadseg_dist.ops.cluster import init_ray

        init_ray()  # started before timing: the jobs, not Ray's start-up, are measured
        os.makedirs(os.path.join(root, "peer"))
        fps_peer = float("nan") if args.no_peer else read_videos_peer(
            loop_videos, ckpt, os.path.join(root, "peer"), size, args.batch_size, args.gpu)
        print(f"  read_videos peer {fps_peer:.2f} frames/s", flush=True)

        def job(out: str, ckpt_=None, inp=None, **flags) -> tuple[float, dict]:
            s = settings.build(InferSettings, checkpoint=ckpt_ or ckpt, input=inp or os.path.join(root, "in"),
                               output=os.path.join(root, out), gpu=args.gpu, **flags)
            t0 = time.perf_counter()
            report = pipeline.run(s, show_progress=False)
            return report["frames_this_run"] / (time.perf_counter() - t0), report

        # the first job pays for worker start-up and imports: a source for each task's worker to start
        cold = os.path.join(root, "in-cold")
        os.makedirs(cold)
        for v in videos[: os.cpu_count() or 1]:
            os.link(v, os.path.join(cold, os.path.basename(v)))
        job("out-cold", inp=cold)
        with GpuUtilisation(args.gpu) as util:
            fps_e2e, report = job("out-warm")
        if args.gpu:
            print(f"  GPU utilisation during roadseg infer (nvidia-smi every 0.2 s): {util.summary()}", flush=True)
        fps_e2e32 = fps_e2e if amp == "off" or args.no_fp32 else job("out-fp32", amp="off")[0]
        print(f"{'precision':>10} {'model-only':>12} {'sequential':>12} {'read_videos peer':>18} {'roadseg infer':>15}"
              f"   frames/s; the loop and the peer: {loop_amp(device)}")
        lines = [(f"auto={amp}", fps_model, fps_e2e)] + ([] if args.no_fp32 else [("fp32", fps_model32, fps_e2e32)])
        for name, m, e in lines:
            print(f"{name:>10} {m:12.2f} {fps_seq:12.2f} {fps_peer:18.2f} {e:15.2f}")
            print(f"{'':>10} roadseg infer / model-only {e / m:.2f}   / sequential {e / fps_seq:.2f}   "
                  f"/ read_videos peer {e / fps_peer:.2f}")
        if args.confidence_pairs > 0:
            confidence_cost(job, (fps_e2e, report), folded, size, amp, args.batch_size, args.confidence_pairs)
        fps_tuned = sequential(folded, loop_videos, os.path.join(root, "seq"), size, mean, std, device, amp)
        print(f"tuned loop (the model as infer's actors run it: folded, {amp}) {fps_tuned:.2f} frames/s; "
              f"roadseg infer / tuned loop {fps_e2e / fps_tuned:.2f}", flush=True)
        hops(report, size)

        # 240 frames (10 s): a process's first frames cost more (caches, pages); a unit does whole clips
        clip = h264_720p(os.path.join(root, "drive.mov"), n=CLIP_FRAMES, src=args.video)
        os.makedirs(os.path.join(root, "cpu"))
        process_ms: list[float] = []
        cpu = cpu_by_stage(clip, scene_mask(size), os.path.join(root, "cpu"), process_ms)
        total = sum(cpu.values())
        unit_ms = unit_cpu_ms(clip, size, os.path.join(root, "unit"))
        print(f"CPU-ms per 720p frame, one thread, {CLIP_FRAMES} frames: "
              + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
              + f"; total {total:.1f} (goal 10.0: {'within' if total <= 10 else 'OVER'}; the process's CPU "
              f"meanwhile {process_ms[0]:.1f}); one real unit {unit_ms:.1f}", flush=True)
        if args.gpu:
            node_cpu_ceiling(fps_e2e, unit_ms)
        if not args.no_near_free:
            near_free(args, root, job)
        if args.no_s3:
            return 0
        long_clip = h264_720p(os.path.join(root, "long.mov"), n=795, src=args.video)
        ranges, served, size_b = s3_bytes_ratio(long_clip, 72)
        print(f"S3: {ranges} frame ranges read {served} bytes of a {size_b}-byte object: "
              f"{served / size_b:.3f}x (probe included)")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
