"""Confusion-matrix metrics, with the definitions of the official BDD100K evaluator.

``bdd100k.eval.seg`` (the toolkit on PyPI) builds a (ground truth x prediction) histogram over the
19 classes plus one "ignored" column, and from it:

- IoU per class   tp / (gt + predicted - tp); a prediction outside 0-18 (e.g. 255) is a miss.
- mIoU            the mean IoU over the classes present in the ground truth.
- Acc per class   tp / predicted pixels of the class (the toolkit's definition: a precision).
- mAcc            the mean Acc over the classes present in the ground truth.
- pAcc            correctly predicted / labelled pixels.
- fIoU            the IoUs weighted by each class's share of the labelled pixels.

Pixels labelled 255 (or any value outside 0-18) in the ground truth are not counted. Workers sum
their matrices (``all_reduce``) so every sample counts exactly once. Values are fractions in [0, 1]
(the toolkit prints percentages). Per-class values are ``None`` for classes absent from the ground
truth: the toolkit shows 0 there, and they enter no mean.
"""
from __future__ import annotations

import numpy as np

from roadseg_dist.labels import CLASSES, NUM_CLASSES


class ConfusionMatrix:
    """``mat[t, p]`` counts pixels of true class ``t`` predicted as ``p``; the last column counts
    predictions outside the classes (scored as wrong, as the official evaluator does)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        self.num_classes = num_classes
        self.mat = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, target, pred) -> None:
        """Add a batch: ``target`` and ``pred`` are integer arrays/tensors of the same shape."""
        target = _numpy(target).reshape(-1)
        pred = _numpy(pred).reshape(-1)
        if target.shape != pred.shape:
            raise ValueError(f"target has {target.size} pixels but prediction {pred.size}")
        n = self.num_classes
        keep = target < n  # drops 255 (IGNORE_INDEX) and any other value outside the classes
        if target.dtype.kind == "i":
            keep &= target >= 0
        # select and clamp in the masks' own (usually uint8) dtype, widen only for the index
        p = pred[keep]
        p[p >= n] = n
        if p.dtype.kind == "i":
            p[p < 0] = n
        idx = target[keep].astype(np.intp) * (n + 1) + p
        self.mat += np.bincount(idx, minlength=n * (n + 1)).reshape(n, n + 1)

    @classmethod
    def from_counts(cls, counts, num_classes: int = NUM_CLASSES) -> "ConfusionMatrix":
        """A matrix from its counts in any shape, e.g. flattened to travel between processes."""
        cm = cls(num_classes)
        cm.mat = np.asarray(counts, dtype=np.int64).reshape(cm.mat.shape).copy()
        return cm

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix's counts (e.g. of another batch or worker) to this one."""
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
        n = self.num_classes
        mat = self.mat.astype(np.float64)
        tp = np.diag(mat[:, :n])
        gt = mat.sum(1)              # every labelled pixel of the class, misses included
        pred = mat[:, :n].sum(0)     # pixels predicted as the class (on labelled pixels)
        total = mat.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.nan_to_num(tp / (gt + pred - tp))
            acc = np.nan_to_num(tp / pred)
        present = gt > 0
        names = list(class_names)[:n]

        def per_class(values):
            return {name: (float(v) if p else None) for name, v, p in zip(names, values, present)}

        return {
            "miou": float(iou[present].mean()) if present.any() else 0.0,
            "mean_acc": float(acc[present].mean()) if present.any() else 0.0,
            "pixel_acc": float(tp.sum() / total) if total else 0.0,
            "fwiou": float((iou * gt / total).sum()) if total else 0.0,
            "labelled_pixels": int(total),
            "iou": per_class(iou),
            "acc": per_class(acc),
        }


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
