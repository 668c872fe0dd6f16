"""The model side of inference: frames -> train-id masks, as plain functions and one actor class.

``Segmenter`` is the callable class Ray Data runs in an actor pool (``map_batches``): it loads the
model once and turns a batch of decoded frames into masks at the model's input size. The per-frame
CPU work around it runs elsewhere, to keep it off the (GPU) actors: decode tasks resize the frames to
the model's size (``render.model_input``), writer tasks upsample the masks to the source size.
"""
from __future__ import annotations

import numpy as np
import torch

from roadseg_dist.infer import rows
from roadseg_dist.infer.render import model_input
from roadseg_dist.models.predict import fold_batchnorm, inference_amp, normalize, optimize, predict


def preprocess(frames_bgr: list[np.ndarray], size: tuple[int, int], mean, std) -> torch.Tensor:
    """BGR uint8 frames of any size -> the model's normalised float batch (N, 3, H, W) in RGB."""
    return normalize(model_input(frames_bgr, size), mean, std)


def predict_masks(model: torch.nn.Module, x: torch.Tensor, device: str = "cpu", channels_last: bool = False,
                  amp: str = "off") -> np.ndarray:
    """Normalised batch -> uint8 train-id masks (N, H, W) at ``amp`` (off, bf16, fp16: resolve ``auto``
    once with ``inference_amp``, as the Segmenter does)."""
    return predict(model, x.to(device, non_blocking=True), amp=amp, channels_last=channels_last)


class Segmenter:
    """Ray Data actor: load the checkpoint once, then segment batches of frame rows.

    Rows with ``index < 0`` mark the end of a frame range and carry no frame; they pass through
    with an empty mask so the driver learns how many frames the range had. Frames arrive resized
    (the ``input`` column) from the decode tasks; batches without it are resized here.
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
        inputs = batch.pop(rows.INPUT, None)  # the writers need the masks and frames, not these
        if len(keep):
            if inputs is not None and tuple(np.shape(inputs)[1:3]) == self.size:
                x = normalize(np.asarray(inputs)[keep], self.mean, self.std)
            else:
                x = preprocess([rows.frame_of(batch, i) for i in keep], self.size, self.mean, self.std)
            masks[keep] = predict_masks(self.model, x, self.device, self.channels_last, self.amp)
        batch["mask"] = masks
        return batch
