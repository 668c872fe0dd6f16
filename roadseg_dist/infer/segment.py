"""The model side of inference: frames -> train-id masks, as plain functions and one actor class.

``Segmenter`` is the callable class Ray Data runs in an actor pool (``map_batches``): it loads the
model once and turns a batch of decoded frames into masks at the model's input size. Upsampling to
the source size happens later, in the writer tasks, to keep CPU work off the (GPU) actors.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from roadseg_dist.infer import rows
from roadseg_dist.models.predict import fold_batchnorm, inference_amp, normalize, optimize, predict


def preprocess(frames_bgr: list[np.ndarray], size: tuple[int, int], mean, std) -> torch.Tensor:
    """BGR uint8 frames of any size -> the model's normalised float batch (N, 3, H, W) in RGB."""
    h, w = size
    batch = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA if f.shape[0] > h else cv2.INTER_LINEAR)
                      for f in frames_bgr])
    return normalize(np.ascontiguousarray(batch[..., ::-1]), mean, std)


def predict_masks(model: torch.nn.Module, x: torch.Tensor, device: str = "cpu", channels_last: bool = False,
                  amp: str = "off") -> np.ndarray:
    """Normalised batch -> uint8 train-id masks (N, H, W) at ``amp`` (off, bf16, fp16: resolve ``auto``
    once with ``inference_amp``, as the Segmenter does)."""
    return predict(model, x.to(device, non_blocking=True), amp=amp, channels_last=channels_last)


class Segmenter:
    """Ray Data actor: load the checkpoint once, then segment batches of frame rows.

    Rows with ``index < 0`` mark the end of a frame range and carry no frame; they pass through
    with an empty mask so the driver learns how many frames the range had.
    """

    def __init__(self, checkpoint: str, size: tuple[int, int] | None, gpu: bool = False, threads: int = 1,
                 channels_last: bool = False, compile: bool = False, amp: str = "auto"):
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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        masks = np.zeros((len(batch["index"]), *self.size), dtype=np.uint8)
        keep = np.flatnonzero(rows.is_frame(batch))
        if len(keep):
            frames = [rows.frame_of(batch, i) for i in keep]
            masks[keep] = predict_masks(self.model, preprocess(frames, self.size, self.mean, self.std), self.device,
                                        self.channels_last, self.amp)
        batch["mask"] = masks
        return batch
