"""The model registry: every architecture is a function registered by name; ``build_model`` is the way in.

    model = build_model("unet-resnet34", pretrained=True)       # ImageNet encoder from the local cache
    logits = model(images)                                      # (N, 3, H, W) normalised -> (N, 19, H, W)

Every model is a ``PaddedModel`` (an ``nn.Module``; not to be confused with the inference actor in
``infer/segment.py``): it pads any H x W up to the network's multiple, crops the logits back, and
carries its own description (``arch``, ``arch_kwargs``) so a checkpoint can rebuild it. Pretrained
encoders come from files, never from the network (``models/pretrained.py``).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from roadseg_dist import labels, storage
from roadseg_dist.models.pretrained import (ENCODER_WEIGHTS, PretrainedWeightsMissing, find_encoder_weights,
                                            load_encoder_weights, torch_hub_dir)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_ENCODERS: dict[str, str | None] = {}


class UnknownModel(KeyError, ValueError):
    """A model name that is not in the registry (the message lists the ones that are)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def register_model(name: str, encoder: str | None = None) -> Callable:
    """Decorator: register a model function under ``name``, the string users type (``--model``)."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        _ENCODERS[name] = encoder
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


# --- the wrapper every model comes in --------------------------------------------------------------

def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right by edge replication so H and W divide by ``multiple``.

    Always pads (possibly by zero rows) rather than branching on the size, so traced and exported
    graphs keep H and W dynamic instead of baking in the example's branch.
    """
    h, w = x.shape[-2], x.shape[-1]
    ph = (multiple - h % multiple) % multiple
    pw = (multiple - w % multiple) % multiple
    return F.pad(x, [0, pw, 0, ph], mode="replicate")


class PaddedModel(nn.Module):
    """A segmentation network that accepts any input size and knows how to rebuild itself."""

    def __init__(self, net: nn.Module, multiple: int, arch: str, arch_kwargs: dict[str, Any],
                 num_classes: int, encoder: str | None = None):
        super().__init__()
        self.net = net
        self.multiple = int(multiple)
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs)
        self.num_classes = int(num_classes)
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        logits = self.net(pad_to_multiple(x, self.multiple))
        return logits[:, :, :h, :w]


# --- the architectures -----------------------------------------------------------------------------

@register_model("unet")
def unet(num_classes: int = 19, pretrained: bool = False, weights: str | None = None,
         base_channels: int = 64) -> PaddedModel:
    """Classic U-Net (Ronneberger et al.), 64 base channels: ~31M parameters."""
    from roadseg_dist.models.unet import UNet

    if base_channels < 1:
        raise ValueError(f"base_channels must be >= 1, got {base_channels}")
    if pretrained or weights:
        raise ValueError("the classic 'unet' has no ImageNet weights; train it from scratch "
                         "(pretrained=False) or pick a pretrained encoder, e.g. 'unet-resnet34'")
    net = UNet(num_classes=num_classes, base_channels=base_channels)
    return PaddedModel(net, UNet.multiple, "unet", {"base_channels": base_channels}, num_classes)


def _smp_unet(arch: str, encoder: str, num_classes: int, pretrained: bool, weights: str | None,
              decoder_channels: tuple[int, ...] | list[int] = (256, 128, 64, 32, 16)) -> PaddedModel:
    import segmentation_models_pytorch as smp

    # encoder_weights=None: smp would download from the hub; we load the weights ourselves, below.
    net = smp.Unet(encoder_name=encoder, encoder_weights=None, classes=num_classes,
                   decoder_channels=tuple(decoder_channels))
    if pretrained or weights:
        load_encoder_weights(net.encoder, encoder, weights or find_encoder_weights(encoder))
    kwargs = {} if tuple(decoder_channels) == (256, 128, 64, 32, 16) else {
        "decoder_channels": list(decoder_channels)}
    return PaddedModel(net, 32, arch, kwargs, num_classes, encoder=encoder)


def _register_smp(encoder: str) -> None:
    arch = f"unet-{encoder}"

    def build(num_classes: int = 19, pretrained: bool = False, weights: str | None = None,
              decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)) -> PaddedModel:
        return _smp_unet(arch, encoder, num_classes, pretrained, weights, decoder_channels)

    build.__doc__ = f"U-Net decoder on an ImageNet {encoder} encoder (segmentation_models_pytorch)."
    register_model(arch, encoder)(build)


for _encoder in ENCODER_WEIGHTS:
    _register_smp(_encoder)


def build_model(name: str, num_classes: int = labels.NUM_CLASSES, pretrained: bool = False,
                weights: str | None = None, **kwargs: Any) -> PaddedModel:
    """Build a registered model; ``weights=PATH`` implies pretrained (an ImageNet encoder file)."""
    if name not in _REGISTRY:
        raise UnknownModel(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    try:
        return _REGISTRY[name](num_classes=int(num_classes), pretrained=pretrained, weights=weights, **kwargs)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise TypeError(f"model {name!r} does not take these arguments {sorted(kwargs)}: {exc}") from None
        raise


# --- sizes and cost (for `roadseg models`) ---------------------------------------------------------

INFO_SIZE = (720, 1280)
_INFO_SCHEMA = 2  # bump when model_info's fields change, so stale cache entries are not reused


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _count_flops(model: nn.Module, size: tuple[int, int], device: str) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, *size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return int(counter.get_total_flops())


def _cache_file() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(root, "roadseg_dist", "model_info.json")


def model_info(name: str, **kwargs: Any) -> dict[str, Any]:
    """Name, parameters, GFLOPs of one 720x1280 forward (2 FLOPs per multiply-add), encoder (None: scratch).

    The model is built on the meta device (no memory, no arithmetic), so even the full-size nets
    take well under a second; results are cached per torch/package version.
    """
    from roadseg_dist import __version__

    key = json.dumps([_INFO_SCHEMA, name, kwargs, torch.__version__, __version__], sort_keys=True,
                     default=str)
    path = _cache_file()
    cache: dict[str, Any] = {}
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        pass
    if key in cache:
        return cache[key]
    with torch.device("meta"):
        model = build_model(name, **kwargs)
    info = {"name": name, "parameters": count_parameters(model),
            "gflops_720x1280": round(_count_flops(model, INFO_SIZE, "meta") / 1e9, 2),
            "encoder": _ENCODERS.get(name)}
    cache[key] = info
    try:  # a cache, nothing more: a read-only home is fine
        storage.write_text(path, json.dumps(cache, indent=1))
    except OSError:
        pass
    return info


def pretrained_weights_file(name: str) -> tuple[str | None, bool]:
    """(the ImageNet weights file of a model's encoder, whether it is on this machine); (None, False): none."""
    encoder = _ENCODERS.get(name)
    if encoder is None:
        return None, False
    try:
        return find_encoder_weights(encoder), True
    except PretrainedWeightsMissing:
        return os.path.join(torch_hub_dir(), ENCODER_WEIGHTS[encoder].torch_hub_file), False
