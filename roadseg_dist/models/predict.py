"""The models' input and output contract in one place: what goes in, what comes out.

    x = normalize(images, mean, std, device)      uint8 RGB (N, H, W, 3) -> float (N, 3, H, W)
    masks = predict(model, x, out_size, amp)      -> uint8 train ids (N, H', W') on the host
    model = optimize(model, channels_last, compile)   the GPU speed options (same outputs)

Training (``data/ingest.to_model_input``), evaluation (``evaluate``), comparison (``compare``) and
inference all go through these, so a model sees the same input wherever it runs. The mean and std
are a checkpoint's ``meta.normalization`` (``checkpoint.input_normalization``), ImageNet's by default.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from roadseg_dist.labels import MEAN, STD

AMP_MODES = ("off", "bf16", "fp16")
INFERENCE_AMP = "fp16"  # eval, compare and infer run CUDA models under fp16 autocast, so their speeds agree


def normalize(images, mean=MEAN, std=STD, device=None) -> torch.Tensor:
    """uint8 RGB images (N, H, W, 3), numpy or torch -> normalised float (N, 3, H, W) on ``device``.

    The uint8 batch moves to the device first: a quarter of the bytes of the float one.
    """
    x = torch.as_tensor(images)
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def autocast(device, amp: str = "off"):
    """bf16/fp16 autocast on a GPU; on a CPU, or with ``amp="off"``, plain float32."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if torch.device(device).type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def predict(model: torch.nn.Module, x: torch.Tensor, out_size: tuple[int, int] | None = None,
            amp: str = "off", channels_last: bool = False) -> np.ndarray:
    """Normalised batch -> uint8 train-id masks (N, H, W) as numpy.

    With ``out_size`` the logits are resized (bilinear, in float32) to it before the argmax, which
    scores a model run at a smaller size at the label's full resolution.
    """
    with torch.inference_mode():
        with autocast(x.device, amp):
            logits = model(as_input(x, channels_last))
        if out_size is not None and tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits.float(), size=tuple(out_size), mode="bilinear", align_corners=False)
        return logits.argmax(1).to(torch.uint8).cpu().numpy()


def optimize(model: torch.nn.Module, *, channels_last: bool = False, compile: bool = False) -> torch.nn.Module:
    """The model converted to channels_last and/or wrapped by ``torch.compile`` (same weights).

    channels_last lets cuDNN use its NHWC convolution kernels (tensor cores under AMP); compile fuses
    the element-wise work between them. Neither changes what the model computes (tests/test_speed.py).
    Compile last: it traces the module as it will run. ``checkpoint.unwrap`` sees through the
    compiled wrapper, so checkpoints of a compiled model hold the plain state dict.
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model


def as_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An (N, 3, H, W) batch in NHWC memory when the model is channels_last (no copy otherwise)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
