"""Which frames to show as thumbnails: the moments where the mix of classes changes most.

A pure function of the per-frame class fractions, so it is tested on made-up numbers.
"""
from __future__ import annotations

import numpy as np


def change_scores(fractions: np.ndarray, window: int) -> np.ndarray:
    """Score of each frame position i: how different the mean class mix of the ``window`` frames
    before i is from that of the ``window`` frames from i on (total variation distance, 0..1).
    Comparing window means, not neighbouring frames, keeps a flickering pixel from looking like a scene change."""
    x = np.asarray(fractions, dtype=np.float64)
    n = len(x)
    scores = np.zeros(n)
    if n < 2:
        return scores
    csum = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    i = np.arange(1, n)
    lo, hi = np.maximum(i - window, 0), np.minimum(i + window, n)
    before = (csum[i] - csum[lo]) / (i - lo)[:, None]
    after = (csum[hi] - csum[i]) / (hi - i)[:, None]
    scores[1:] = 0.5 * np.abs(after - before).sum(axis=1)
    return scores


def change_moments(fractions: np.ndarray, k: int, window: int | None = None) -> list[int]:
    """Positions (row numbers, ascending) of at most ``k`` frames where the class mix changes most.

    Peaks are taken greedily by score, each at least ``2 * window`` frames from the ones already
    taken (their windows do not overlap), so one change is not shown k times; frames where nothing
    changes are never chosen.
    """
    n = len(fractions)
    if n < 2 or k < 1:
        return []
    window = window or max(1, n // (4 * k))
    scores = change_scores(fractions, window)
    chosen: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if scores[i] <= 1e-6 or len(chosen) == k:
            break
        if all(abs(int(i) - c) >= 2 * window for c in chosen):
            chosen.append(int(i))
    return sorted(chosen)


def strip_frames(fractions: np.ndarray, k: int = 6) -> list[int]:
    """The thumbnail strip of a source: its first frame, then the biggest changes of class mix;
    evenly spaced frames fill the strip when the mix hardly changes. Row positions, ascending."""
    n = len(fractions)
    if n <= k:
        return list(range(n))
    picked = {0, *change_moments(fractions, k - 1)}
    for i in np.linspace(0, n - 1, k).round().astype(int):
        if len(picked) >= k:
            break
        if all(abs(int(i) - p) >= max(1, n // (2 * k)) for p in picked):
            picked.add(int(i))
    return sorted(picked)


def least_confident(confidence: np.ndarray, k: int, gap: int | None = None) -> list[int]:
    """Positions (ascending) of at most ``k`` frames where the model was least sure (lowest mean
    top-class probability), each at least ``gap`` frames from the others so one hard stretch is not
    shown k times; frames without a confidence (NaN) are never chosen."""
    c = np.asarray(confidence, dtype=np.float64)
    n = len(c)
    if n == 0 or k < 1:
        return []
    gap = gap or max(1, n // (2 * k))
    chosen: list[int] = []
    for i in np.argsort(np.where(np.isnan(c), np.inf, c), kind="stable"):
        if np.isnan(c[i]) or len(chosen) == k:
            break
        if all(abs(int(i) - j) >= gap for j in chosen):
            chosen.append(int(i))
    return sorted(chosen)
