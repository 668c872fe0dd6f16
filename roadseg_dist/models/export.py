"""Export a checkpoint to TorchScript or ONNX, with dynamic batch, height and width.

    roadseg export s3://bucket/runs/r1 model.onnx --format onnx

The model is traced once on a small example (the graph does not depend on the size: padding to the
network's multiple is computed from the input's shape), then the exported file is run at a
*different*, awkward size and compared with the eager model; an export that disagrees by more than
``tolerance`` is not written. The checkpoint's meta.json travels inside the file (TorchScript extra
file ``meta.json``; ONNX metadata property ``roadseg_meta``) so the export stays self-describing.
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

FORMATS = ("torchscript", "onnx")


@dataclasses.dataclass
class ExportSettings:
    checkpoint: str = settings.field(path=True, help="checkpoint dir or run dir (its best checkpoint); local or s3://",
                                     argument=True)
    out: str = settings.field(help="output file (local or s3://), e.g. model.onnx", argument=True, path=True)
    format: str = settings.field("torchscript", choices=FORMATS, help="export format")
    opset: int = settings.field(17, help="ONNX opset version")
    check: bool = settings.field(True, flag="--check/--no-check",
                                 help="compare the exported model with the eager one before writing")
    tolerance: float = settings.field(1e-4, help="largest allowed |exported - eager| in the check")

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise SettingsError(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if self.tolerance <= 0:
            raise SettingsError(f"tolerance must be positive, got {self.tolerance}")
        settings.at_least(self, 7, "opset")  # the oldest opset torch.onnx writes


def example_sizes(multiple: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size to trace at, a different size, not a multiple of anything, to check at)."""
    return (2 * multiple, 3 * multiple), (2 * multiple + 7, 3 * multiple - 5)


def _trace_quietly(fn, *args, **kwargs):
    # The tracer warns about Python ints taken from shapes (the parity check at another size is
    # what proves the graph is size-independent) and torch.jit warns it is deprecated in favour of
    # torch.export; TorchScript files are still what C++/mobile runtimes load. Noise to a user.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def to_torchscript(model: nn.Module, example: torch.Tensor, meta: dict, path: str) -> None:
    import torch

    with torch.no_grad():
        traced = _trace_quietly(torch.jit.trace, model, example)
        _trace_quietly(torch.jit.save, traced, path, _extra_files={"meta.json": json.dumps(meta)})


def to_onnx(model: nn.Module, example: torch.Tensor, meta: dict, path: str, opset: int = 17) -> None:
    import onnx
    import torch

    axes = {0: "batch", 2: "height", 3: "width"}
    # dynamo=False: the TorchScript-based exporter needs no onnxscript and handles the dynamic
    # padding arithmetic; the dynamo exporter is the future but is not needed for these nets.
    with torch.no_grad():
        _trace_quietly(torch.onnx.export, model, (example,), path, dynamo=False, opset_version=opset,
                       input_names=["image"], output_names=["logits"],
                       dynamic_axes={"image": axes, "logits": axes})
    proto = onnx.load(path)
    onnx.helper.set_model_props(proto, {"roadseg_meta": json.dumps(meta)})
    onnx.save(proto, path)


def run_exported(path: str, fmt: str, x: torch.Tensor) -> torch.Tensor:
    """Run an exported file the way a user would: torch.jit.load or onnxruntime."""
    import torch

    if fmt == "torchscript":
        with torch.no_grad():
            return _trace_quietly(torch.jit.load, path, map_location="cpu")(x)
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])


def export_checkpoint(checkpoint: str, out: str, fmt: str = "torchscript", *, opset: int = 17,
                      check: bool = True, tolerance: float = 1e-4) -> dict[str, Any]:
    """Export a checkpoint (dir or run dir) to ``out``; returns what was done and the parity found."""
    import torch

    from roadseg_dist.models.checkpoint import load_model

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    model, meta = load_model(checkpoint)
    trace_size, check_size = example_sizes(getattr(model, "multiple", 32))
    meta = {**meta, "export_format": fmt}
    rng = torch.Generator().manual_seed(0)  # fixed inputs, without touching the global RNG
    example = torch.randn(1, 3, *trace_size, generator=rng)
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    report: dict[str, Any] = {"checkpoint": meta["checkpoint"], "out": storage.redact(out), "format": fmt,
                              "arch": meta["arch"], "traced_at": list(trace_size)}
    with storage.atomic_output(out, suffix=suffix) as tmp:
        if fmt == "torchscript":
            to_torchscript(model, example, meta, tmp)
        else:
            to_onnx(model, example, meta, tmp, opset=opset)
        if check:
            x = torch.randn(2, 3, *check_size, generator=rng)
            with torch.no_grad():
                diff = float((run_exported(tmp, fmt, x) - model(x)).abs().max())
            report.update(checked_at=list(check_size), max_abs_diff=diff)
            if not diff <= tolerance:  # also catches NaN
                raise RuntimeError(f"the exported {fmt} model differs from the eager model by {diff:.3g} "
                                   f"(> {tolerance:g}) at {check_size[0]}x{check_size[1]}; nothing written")
        report["bytes"] = os.path.getsize(tmp)
    log.info("exported %s to %s", meta["checkpoint"], storage.redact(out))
    return report
