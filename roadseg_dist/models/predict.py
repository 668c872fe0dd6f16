"""The models' input and output contract in one place: what goes in, what comes out.

    x = normalize(images, mean, std, device)      uint8 RGB (N, H, W, 3) -> float (N, 3, H, W)
    masks = predict(model, x, out_size, amp)      -> uint8 train ids (N, H', W') on the host
    ids, top = top_class(logits)                  the train ids and each pixel's top-class probability
    amp = inference_amp(device, "auto")           fp16 on CUDA, bf16 on CPUs with native bf16, else off
    model = optimize(model, channels_last, compile)   the GPU speed options (same outputs)
    model = fold_batchnorm(model.eval())          inference: BatchNorm folded into its convolution

Training (``data/ingest.to_model_input``), evaluation (``evaluate``), comparison (``compare``) and
inference all go through these, so a model sees the same input wherever it runs. The mean and std
are a checkpoint's ``meta.normalization`` (``checkpoint.input_normalization``), ImageNet's by default.
"""
from __future__ import annotations

import contextlib
import warnings

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
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        # Ray hands arrays out of its object store read-only; only read here, so share the memory
        # without torch's warning (a copy would cost more than the normalisation)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(images)
    else:
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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where oneDNN runs bf16
    convolutions ~2x faster than fp32; elsewhere bf16 is emulated and slower."""
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported",
                                                                     "_is_amx_tile_supported"))


def inference_amp(device, amp: str = "auto") -> str:
    """The precision inference runs at on ``device``. ``auto``: fp16 on CUDA (as eval and compare);
    on a CPU, bf16 where it is native (``cpu_has_native_bf16``), else fp32 ("off"). Masks of bf16
    and fp32 differ on ~0.2% of pixels (the demo model: mIoU 55.84% vs 55.85%)."""
    if amp != "auto":
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be auto or one of {', '.join(AMP_MODES)}, got {amp!r}")
        return amp
    if torch.device(device).type == "cuda":
        return INFERENCE_AMP
    return "bf16" if cpu_has_native_bf16() else "off"


def inference_autocast(device, amp: str):
    """``autocast`` for inference, which on a CPU also honours bf16 (training ignores amp on CPUs)."""
    if torch.device(device).type == "cpu" and amp == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return autocast(device, amp)


def predict(model: torch.nn.Module, x: torch.Tensor, out_size: tuple[int, int] | None = None,
            amp: str = "off", channels_last: bool = False) -> np.ndarray:
    """Normalised batch -> uint8 train-id masks (N, H, W) as numpy.

    With ``out_size`` the logits are resized (bilinear, in float32) to it before the argmax, which
    scores a model run at a smaller size at the label's full resolution. ``amp`` as
    ``inference_autocast``: on CUDA fp16/bf16; on a CPU bf16 or float32.
    """
    with torch.inference_mode():
        with inference_autocast(x.device, amp):
            logits = model(as_input(x, channels_last))
        if out_size is not None and tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits.float(), size=tuple(out_size), mode="bilinear", align_corners=False)
        return logits.max(1).indices.to(torch.uint8).cpu().numpy()


def top_class(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(train ids (N, H, W) uint8, each pixel's top-class softmax probability (N, H, W) float32).

    The ids are ``max``'s, as without the probability (argmax's: the first of tied maxima). The
    probability is 1 / sum_c exp(logit_c - max): no softmax tensor, no second max pass as in
    logsumexp, and the sum runs the way the logits lie in memory, a frame at a time in float32 buffers
    that stay in cache. CPU bf16 convolutions fed NHWC input (``normalize``'s) return channels_last
    logits: there a frame's classes are adjacent and one matrix-vector product sums them. Beside the
    ids alone it adds ~0.7-0.9 CPU-ms per 192x256 frame (19 classes, one thread, fp32 or bf16, either
    layout; ``benchmarks/bench_infer.py`` prints it), where max + logsumexp added ~4.
    """
    top, ids = logits.max(1)
    top = top.float()
    classes, total = logits.shape[1], torch.empty_like(top)
    # On a CPU a frame at a time keeps the buffers in cache; on a GPU the whole batch is one launch each.
    per_frame = logits.device.type == "cpu"
    parts = zip(logits, top, total) if per_frame else [(logits, top, total)]
    if logits.dim() == 4 and logits.is_contiguous(memory_format=torch.channels_last) and not logits.is_contiguous():
        term, ones = top.new_empty((top[0] if per_frame else top).numel(), classes), top.new_ones(classes)
        for frame, t, out in parts:
            term.copy_(frame.movedim(-3, -1).reshape(-1, classes)).sub_(t.reshape(-1, 1)).exp_()
            torch.mv(term, ones, out=out.view(-1))
    else:
        term = torch.empty_like(top[0] if per_frame else top)
        for frame, t, out in parts:
            out.zero_()
            for c in range(classes):
                out += term.copy_(frame.select(-3, c)).sub_(t).exp_()
    return ids.to(torch.uint8), total.reciprocal_()


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode model with each BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential``
    folded into that convolution's weights (in place; U-Net and smp decoder blocks are such
    sequences). The outputs are the same up to float rounding, minus a pass over every activation:
    ~4% of a small U-Net's CPU time. Inference only: a folded model must not be trained or saved."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if (isinstance(conv, torch.nn.Conv2d) and type(bn) is torch.nn.BatchNorm2d
                    and bn.track_running_stats and bn.num_features == conv.out_channels):
                seq._modules[a], seq._modules[b] = fuse_conv_bn_eval(conv, bn), torch.nn.Identity()
    return model


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
