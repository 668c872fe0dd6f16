"""Export a checkpoint to TorchScript, torch.export (``.pt2``) or ONNX, with dynamic batch, height and width.

    roadseg export s3://bucket/runs/r1 model.onnx                  # ONNX (torch.onnx's dynamo exporter)
    roadseg export s3://bucket/runs/r1 model.onnx --uint8-input    # decoded RGB frames in, normalised inside
    roadseg export s3://bucket/runs/r1 model.pt2                   # torch.export.load(...).module()

The format follows OUT's suffix (.onnx, .pt2, .pt/.ts) unless ``--format`` says. What is exported is
``Deployable``: the network with its padding to the network's multiple (so any H x W above it runs) and,
with ``--uint8-input``, the checkpoint's normalisation, so a caller feeds decoded frames as they come
(uint8 RGB, N x H x W x 3) and needs no code of ours. The model is exported once at an awkward size,
then the exported file is run at a *different* one and compared with the eager model (``roadseg infer
--amp off``'s); an export that disagrees by more than ``tolerance`` is not written. The checkpoint's
meta.json travels inside the file (TorchScript/.pt2 extra file ``meta.json``; ONNX metadata property
``roadseg_meta``), with ``export_input`` describing what the graph takes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from typing import TYPE_CHECKING, Any

from roadseg_dist import settings, storage
from roadseg_dist.settings import SettingsError

if TYPE_CHECKING:  # torch is imported where it is used: `roadseg --help` must stay quick
    import torch
    from torch import nn

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "pt2", "onnx")
SUFFIXES = {".onnx": "onnx", ".pt2": "pt2", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}
ONNX_OPSET = 18  # what torch.onnx's dynamo exporter writes natively (lower ones go through a converter)


@dataclasses.dataclass
class ExportSettings:
    checkpoint: str = settings.field(path=True, help="checkpoint dir or run dir (its best checkpoint); local or s3://",
                                     argument=True)
    out: str = settings.field(help="output file (local or s3://): model.onnx, model.pt2 or model.pt", argument=True,
                              path=True)
    format: str | None = settings.field(None, choices=FORMATS, help="export format [default: from OUT's suffix: "
                                        ".onnx onnx, .pt2 pt2 (torch.export), .pt/.ts torchscript]")
    uint8_input: bool = settings.field(False, help="take uint8 RGB frames (N, H, W, 3) and normalise inside the "
                                       "graph; default: float (N, 3, H, W) already normalised with meta.json's "
                                       "mean/std, as the model trains")
    opset: int = settings.field(ONNX_OPSET, help="ONNX opset version")
    check: bool = settings.field(True, flag="--check/--no-check",
                                 help="compare the exported model with the eager one before writing")
    tolerance: float = settings.field(1e-4, help="largest allowed |exported - eager| in the check")

    def validate(self) -> None:
        if self.tolerance <= 0:
            raise SettingsError(f"tolerance must be positive, got {self.tolerance}")
        settings.at_least(self, ONNX_OPSET, "opset")
        export_format(self.out, self.format)


def export_format(out: str, fmt: str | None) -> str:
    """The format asked for, or the one OUT's suffix names."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise SettingsError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        return fmt
    suffix = os.path.splitext(str(out))[1].lower()
    if suffix not in SUFFIXES:
        raise SettingsError(f"cannot tell the format from {os.path.basename(str(out))!r}: name it .onnx, .pt2 or "
                            f".pt, or give --format ({', '.join(FORMATS)})")
    return SUFFIXES[suffix]


