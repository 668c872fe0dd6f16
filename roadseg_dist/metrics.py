"""Confusion-matrix metrics, with the definitions of the official BDD100K evaluator.

The matrix is (ground truth x prediction), pixels labelled 255 are not counted. mIoU is the mean
IoU over the classes present in the ground truth (``bdd100k.eval.seg`` does the same). Workers sum
their matrices (``all_reduce``) so every sample counts exactly once.
"""
from __future__ import annotations

import numpy as np

from roadseg_dist.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES


class ConfusionMatrix:
    def __init__(self, num_classes: int = NUM_CLASSES):
        self.num_classes = num_classes
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, target, pred) -> None:
        """Add a batch: ``target`` and ``pred`` are integer arrays/tensors of the same shape."""
        target = _numpy(target).reshape(-1).astype(np.int64)
        pred = _numpy(pred).reshape(-1).astype(np.int64)
        keep = (target != IGNORE_INDEX) & (target >= 0) & (target < self.num_classes)
        idx = target[keep] * self.num_classes + pred[keep]
        self.mat += np.bincount(idx, minlength=self.num_classes ** 2).reshape(self.num_classes, -1)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        self.mat += other.mat
        return self

    def all_reduce(self) -> None:
        """Sum the matrices of all processes of the default torch.distributed group."""
        import torch
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            t = torch.from_numpy(self.mat.copy())
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.all_reduce(t)
            self.mat = t.cpu().numpy()

    @property
    def labelled_pixels(self) -> int:
        return int(self.mat.sum())

    def compute(self, class_names=CLASSES) -> dict:
        mat = self.mat.astype(np.float64)
        tp = np.diag(mat)
        gt = mat.sum(1)
        pred = mat.sum(0)
        union = gt + pred - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt > 0, tp / gt, np.nan)
        present = gt > 0
        total = mat.sum()
        freq = gt / total if total else np.zeros_like(gt)
        names = list(class_names)[: self.num_classes]
        return {
            "miou": float(np.nanmean(iou[present])) if present.any() else 0.0,
            "pixel_acc": float(tp.sum() / total) if total else 0.0,
            "mean_acc": float(np.nanmean(acc[present])) if present.any() else 0.0,
            "fwiou": float(np.nansum(freq[present] * iou[present])) if total else 0.0,
            "labelled_pixels": int(total),
            "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
            "acc": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, acc)},
        }


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
