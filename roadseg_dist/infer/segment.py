"""The model side of inference: model-size frames in, model-size train-id masks out.

``Segmenter`` is the model actor: it loads the checkpoint once and answers ``predict(inputs)``,
where ``inputs`` are RGB uint8 frames already at the model's size (N, h, w, 3), with uint8 masks
(N, h, w) and each frame's confidence (N, 2): the mean top-class probability of its pixels and the
share of its pixels whose top-class probability is below ``threshold``, computed where the logits are
(``predict.top_class``). That is all that crosses into and out of it; the units keep the full
frames, resize, render and write (``infer/process.py``).

Calls from many range tasks arrive concurrently (a threaded actor); a ``Batcher`` merges them into
model batches of up to ``batch`` frames, so one GPU sees full batches however the work is cut. On
CUDA a batch is launched before the previous one is collected: the copies in (pinned memory) and
the CPU work around a batch overlap the GPU's work on the one before.
"""
from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from typing import Callable

import numpy as np
import torch

from roadseg_dist.render import model_input
from roadseg_dist.models.predict import as_input, fold_batchnorm, inference_amp, inference_autocast, normalize, \
    optimize, predict, top_class


def preprocess(frames_bgr: list[np.ndarray], size: tuple[int, int], mean, std) -> torch.Tensor:
    """BGR uint8 frames of any size -> the model's normalised float batch (N, 3, H, W) in RGB."""
    return normalize(model_input(frames_bgr, size), mean, std)


def predict_masks(model: torch.nn.Module, x: torch.Tensor, device: str = "cpu", channels_last: bool = False,
                  amp: str = "off") -> np.ndarray:
    """Normalised batch -> uint8 train-id masks (N, H, W) at ``amp`` (off, bf16, fp16: resolve ``auto``
    once with ``inference_amp``, as the Segmenter does)."""
    return predict(model, x.to(device, non_blocking=True), amp=amp, channels_last=channels_last)


Launch = Callable[[np.ndarray], Callable[[], tuple]]  # inputs -> a function that returns their arrays


class Batcher:
    """Requests (arrays of frames) from concurrent callers -> batches of up to ``batch`` frames for
    ``launch``, one batch at a time, in arrival order; each caller gets its own rows back.

    ``launch(x)`` starts the work and returns ``collect()``, which gives arrays whose first axis is the
    batch's frames (each caller gets its rows of each); while more requests wait, the next batch is
    launched before the previous one is collected (on CUDA both are queued on the GPU)."""

    def __init__(self, launch: Launch, batch: int):
        self.launch, self.batch = launch, max(1, int(batch))
        self.queue: collections.deque[tuple[np.ndarray, Future]] = collections.deque()
        self.ready = threading.Condition()
        self.model_cpu_s = 0.0  # this thread's CPU launching and collecting batches: the model's (benchmark)
        threading.Thread(target=self._loop, daemon=True, name="batcher").start()

    def submit(self, inputs: np.ndarray) -> Future:
        future: Future = Future()
        with self.ready:
            self.queue.append((inputs, future))
            self.ready.notify()
        return future

    def _take(self, block: bool) -> list[tuple[np.ndarray, Future]] | None:
        """The next requests whose frames fit a batch (at least one); None when none waits."""
        with self.ready:
            while block and not self.queue:
                self.ready.wait()
            if not self.queue:
                return None
            taken, frames = [], 0
            while self.queue and (not taken or frames + len(self.queue[0][0]) <= self.batch):
                taken.append(self.queue.popleft())
                frames += len(taken[-1][0])
            return taken

    def _loop(self) -> None:
        pending = None  # (collect, requests) launched and not yet collected
        while True:
            taken = self._take(block=pending is None)
            t0 = time.thread_time()
            started = self._start(taken) if taken is not None else None
            if pending is not None:
                self._finish(*pending)
            self.model_cpu_s += time.thread_time() - t0
            pending = started

    def _start(self, taken):
        arrays = [x for x, _ in taken]
        try:
            return self.launch(arrays[0] if len(arrays) == 1 else np.concatenate(arrays)), taken
        except BaseException as exc:  # noqa: BLE001 - the callers get the error, the loop goes on
            return _raise(exc), taken

    @staticmethod
    def _finish(collect, taken) -> None:
        try:
            arrays = collect()
        except BaseException as exc:  # noqa: BLE001
            for _, future in taken:
                future.set_exception(exc)
            return
        at = 0
        for x, future in taken:
            future.set_result(tuple(a[at:at + len(x)] for a in arrays))
            at += len(x)


def _raise(exc: BaseException) -> Callable[[], tuple]:
    def collect() -> tuple:
        raise exc
    return collect


