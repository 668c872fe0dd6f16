"""ImageNet encoder weights, from files only: this project never downloads.

    find_encoder_weights(encoder)     ``$TORCH_HOME/hub/checkpoints/<torchvision file>`` or the Hugging
                                      Face cache (``smp-hub/<encoder>.imagenet``), else
                                      PretrainedWeightsMissing naming the file and where to get it
    read_state_dict(path)             a local or s3:// .pth/.pt/.safetensors file -> a state dict
    load_encoder_weights(module, ...) strictly into an smp encoder, minus the ImageNet classifier head
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class EncoderWeights:
    torch_hub_file: str  # the name torch.hub / torchvision (or the original smp) saves the file under
    url: str             # where a user can fetch it by hand
    hf_repo: str         # smp >= 0.5 downloads model.safetensors from this Hugging Face repo


ENCODER_WEIGHTS = {
    "vgg11": EncoderWeights("vgg11-8a719046.pth", "https://download.pytorch.org/models/vgg11-8a719046.pth",
                            "smp-hub/vgg11.imagenet"),
    "resnet18": EncoderWeights("resnet18-f37072fd.pth",
                               "https://download.pytorch.org/models/resnet18-f37072fd.pth",
                               "smp-hub/resnet18.imagenet"),
    "resnet34": EncoderWeights("resnet34-b627a593.pth",
                               "https://download.pytorch.org/models/resnet34-b627a593.pth",
                               "smp-hub/resnet34.imagenet"),
    "efficientnet-b0": EncoderWeights(
        "efficientnet-b0-355c32eb.pth",
        "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0/efficientnet-b0-355c32eb.pth",
        "smp-hub/efficientnet-b0.imagenet"),
    "mobilenet_v2": EncoderWeights("mobilenet_v2-b0353104.pth",
                                   "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
                                   "smp-hub/mobilenet_v2.imagenet"),
}

# ImageNet classifier heads: present in the torchvision/original files, deleted from smp encoders.
HEAD_PREFIXES = ("fc.", "classifier.", "_fc.")


class PretrainedWeightsMissing(FileNotFoundError):
    """No ImageNet weights file on this machine; the message says which file and where."""


def torch_hub_dir() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def hf_hub_cache() -> str:
    """Where huggingface_hub keeps downloads (smp >= 0.5 fetches encoders from there)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    root = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(root, "huggingface", "hub")


def find_encoder_weights(encoder: str) -> str:
    """The local ImageNet weights file for ``encoder``, or PretrainedWeightsMissing saying what to do."""
    spec = ENCODER_WEIGHTS[encoder]
    hub_file = os.path.join(torch_hub_dir(), spec.torch_hub_file)
    if os.path.isfile(hub_file):
        return hub_file
    pattern = os.path.join(hf_hub_cache(), "models--" + spec.hf_repo.replace("/", "--"), "snapshots", "*",
                           "model.safetensors")
    found = sorted(glob.glob(pattern))
    if found:
        return found[-1]
    raise PretrainedWeightsMissing(
        f"ImageNet weights for encoder {encoder!r} are not on this machine (each training node "
        f"needs them): expected the file {hub_file} (download {spec.url} and put it there, or set "
        f"TORCH_HOME), or pass "
        f"build_model(..., weights=PATH) a local or s3:// copy. Random weights are never used silently; "
        f"use pretrained=False to train from scratch.")


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A .pth/.pt or .safetensors file -> a flat state dict (unwrapping {'state_dict'|'model': ...})."""
    from roadseg_dist import storage

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load as load_safetensors
            state = load_safetensors(storage.read_bytes(path))
        else:
            import io
            state = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PretrainedWeightsMissing(f"weights file {storage.redact(path)} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling/format error means the same to the user
        raise ValueError(f"weights file {storage.redact(path)} is not a readable torch/safetensors "
                         f"state dict ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"weights file {storage.redact(path)} holds a {type(state).__name__}, "
                         "not a state dict")
    return state


def load_encoder_weights(encoder_module: nn.Module, encoder: str, path: str) -> None:
    """Load an ImageNet state dict into an smp encoder, strictly, minus the classifier head."""
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(HEAD_PREFIXES)}
    # nn.Module's own method: smp's overrides (which drop the head themselves) return None, and we
    # want the missing/unexpected keys to name a mismatched file precisely.
    result = nn.Module.load_state_dict(encoder_module, state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights file {path} does not fit encoder {encoder!r}: missing {result.missing_keys[:5]}"
            f"{'...' if len(result.missing_keys) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
            f"{'...' if len(result.unexpected_keys) > 5 else ''}")
    log.info("loaded ImageNet weights for %s from %s", encoder, path)
