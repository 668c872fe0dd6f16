"""GPU speed options shared by train, eval and compare: channels_last, torch.compile, autocast.

    optimize(model, channels_last=..., compile=...)   the model in NHWC memory and/or compiled
    as_input(x, channels_last)                        a batch in the memory format the model expects
    inference_autocast(device)                        fp16 autocast on CUDA, as ``roadseg infer`` runs

channels_last lets cuDNN use its NHWC convolution kernels (tensor cores under AMP); compile fuses
the element-wise work between them. Neither changes what the model computes: outputs match the
plain model within float tolerance (tests/test_speed.py checks it on CPU).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn


def optimize(model: nn.Module, *, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """The model converted to channels_last and/or wrapped by ``torch.compile`` (same weights).

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


def inference_autocast(device) -> object:
    """fp16 autocast on CUDA (what infer/segment.predict_masks does), nothing on CPU."""
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()