class Segmenter:
    """The model actor (see the module docstring): ``predict(inputs) -> masks`` at the model's size."""

    def __init__(self, checkpoint: str, size: tuple[int, int] | None, gpu: bool = False, threads: int = 1,
                 channels_last: bool = False, compile: bool = False, amp: str = "auto", batch: int = 8,
                 threshold: float | None = 0.5):
        from roadseg_dist.models.checkpoint import input_normalization, load_model

        self.device = "cuda" if gpu else "cpu"
        if not gpu:
            torch.set_num_threads(max(1, int(threads)))
        model, meta = load_model(checkpoint, device=self.device)
        self.model = optimize(fold_batchnorm(model.eval()), channels_last=channels_last, compile=compile)
        self.channels_last = channels_last
        self.amp = inference_amp(self.device, amp)  # resolved here: it depends on this node's CPU or GPU
        self.size = tuple(size or meta.get("input_size") or (512, 1024))
        self.mean, self.std = input_normalization(meta)
        self.threshold = threshold  # None: no confidence (NaN), the masks alone
        self.pinned = _PinnedPool() if self.device == "cuda" else None
        self.batcher = Batcher(self.launch, batch)
        self.frames = self.calls = self.bytes_in = self.bytes_out = 0
        self.counting = threading.Lock()  # predict runs on many threads

    def ready(self) -> str:
        """What the actor runs at, once its model is loaded (the driver waits for this)."""
        return "fp32" if self.amp == "off" else self.amp

    def predict(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model-size RGB frames (N, h, w, 3) uint8 -> (train-id masks (N, h, w) uint8, confidence (N, 2)
        float32: mean top-class probability, share of pixels below the threshold)."""
        inputs = np.asarray(inputs)
        if inputs.ndim != 4 or inputs.shape[1:] != (*self.size, 3) or inputs.dtype != np.uint8:
            raise ValueError(f"the model takes uint8 RGB frames of {self.size[0]}x{self.size[1]} "
                             f"(render.model_input), got {inputs.dtype} {inputs.shape}")
        masks, confidence = self.batcher.submit(inputs).result()
        with self.counting:
            self.frames, self.calls = self.frames + len(inputs), self.calls + 1
            self.bytes_in = self.bytes_in + inputs.nbytes
            self.bytes_out = self.bytes_out + masks.nbytes + confidence.nbytes
        return masks, confidence

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised batch on the device -> (ids, confidence) on the device."""
        with inference_autocast(x.device, self.amp):
            logits = self.model(as_input(x, self.channels_last))
        if self.threshold is None:
            return logits.max(1).indices.to(torch.uint8), torch.full((len(x), 2), float("nan"), device=x.device)
        ids, prob = top_class(logits)
        pixels = prob[0].numel()
        confidence = torch.stack([prob.mean((1, 2)), (prob < self.threshold).sum((1, 2)) / pixels], 1)
        return ids, confidence

    def launch(self, inputs: np.ndarray) -> Callable[[], tuple]:
        if self.pinned is None:
            with torch.inference_mode():
                ids, confidence = self._forward(normalize(inputs, self.mean, self.std))
            out = ids.numpy(), confidence.numpy()
            return lambda: out
        return self._launch_cuda(inputs)

    def _launch_cuda(self, inputs: np.ndarray) -> Callable[[], tuple]:
        """Queue the copy in, the model and the copies out on the GPU; the returned function waits."""
        host_in = self.pinned.take(inputs.shape, torch.uint8)
        host_in.copy_(torch.from_numpy(inputs))
        with torch.inference_mode():
            ids, confidence = self._forward(normalize(host_in, self.mean, self.std, device=self.device))
            host_ids = self.pinned.take(tuple(ids.shape), torch.uint8)
            host_conf = self.pinned.take(tuple(confidence.shape), torch.float32)
            host_ids.copy_(ids, non_blocking=True)
            host_conf.copy_(confidence, non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def collect() -> tuple:
            done.synchronize()
            out = host_ids.numpy().copy(), host_conf.numpy().copy()
            self.pinned.give(host_in, host_ids, host_conf)
            return out
        return collect

    def stats(self) -> dict:
        """Frames and calls answered, the array bytes in and out, and CPU seconds: the whole process's
        and the model's (the batcher thread's); the driver's progress and the benchmark read them."""
        return {"frames": self.frames, "calls": self.calls, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "cpu_s": time.process_time(), "model_cpu_s": self.batcher.model_cpu_s}


class _PinnedPool:
    """Page-locked host buffers, reused: a copy to the GPU from pinned memory runs asynchronously,
    and allocating pinned memory per batch would cost more than the copy."""

    def __init__(self):
        self.free: dict[tuple, list[torch.Tensor]] = {}
        self.lock = threading.Lock()

    def take(self, shape: tuple, dtype) -> torch.Tensor:
        with self.lock:
            bufs = self.free.get((tuple(shape), dtype))
            if bufs:
                return bufs.pop()
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def give(self, *bufs: torch.Tensor) -> None:
        with self.lock:
            for b in bufs:
                self.free.setdefault((tuple(b.shape), b.dtype), []).append(b)
