"""Benchmark of `roadseg infer` (issue 5), everything measured side by side in one run on the same frames.

Prints:
  end-to-end frames/s     the Ray Data job (decode tasks -> model actor -> writer tasks -> overlay.mp4),
                          warm (Ray's workers already up) and cold (the very first job)
  model-only frames/s     the same model, batch and size on frames already decoded in memory
  sequential frames/s     the prototype's loop: read a frame, run the model, write four PNG files
  ratios                  end-to-end / model-only and end-to-end / sequential
  CPU-ms per 720p frame   decode + every default output (mask, color, overlay, overlay.mp4, stats),
                          model excluded: process CPU time of a single-threaded loop over the same frames

    .venv/bin/python benchmarks/bench_infer.py [--frames 192] [--size 128x256] [--base-channels 8] [--gpu]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

from roadseg_dist import labels, settings
from roadseg_dist.data import synth
from roadseg_dist.infer import frames, pipeline, render
from roadseg_dist.infer.mp4 import write_jpeg_mp4
from roadseg_dist.infer.segment import predict_masks, preprocess
from roadseg_dist.infer.settings import InferSettings
from roadseg_dist.models.checkpoint import load_model, save_checkpoint
from roadseg_dist.models.zoo import build_model


def make_inputs(root: str, n: int, base_channels: int, size: tuple[int, int]) -> tuple[str, str]:
    video = os.path.join(root, "in", "drive.mp4")
    synth.write_video(video, np.random.default_rng(0), 720, 1280, n, 30)
    torch.manual_seed(0)
    ckpt = os.path.join(root, "ckpt")
    save_checkpoint(ckpt, build_model("unet", base_channels=base_channels), input_size=size)
    return video, ckpt


def cpu_outside_model(video: str, out: str, mask_small: np.ndarray) -> dict[str, float]:
    """CPU ms per frame of decode + default outputs, one thread, the model replaced by a fixed mask."""
    cv2.setNumThreads(1)
    kinds = {"mask", "color", "overlay"}
    t = {"decode": 0.0, "outputs": 0.0, "video": 0.0}
    n = 0
    c0 = time.process_time()
    for index, frame in frames.decode_range(video, 0, None):
        c1 = time.process_time()
        t["decode"] += c1 - c0
        mask = render.resize_mask(mask_small, frame.shape[0], frame.shape[1])
        render.class_fractions(mask)
        for kind, data in render.render_frame(frame, mask, kinds).items():
            path = os.path.join(out, render.frame_name(index, kind))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        c0 = time.process_time()
        t["outputs"] += c0 - c1
        n += 1
    c1 = time.process_time()
    jpegs = (open(os.path.join(out, render.frame_name(i, "overlay")), "rb").read() for i in range(n))
    with open(os.path.join(out, "overlay.mp4"), "wb") as f:
        write_jpeg_mp4(f, jpegs, 30, 1280, 720)
    t["video"] = time.process_time() - c1
    return {k: 1000 * v / n for k, v in t.items()}


def model_only(model, frames_bgr, size, mean, std, batch: int, device: str) -> float:
    predict_masks(model, preprocess(frames_bgr[:batch], size, mean, std), device)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(frames_bgr), batch):
        predict_masks(model, preprocess(frames_bgr[i:i + batch], size, mean, std), device)
    if device == "cuda":
        torch.cuda.synchronize()
    return len(frames_bgr) / (time.perf_counter() - t0)


def sequential(model, video: str, out: str, size, mean, std, device: str) -> float:
    """The prototype: one frame at a time, four lossless PNGs per frame at OpenCV's default level."""
    t0 = time.perf_counter()
    cap = cv2.VideoCapture(video)
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        mask = predict_masks(model, preprocess([frame], size, mean, std), device)[0]
        mask = cv2.resize(mask, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
        color = labels.colorize(mask)[..., ::-1]
        overlay = cv2.addWeighted(frame, 0.5, color, 0.5, 0)
        for name, img in (("original", frame), ("mask", mask), ("color", color), ("overlay", overlay)):
            cv2.imwrite(os.path.join(out, f"{n:06d}_{name}.png"), img)
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=192)
    ap.add_argument("--size", default="128x256", help="model input HxW")
    ap.add_argument("--base-channels", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--actor-cpus", type=float, default=1.0, help="torch threads of the model everywhere")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--segment-frames", type=int, default=32)
    args = ap.parse_args()
    size = settings.parse_size(args.size)
    device = "cuda" if args.gpu else "cpu"
    root = tempfile.mkdtemp(prefix="bench-infer-")
    try:
        video, ckpt = make_inputs(root, args.frames, args.base_channels, size)
        model, meta = load_model(ckpt, device=device)
        mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
        if not args.gpu:
            torch.set_num_threads(max(1, int(args.actor_cpus)))
        decoded = [f for _, f in frames.decode_range(video, 0, None)]
        n = len(decoded)
        print(f"frames: {n} of 1280x720 (synthetic clip), model unet base_channels={args.base_channels} "
              f"at {size[0]}x{size[1]}, batch {args.batch_size}, device {device}, "
              f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")

        mask_small = predict_masks(model, preprocess(decoded[:1], size, mean, std), device)[0]
        cpu = cpu_outside_model(video, os.path.join(root, "cpu"), mask_small)
        total = sum(cpu.values())
        print(f"CPU-ms per 720p frame outside the model: {total:.1f} (decode {cpu['decode']:.1f}, "
              f"mask+color+overlay+stats files {cpu['outputs']:.1f}, overlay.mp4 {cpu['video']:.1f}); "
              f"budget 25.0 -> {'within' if total <= 25 else 'OVER'}")

        fps_model = model_only(model, decoded, size, mean, std, args.batch_size, device)
        print(f"model-only:  {fps_model:8.2f} frames/s")
        del decoded

        seq_out = os.path.join(root, "seq")
        os.makedirs(seq_out)
        fps_seq = sequential(model, video, seq_out, size, mean, std, device)
        print(f"sequential:  {fps_seq:8.2f} frames/s")

        from roadseg_dist.cluster import init_ray

        init_ray(num_cpus=os.cpu_count())  # started before timing: the job, not Ray's start-up, is measured

        def job(out: str, segment_frames: int) -> tuple[float, int]:
            s = settings.build(InferSettings, checkpoint=ckpt, input=os.path.dirname(video),
                               output=os.path.join(root, out), size=size, batch_size=args.batch_size,
                               segment_frames=segment_frames, gpu=args.gpu, actor_cpus=args.actor_cpus)
            t0 = time.perf_counter()
            report = pipeline.run(s, show_progress=False)
            return report["frames_this_run"] / (time.perf_counter() - t0), report["frames_this_run"]

        # Cold: the first job also pays for worker processes, imports and the actor's model load.
        # Warm: the same job again once Ray's workers exist, as every job after the first on a cluster.
        fps_cold, n_done = job("out-cold", args.segment_frames)
        fps_e2e, _ = job("out-warm", args.segment_frames)
        print(f"end-to-end:  {fps_e2e:8.2f} frames/s warm, {fps_cold:.2f} frames/s cold (first job: "
              f"process start-up and imports included); {n_done} frames, every default output written")
        print(f"ratio end-to-end / model-only: {fps_e2e / fps_model:.2f}")
        print(f"ratio end-to-end / sequential: {fps_e2e / fps_seq:.2f}")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
