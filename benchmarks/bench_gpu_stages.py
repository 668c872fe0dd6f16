"""Per-frame work a GPU could take off a GPU node's CPUs (issue 21), measured before any of it is built.

On a GPU node the CPUs decide infer's frames/s: every 720p frame costs a unit ~10 CPU-ms outside the
model, and H.100/A100 have no video encoder, so x264 stays on them. Two candidates for the GPU, each
against what a unit does today, on 720p H.264 frames decoded as a unit decodes them (I420 planes) and a
road-scene mask at the model's size:

  overlay  today: the class colours blended into the planes (``yuv.blend``), the overlay JPEG from
           them (``yuv.encode_jpeg``, libjpeg-turbo), on the unit's thread.
           on the device, a chunk of frames at a time: the planes up (pinned), the colours looked up,
           upsampled and blended, the blended planes back (x264 still takes them on the CPU), the JPEG
           by nvJPEG (``torchvision.io.encode_jpeg`` on CUDA tensors), its bytes back.
  decode   today: PyAV (FFmpeg, one thread), as ``video.decode`` reads a unit's frames.
           on the device: NVDEC through torchcodec, where torchcodec imports.

For each: CPU-ms per frame of the calling thread (what a unit task would spend; the GPU is waited for on
a blocking event, not a spinning one), wall-ms per frame, and how close the outputs are (the decoded
JPEGs' mean and max absolute difference, the blended planes' largest; masks are not touched). Without
CUDA it prints the CPU figures only; ``--device cpu`` runs the device path on the CPU, to check the script.

    python benchmarks/bench_gpu_stages.py [--video vtest.avi] [--frames 240] [--chunk 8] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_infer import VTEST, h264_720p, scene_mask  # noqa: E402
from roadseg_dist import yuv  # noqa: E402
from roadseg_dist.video import decode as frames  # noqa: E402


def decoded_planes(video: str) -> list[yuv.Frame]:
    """Every frame of ``video`` as a unit decodes it (I420 planes, views of PyAV's frames)."""
    return [f for _, _, f in frames.decode_range(video, frames.FrameRange(0, block=1 << 20), planes=True)]


def cpu_overlay(clip: list[yuv.Frame], mask: np.ndarray, quality: int) -> tuple[float, list[bytes]]:
    """CPU-ms per frame of blend + overlay JPEG on this thread (OpenCV on one thread, as a unit)."""
    cv2.setNumThreads(1)
    out, c0 = [], time.thread_time()
    for frame in clip:
        out.append(yuv.encode_jpeg(yuv.blend(frame, mask), quality))
    return 1000 * (time.thread_time() - c0) / len(clip), out


class DeviceOverlay:
    """The overlay of a chunk of frames on ``device``: I420 planes and a model-size mask in, the blended
    planes (for x264) and the overlay JPEGs out, with ``yuv.blend``'s arithmetic."""

    def __init__(self, device: str, matrix: str, alpha: float, quality: int):
        self.device, self.alpha, self.quality = torch.device(device), alpha, quality
        self.luts = [torch.from_numpy(t).to(self.device) for t in yuv.palette(matrix)]
        self.to_rgb = torch.tensor(yuv.to_rgb(matrix), dtype=torch.float32, device=self.device)
        self.pin = self.device.type == "cuda"
        self.buffers: dict[tuple, torch.Tensor] = {}  # (slot, shape) -> pinned host memory

    def _up(self, arrays: list[np.ndarray], slot: str) -> torch.Tensor:
        """The arrays on the device, through a pinned buffer of their own ``slot`` (U and V have one shape:
        a shared buffer would be refilled while its copy is in flight), filled in one copy; a call waits
        for its copies before it returns, so the buffers are free for the next one."""
        if not self.pin:
            return torch.from_numpy(np.stack(arrays))
        key = (slot, len(arrays), *arrays[0].shape)
        if key not in self.buffers:
            self.buffers[key] = torch.empty(key[1:], dtype=torch.uint8).pin_memory()
        host = self.buffers[key]
        np.stack(arrays, out=host.numpy())
        return host.to(self.device, non_blocking=True)

    def _blend(self, plane: torch.Tensor, mask: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
        colours = lut[mask.long()]
        if colours.shape[-2:] != plane.shape[-2:]:  # nearest, as cv2.INTER_NEAREST (floor of dst * scale)
            colours = F.interpolate(colours[:, None].float(), size=plane.shape[-2:], mode="nearest")[:, 0]
        mixed = plane.float() * (1.0 - self.alpha) + colours.float() * self.alpha
        return mixed.round().clamp(0, 255).to(torch.uint8)

    def _rgb(self, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        size = y.shape[-2:]
        u, v = (F.interpolate(p[:, None].float(), size=size, mode="nearest")[:, 0] for p in (u, v))
        yuv_ = torch.stack([y.float() - 16.0, u - 128.0, v - 128.0], dim=1)  # (N, 3, H, W)
        rgb = torch.einsum("ij,njhw->nihw", self.to_rgb, yuv_)
        return rgb.round().clamp(0, 255).to(torch.uint8)

    def __call__(self, chunk: list[yuv.Frame], mask: np.ndarray) -> tuple[list[np.ndarray], list[bytes]]:
        from torchvision.io import encode_jpeg

        ys, us, vs = (self._up([getattr(f, p) for f in chunk], p) for p in "yuv")
        m = self._up([mask] * len(chunk), "mask")
        planes = [self._blend(p, m, lut) for p, lut in zip((ys, us, vs), self.luts)]
        rgb = self._rgb(*planes)
        jpegs = encode_jpeg(list(rgb), quality=self.quality)
        back = [p.to("cpu", non_blocking=self.pin) for p in planes]  # x264 takes the blended planes
        data = [j.to("cpu", non_blocking=self.pin) for j in jpegs]
        if self.pin:
            done = torch.cuda.Event(blocking=True)  # wait without spinning a CPU
            done.record()
            done.synchronize()
        return back, [d.numpy().tobytes() for d in data]


def device_overlay(clip: list[yuv.Frame], mask: np.ndarray, device: str, chunk: int, quality: int,
                   alpha: float) -> tuple[float, float, list[bytes]]:
    """CPU-ms and wall-ms per frame of the device overlay, after one warm-up chunk."""
    run = DeviceOverlay(device, clip[0].matrix, alpha, quality)
    run(clip[:chunk], mask)
    out, c0, w0 = [], time.thread_time(), time.perf_counter()
    for i in range(0, len(clip), chunk):
        out += run(clip[i:i + chunk], mask)[1]
    n = len(clip)
    return 1000 * (time.thread_time() - c0) / n, 1000 * (time.perf_counter() - w0) / n, out


def planes_difference(clip: list[yuv.Frame], mask: np.ndarray, device: str, chunk: int, quality: int,
                      alpha: float) -> int:
    """The largest difference of the device's blended planes from ``yuv.blend``'s (what x264 would get)."""
    back, _ = DeviceOverlay(device, clip[0].matrix, alpha, quality)(clip[:chunk], mask)
    want = [yuv.blend(f, mask, alpha) for f in clip[:chunk]]
    return max(int(np.abs(got.numpy()[i].astype(np.int16) - getattr(w, p)).max())
               for got, p in zip(back, "yuv") for i, w in enumerate(want))


def jpeg_difference(a: list[bytes], b: list[bytes]) -> tuple[float, int]:
    """Mean and max absolute difference of the decoded JPEGs, pair by pair."""
    means, peak = [], 0
    for x, y in zip(a, b):
        dx = cv2.imdecode(np.frombuffer(x, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)
        dy = cv2.imdecode(np.frombuffer(y, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)
        d = np.abs(dx - dy)
        means.append(float(d.mean()))
        peak = max(peak, int(d.max()))
    return float(np.mean(means)), peak


def cpu_decode(video: str) -> tuple[float, int]:
    c0 = time.thread_time()
    n = sum(1 for _ in frames.decode_range(video, frames.FrameRange(0, block=1 << 20), planes=True))
    return 1000 * (time.thread_time() - c0) / n, n


def nvdec(video: str, device: str) -> str:
    """NVDEC through torchcodec: CPU-ms and wall-ms per frame, or why it was not measured."""
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as exc:  # noqa: BLE001 - absent or without its FFmpeg: say so, measure the rest
        return f"not measured: torchcodec does not import here ({type(exc).__name__}: {str(exc)[:120]})"
    if not device or not device.startswith("cuda"):
        return "not measured: no CUDA device"
    decoder = VideoDecoder(video, device=device)
    n = len(decoder)
    c0, w0 = time.thread_time(), time.perf_counter()
    for i in range(0, n, 16):
        decoder.get_frames_in_range(i, min(n, i + 16))
    torch.cuda.synchronize()
    return (f"{1000 * (time.thread_time() - c0) / n:.2f} CPU-ms, "
            f"{1000 * (time.perf_counter() - w0) / n:.2f} wall-ms a frame ({n} frames, RGB on the device)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", default=VTEST, help="the source of the 720p H.264 clip (default: OpenCV's vtest.avi)")
    ap.add_argument("--frames", type=int, default=240, help="frames of the clip")
    ap.add_argument("--size", default="360x640", help="the mask's size (the model's input HxW)")
    ap.add_argument("--chunk", type=int, default=8, help="frames per device call (a unit's chunk)")
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "",
                    help="where the device path runs (default: cuda where there is one, else it is skipped)")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    root = tempfile.mkdtemp(prefix="bench-gpu-stages-")
    clip_path = h264_720p(os.path.join(root, "clip.mp4"), n=args.frames, src=args.video)
    clip = decoded_planes(clip_path)
    mask = scene_mask(size)
    where = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
             else "CPU (a check of the script only)" if args.device else "none")
    print(f"720p H.264, {len(clip)} frames, mask {size[0]}x{size[1]}, device {where}", flush=True)

    cpu_ms, cpu_jpegs = cpu_overlay(clip, mask, args.quality)
    if not args.device:
        print(f"overlay (blend + JPEG): CPU {cpu_ms:.2f} CPU-ms a frame; no CUDA device here, so no device "
              f"figures (--device cpu runs the device path on the CPU, to check this script)", flush=True)
    else:
        dev_cpu, dev_wall, dev_jpegs = device_overlay(clip, mask, args.device, args.chunk, args.quality, args.alpha)
        mean, peak = jpeg_difference(cpu_jpegs, dev_jpegs)
        size_ratio = sum(map(len, dev_jpegs)) / sum(map(len, cpu_jpegs))
        print(f"overlay (blend + JPEG): CPU {cpu_ms:.2f} CPU-ms a frame; device {dev_cpu:.2f} CPU-ms "
              f"({dev_wall:.2f} wall-ms) a frame, chunks of {args.chunk}, blended planes back for x264: "
              f"CPU saved {cpu_ms - dev_cpu:.2f} CPU-ms a frame ({dev_cpu / cpu_ms:.2f} of today's)", flush=True)
        planes = planes_difference(clip, mask, args.device, args.chunk, args.quality, args.alpha)
        print(f"  blended planes, device against yuv.blend: max difference {planes} (0: x264 gets the same "
              f"frames); JPEGs decoded, device against CPU: mean abs difference {mean:.2f}, max {peak}; "
              f"bytes {size_ratio:.2f}x", flush=True)
    dec_ms, n = cpu_decode(clip_path)
    print(f"decode: PyAV (CPU) {dec_ms:.2f} CPU-ms a frame ({n} frames, I420 planes); "
          f"NVDEC: {nvdec(clip_path, args.device)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
