"""Models: the registry (``zoo``), the classic U-Net (``unet``), ImageNet encoder files
(``pretrained``), input normalisation and prediction (``predict``), the checkpoint format
(``checkpoint``) and TorchScript/ONNX export (``export``).

    model = build_model("unet-resnet18", pretrained=True)      # zoo.py
    save_checkpoint("s3://b/run/checkpoint_000003", model, epoch=3, metrics={"val_miou": 0.41})
    model, meta = load_model("s3://b/run")                      # the run's best checkpoint
    masks = predict(model, normalize(images))                   # predict.py: uint8 RGB -> uint8 ids
"""
from __future__ import annotations

__all__ = ["build_model", "list_models", "model_info", "save_checkpoint", "load_model", "read_meta"]


def __getattr__(name):
    # Lazy, like the package root: importing roadseg_dist.models must not pull in torch by itself.
    if name in ("build_model", "list_models", "model_info"):
        from roadseg_dist.models import zoo
        return getattr(zoo, name)
    if name in ("save_checkpoint", "load_model", "read_meta"):
        from roadseg_dist.models import checkpoint
        return getattr(checkpoint, name)
    raise AttributeError(name)