def example_sizes(multiple: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size to export at, a different size to check at), neither a multiple of anything: an export
    traced where no padding is needed would take "no padding" for a rule."""
    return (2 * multiple + 7, 3 * multiple - 5), (3 * multiple + 3, 2 * multiple - 9)


def deployable(model: nn.Module, mean, std, uint8: bool) -> nn.Module:
    """``Deployable`` around a zoo model (a ``PaddedModel``) with the checkpoint's mean and std."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Deployable(nn.Module):
        """The network, its padding to ``multiple`` and, for uint8 input, the normalisation of
        ``predict.normalize``, in one graph whose batch, height and width stay free."""

        def __init__(self):
            super().__init__()
            self.net, self.multiple, self.uint8 = model.net, int(model.multiple), uint8
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = image
            if self.uint8:  # (N, H, W, 3) uint8 RGB -> what predict.normalize gives the model; contiguous,
                # or export guards on which memory format each convolution picks for a permuted input
                x = (x.permute(0, 3, 1, 2).contiguous().float() / 255.0 - self.mean) / self.std
            h, w, m = x.shape[-2], x.shape[-1], self.multiple
            padded = F.pad(x, [0, (w + m - 1) // m * m - w, 0, (h + m - 1) // m * m - h], mode="replicate")
            logits = self.net(padded)
            # cropped by index_select, not by slicing: a slice's view makes torch.export specialise on
            # whether the padding was zero, where a gather leaves height and width free
            rows = torch.arange(h, device=logits.device)
            cols = torch.arange(w, device=logits.device)
            return logits.index_select(2, rows).index_select(3, cols)

    return Deployable().eval()


def _quietly(fn, *args, **kwargs):
    # The tracer warns about Python ints taken from shapes (the parity check at another size is what
    # proves the graph is size-independent) and torch.jit that it is deprecated in favour of
    # torch.export; TorchScript files are still what C++/mobile runtimes load. Noise to a user.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def dynamic_shapes(net: nn.Module) -> dict[str, dict[int, Any]]:
    """Batch, height and width free; height and width above the network's multiple (one multiple would
    shrink the deepest feature map to 1 x 1, which export treats as a special case)."""
    from torch.export import Dim

    m = net.multiple
    batch, height, width = Dim("batch"), Dim("height", min=m + 1), Dim("width", min=m + 1)
    return {"image": {0: batch, 1: height, 2: width} if net.uint8 else {0: batch, 2: height, 3: width}}


def to_torchscript(net: nn.Module, example: torch.Tensor, meta: dict, path: str) -> None:
    import torch

    with torch.no_grad():
        traced = _quietly(torch.jit.trace, net, example)
        _quietly(torch.jit.save, traced, path, _extra_files={"meta.json": json.dumps(meta)})


def to_pt2(net: nn.Module, example: torch.Tensor, meta: dict, path: str) -> None:
    import torch

    program = torch.export.export(net, (example,), dynamic_shapes=dynamic_shapes(net))
    torch.export.save(program, path, extra_files={"meta.json": json.dumps(meta)})


def to_onnx(net: nn.Module, example: torch.Tensor, meta: dict, path: str, opset: int = ONNX_OPSET) -> None:
    import onnx
    import torch

    with torch.no_grad():
        program = _quietly(torch.onnx.export, net, (example,), dynamo=True, opset_version=opset, verbose=False,
                           input_names=["image"], output_names=["logits"], dynamic_shapes=dynamic_shapes(net))
    program.save(path)
    proto = onnx.load(path)
    onnx.helper.set_model_props(proto, {"roadseg_meta": json.dumps(meta)})
    onnx.save(proto, path)


def run_exported(path: str, fmt: str, x: torch.Tensor) -> torch.Tensor:
    """Run an exported file the way a user would: torch.jit.load, torch.export.load or onnxruntime."""
    import torch

    if fmt == "torchscript":
        with torch.no_grad():
            return _quietly(torch.jit.load, path, map_location="cpu")(x)
    if fmt == "pt2":
        with torch.no_grad():
            return torch.export.load(path).module()(x)
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])


def example_input(net: nn.Module, size: tuple[int, int], batch: int, rng: torch.Generator) -> torch.Tensor:
    """A batch the exported graph takes: uint8 frames, or normalised floats."""
    import torch

    if net.uint8:
        return torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8, generator=rng)
    return torch.randn(batch, 3, *size, generator=rng)


def parity(path: str, fmt: str, net: nn.Module, model: nn.Module, size: tuple[int, int],
           rng: torch.Generator) -> float:
    """max |exported - eager| at ``size``; the eager side is the zoo model on ``predict.normalize``'s input."""
    import torch

    from roadseg_dist.models.predict import normalize

    x = example_input(net, size, 2, rng)
    with torch.no_grad():
        eager = model(normalize(x, net.mean.flatten().tolist(), net.std.flatten().tolist()) if net.uint8 else x)
        return float((run_exported(path, fmt, x) - eager).abs().max())


def export_checkpoint(checkpoint: str, out: str, fmt: str | None = None, *, uint8_input: bool = False,
                      opset: int = ONNX_OPSET, check: bool = True, tolerance: float = 1e-4) -> dict[str, Any]:
    """Export a checkpoint (dir or run dir) to ``out``; returns what was done and the parity found."""
    import torch

    from roadseg_dist.models.checkpoint import input_normalization, load_model

    fmt = export_format(out, fmt)
    if fmt == "onnx":
        from roadseg_dist.extras import require

        require("export", "roadseg export --format onnx")
    model, meta = load_model(checkpoint)
    net = deployable(model, *input_normalization(meta), uint8=uint8_input)
    trace_size, check_size = example_sizes(net.multiple)
    meta = {**meta, "export_format": fmt, "export_input": {
        "name": "image", "dtype": "uint8" if uint8_input else "float32", "layout": "NHWC" if uint8_input else "NCHW",
        "channels": "RGB", "normalized": not uint8_input, "min_size": net.multiple + 1}}
    rng = torch.Generator().manual_seed(0)  # fixed inputs, without touching the global RNG
    report: dict[str, Any] = {"checkpoint": meta["checkpoint"], "out": storage.redact(out), "format": fmt,
                              "arch": meta["arch"], "traced_at": list(trace_size), "input": meta["export_input"]}
    writers = {"torchscript": to_torchscript, "pt2": to_pt2, "onnx": to_onnx}
    with storage.atomic_output(out, suffix={"onnx": ".onnx", "pt2": ".pt2"}.get(fmt, ".pt")) as tmp:
        example = example_input(net, trace_size, 2, rng)
        writers[fmt](net, example, meta, tmp, **({"opset": opset} if fmt == "onnx" else {}))
        if check:
            diff = parity(tmp, fmt, net, model, check_size, rng)
            report.update(checked_at=list(check_size), max_abs_diff=diff)
            if not diff <= tolerance:  # also catches NaN
                raise RuntimeError(f"the exported {fmt} model differs from the eager model by {diff:.3g} "
                                   f"(> {tolerance:g}) at {check_size[0]}x{check_size[1]}; nothing written")
        report["bytes"] = os.path.getsize(tmp)
    log.info("exported %s to %s", meta["checkpoint"], storage.redact(out))
    return report
