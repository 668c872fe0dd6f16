"""Training losses, each returned as ``(loss_sum, norm)`` so DDP can normalise over the global batch.

    ce       cross-entropy over the labelled pixels (optionally class-weighted)
    ohem     online hard example mining CE (mmsegmentation's ``OhemPixelSampler`` with ``thresh``):
             only pixels whose probability of the true class is below ``thresh`` count, and at
             least ``min_kept`` per image (the hardest ones) so a nearly solved batch still teaches
    dice_ce  CE plus ``dice_weight`` x the soft Dice loss over the classes present in the batch

``ddp_loss(loss_sum, norm)`` (train/loop.py) divides by the summed ``norm`` of all workers, so
N workers x batch b give the gradient of 1 worker x batch N*b for CE and OHEM exactly. Dice is a
ratio over the whole batch and does not split into per-pixel terms: each worker contributes its own
batch's Dice weighted by its labelled pixels (``dice * norm``), i.e. the pixel-weighted mean of the
per-worker Dice losses, which is what the global batch would give when workers see similar batches.

``build_criterion(name, ...)`` is the only way the training loop picks one; the names are the
strings of ``--loss``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from roadseg_dist.labels import IGNORE_INDEX
from roadseg_dist.train.settings import LOSSES


def _full(x: torch.Tensor) -> torch.Tensor:
    """Losses are computed in at least float32, whatever precision autocast gave the logits."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _labelled_norm(target: torch.Tensor, weight: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor:
    """The normaliser: number (or summed class weight) of the pixels in ``keep``."""
    if weight is None:
        return keep.sum().float()
    return weight[target[keep].long()].sum().float()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None):
    """Cross-entropy ignoring 255, as (sum over pixels, normaliser = summed pixel weights)."""
    x = _full(logits)
    loss_sum = F.cross_entropy(x, target.long(), weight=None if weight is None else weight.to(x.dtype),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, _labelled_norm(target, weight, target != IGNORE_INDEX)


def ohem_keep(logits: torch.Tensor, target: torch.Tensor, thresh: float, min_kept: int) -> torch.Tensor:
    """Which labelled pixels are hard: p(true class) < thresh, or among the ``min_kept`` lowest.

    ``min_kept`` is per image (mmsegmentation multiplies it by the batch size too). Chosen without
    gradient: the selection is a mask, not part of the loss.
    """
    with torch.no_grad():
        valid = target != IGNORE_INDEX
        n_valid = int(valid.sum())
        if n_valid == 0:
            return valid
        prob = logits.float().softmax(1)
        safe = torch.where(valid, target, torch.zeros_like(target)).long()
        p_true = prob.gather(1, safe.unsqueeze(1)).squeeze(1)
        hard = p_true < thresh
        kept = min(int(min_kept) * target.shape[0], n_valid)
        if kept > 0:
            kth = torch.sort(p_true[valid]).values[kept - 1]
            hard |= p_true <= kth
        return valid & hard


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
                       thresh: float = 0.7, min_kept: int = 10000):
    """CE summed over the hard pixels only (``ohem_keep``); normaliser = their (weighted) count."""
    keep = ohem_keep(logits, target, thresh, min_kept)
    masked = torch.where(keep, target.long(), torch.full_like(target.long(), IGNORE_INDEX))
    x = _full(logits)
    loss_sum = F.cross_entropy(x, masked, weight=None if weight is None else weight.to(x.dtype),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, _labelled_norm(target, weight, keep)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in ``target`` (labelled pixels only).

    Dice_c = (2 sum p_c g_c + smooth) / (sum p_c + sum g_c + smooth) with p the softmax and g the
    one-hot target; a class absent from the batch would only reward predicting nothing, so it is left
    out of the mean (as in segmentation_models_pytorch's DiceLoss).
    """
    num_classes = logits.shape[1]
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    prob = _full(logits).softmax(1) * valid
    safe = torch.where(valid.squeeze(1), target, torch.zeros_like(target)).long()
    onehot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(prob.dtype) * valid
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    present = onehot.sum(dims) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    return 1.0 - dice[present].mean()


def dice_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
                       dice_weight: float = 1.0):
    """CE + ``dice_weight`` x Dice; the Dice term scaled by the normaliser so sum/norm = CE mean + w x Dice."""
    ce_sum, norm = cross_entropy(logits, target, weight)
    return ce_sum + dice_weight * dice_loss(logits, target) * norm.detach(), norm


def build_criterion(name: str = "ce", *, ohem_thresh: float = 0.7, ohem_min_kept: int = 10000,
                    dice_weight: float = 1.0):
    """``criterion(logits, target, weight) -> (loss_sum, norm)`` for a ``--loss`` name."""
    if name == "ce":
        return cross_entropy
    if name == "ohem":
        return functools.partial(ohem_cross_entropy, thresh=ohem_thresh, min_kept=ohem_min_kept)
    if name == "dice_ce":
        return functools.partial(dice_cross_entropy, dice_weight=dice_weight)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
