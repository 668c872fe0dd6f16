"""A checkpoint's weights in the files other tools read (``checkpoint.save_checkpoint`` writes them all).

    model.safetensors   the network's state dict, safetensors: the keys of ``PaddedModel.net`` (no ``net.``)
    config.json         how to rebuild that network. smp-based models: smp's own config (``_model_class`` and
                        the constructor's arguments), so ``segmentation_models_pytorch.from_pretrained(DIR)``
                        returns the bare ``smp.Unet`` (input sides a multiple of 32, normalised as meta.json
                        says); the classic U-Net: ``roadseg_dist.models.unet.UNet``'s arguments. ``_roadseg``
                        (ignored by smp: it drops keys that start with ``_``) names the zoo entry.
    model.pt            the same weights as ``PaddedModel``'s state dict (``net.*`` keys, torch.save): the only
                        weights file of earlier checkpoints, still written for their readers

``roadseg_dist.load_model`` reads model.safetensors where there is one, else model.pt.
"""
from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

SAFETENSORS = "model.safetensors"
CONFIG = "config.json"
LEGACY = "model.pt"
PREFIX = "net."  # PaddedModel's state dict = the network's, under ``net.``


def network_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The bare network's tensors, on the CPU and contiguous (safetensors stores no views)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}


def to_safetensors(model: nn.Module) -> bytes:
    from safetensors.torch import save

    return save(network_state(model), metadata={"format": "pt"})  # "pt": what transformers/timm check for


def from_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    """model.safetensors -> the state dict of the ``PaddedModel`` (keys under ``net.``)."""
    from safetensors.torch import load

    return {PREFIX + k: v for k, v in load(data).items()}


def network_config(model: nn.Module, meta: dict) -> dict[str, Any]:
    """config.json: the network's class and constructor arguments, plus the zoo entry under ``_roadseg``."""
    net = model.net
    smp_config = getattr(net, "_hub_mixin_config", None)  # smp >= 0.4 models remember their arguments
    if isinstance(smp_config, dict):
        config = {"_model_class": type(net).__name__, **smp_config}
    else:
        config = {"_class": f"{type(net).__module__}.{type(net).__qualname__}", "num_classes": int(model.num_classes),
                  **model.arch_kwargs}
    config["_roadseg"] = {"format": meta["format"], "arch": meta["arch"], "arch_kwargs": meta["arch_kwargs"],
                          "num_classes": meta["num_classes"], "multiple": int(model.multiple),
                          "normalization": meta["normalization"], "input_size": meta["input_size"]}
    return json.loads(json.dumps(config))  # tuples -> lists, and proof that it is JSON


def files(model: nn.Module, meta: dict, torch_bytes) -> dict[str, bytes]:
    """{file name: bytes} of the weights, in the order they are written (meta.json comes after all)."""
    legacy = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {SAFETENSORS: to_safetensors(model),
            CONFIG: (json.dumps(network_config(model, meta), indent=2) + "\n").encode(),
            LEGACY: torch_bytes(legacy)}
