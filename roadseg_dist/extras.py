"""The optional extras, by use, and the one clear error when a command needs one that is missing.

    pip install 'roadseg_dist'             the core: infer (CPU/GPU), synth, shard, view, runs, models,
                                           export to TorchScript / torch.export
    pip install 'roadseg_dist[train]'      train, eval, compare, demo (Ray Train, TensorBoard, matplotlib)
    pip install 'roadseg_dist[infer]'      frames (DuckDB)
    pip install 'roadseg_dist[export]'     export --format onnx (onnx, onnxscript, onnxruntime)
    pip install 'roadseg_dist[tracking]'   train --mlflow (MLflow)
    pip install 'roadseg_dist[cluster]'    submit; the Ray processes of a cluster node (ray[default])
    pip install 'roadseg_dist[dev]'        all of them, and what the tests use (demo --s3: moto)

``require`` looks the modules up without importing them (cheap, before a job starts), so a command
fails in a second naming the extra instead of minutes later with a bare ImportError.
"""
from __future__ import annotations

import importlib.util
import sys

from roadseg_dist.errors import MissingExtra

# extra -> modules that only it installs (ray[train] and ray[default] are told apart by their own deps)
MODULES: dict[str, tuple[str, ...]] = {
    "train": ("tensorboardX", "pydantic", "tensorboard", "matplotlib"),
    "infer": ("duckdb",),
    "export": ("onnx", "onnxruntime", "onnxscript"),
    "tracking": ("mlflow",),
    "cluster": ("aiohttp_cors", "colorful", "opencensus"),
    "dev": ("moto",),
}


def installed(module: str) -> bool:
    if sys.modules.get(module) is not None:  # imported already: colorful swaps itself for an object
        return True                           # without __spec__, on which find_spec raises
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that are not installed here."""
    return [m for m in MODULES[extra] if not installed(m)]


def require(extra: str, what: str) -> None:
    """Raise ``MissingExtra`` naming the extra and the pip command when ``what`` cannot run here."""
    gone = missing(extra)
    if gone:
        raise MissingExtra(f"{what} needs the '{extra}' extra ({', '.join(gone)} not installed): "
                           f"pip install 'roadseg_dist[{extra}]' (or -e '.[{extra}]' in a checkout)")
