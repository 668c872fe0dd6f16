"""roadseg_dist: BDD100K road-scene segmentation, trained with Ray Train and run in bulk with Ray Data."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "build_model", "load_model"]


def __getattr__(name):
    # Lazy: `import roadseg_dist` stays cheap (no torch) for the CLI's --help and pure-logic tests.
    if name == "build_model":
        from roadseg_dist.models.zoo import build_model
        return build_model
    if name == "load_model":
        from roadseg_dist.models.checkpoint import load_model
        return load_model
    raise AttributeError(name)
