"""Training augmentation as plain functions (no Ray): decode a sample and write its augmented crop.

    sample_rng(seed, epoch, key)   the sample's randomness, the same wherever its task runs
    draw(rng, size, crop, ...)     the sample's random scale, crop window, flip and jitter factors
    augment(bgr, label, d)         one warp per array (scale + crop + flip in one affine map, image
                                   bilinear, label nearest, 0 / 255 where the scaled image is smaller
                                   than the crop), then one colour transform (jitter + BGR -> RGB)
    decode_augment(samples, ...)   (key, jpg, png) -> blocks {key, image (N,H,W,3), label (N,H,W)}: each
                                   crop is written straight into its block's arrays (no stack, no copy)

Why one warp: the old path resized the whole image (at scale 2 a 1440x2560 image for a 512x1024
crop), padded, cropped, flipped and jittered in float32, each step a full pass over its input. A warp
computes only the crop's pixels, and ``cv2.transform`` does brightness, contrast, saturation and the
channel order in one uint8 pass. The random draws are the old ones, in the old order, so a sample
gets the same scale, window, flip and factors from ``sample_rng(seed, epoch, key)`` as before.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Iterable, Iterator

import cv2
import numpy as np

from roadseg_dist.data.bdd100k import decode_mask
from roadseg_dist.images import imdecode
from roadseg_dist.labels import IGNORE_INDEX


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """Per-sample randomness from (seed, epoch, key): the same augmentation wherever the task runs."""
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])


@dataclasses.dataclass(frozen=True)
class Draw:
    """One sample's augmentation: scaled size, crop window (top-left in the scaled image), flip, jitter."""
    scaled: tuple[int, int]           # (height, width) after the random scale
    crop: tuple[int, int]             # (height, width) of the output
    top: int
    left: int
    flip: bool
    factors: tuple[float, float, float] | None  # brightness, contrast, saturation; None: no jitter


def draw(rng: np.random.Generator, size: tuple[int, int], crop: tuple[int, int],
         scale_range=(0.5, 2.0), flip: bool = True, jitter: float = 0.2) -> Draw:
    """The random choices for a sample of ``size`` (H, W): scale, crop window, flip, jitter factors."""
    h, w = size
    ch, cw = crop
    lo, hi = scale_range
    s = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    sh, sw = (h, w) if s == 1.0 else (max(1, round(h * s)), max(1, round(w * s)))
    top = int(rng.integers(0, max(sh, ch) - ch + 1))
    left = int(rng.integers(0, max(sw, cw) - cw + 1))
    flipped = bool(flip and rng.random() < 0.5)
    factors = tuple(float(f) for f in rng.uniform(1 - jitter, 1 + jitter, size=3)) if jitter > 0 else None
    return Draw((sh, sw), (ch, cw), top, left, flipped, factors)


def warp_matrix(d: Draw, size: tuple[int, int]) -> np.ndarray:
    """2x3 map from an output pixel to the source pixel (pixel centres, as ``cv2.resize`` maps them)."""
    h, w = size
    sy, sx = h / d.scaled[0], w / d.scaled[1]
    if d.flip:  # output column u is column left + cw - 1 - u of the scaled image
        row_x = [-sx, 0.0, (d.left + d.crop[1] - 0.5) * sx - 0.5]
    else:
        row_x = [sx, 0.0, (d.left + 0.5) * sx - 0.5]
    return np.array([row_x, [0.0, sy, (d.top + 0.5) * sy - 0.5]], dtype=np.float64)


def _pad(d: Draw, rgb: np.ndarray, label: np.ndarray) -> None:
    """0 / 255 (not scored) where the crop reaches past the scaled image's bottom or right edge."""
    (sh, sw), (ch, cw) = d.scaled, d.crop
    if d.top + ch > sh:
        rgb[sh - d.top:], label[sh - d.top:] = 0, IGNORE_INDEX
    if d.left + cw > sw:
        inside = sw - d.left
        cols = slice(0, cw - inside) if d.flip else slice(inside, None)
        rgb[:, cols], label[:, cols] = 0, IGNORE_INDEX


def colour_matrix(d: Draw, mean: float) -> np.ndarray:
    """3x4 ``cv2.transform`` matrix: BGR in, RGB out, brightness b, contrast c, saturation s.

    The old float path computed x = b*rgb, x = (x - mean(x)) * c + mean(x), then blended x with its
    per-pixel grey by s; together that is A*rgb + B*grey(rgb) + C per channel.
    """
    b, c, s = d.factors or (1.0, 1.0, 1.0)
    a, g, k = s * c * b, (1 - s) * c * b / 3, (1 - c) * b * mean
    m = np.full((3, 4), g)
    m[:, 3] = k
    for out, src in ((0, 2), (1, 1), (2, 0)):  # R <- B-G-R column 2, G <- 1, B <- 0
        m[out, src] += a
    return m


def augment(bgr: np.ndarray, label: np.ndarray, d: Draw, out_rgb: np.ndarray | None = None,
            out_label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply a draw: BGR uint8 (H, W, 3) + label (H, W) -> RGB crop (h, w, 3) + label crop (h, w).

    ``out_rgb`` / ``out_label`` (contiguous arrays of the crop's shape) receive the result in place.
    """
    size = label.shape[:2]
    if bgr.shape[:2] != size:
        raise ValueError(f"image is {bgr.shape[1]}x{bgr.shape[0]} but its label is {size[1]}x{size[0]}")
    ch, cw = d.crop
    out_rgb = np.empty((ch, cw, 3), np.uint8) if out_rgb is None else out_rgb
    out_label = np.empty((ch, cw), np.uint8) if out_label is None else out_label
    m = warp_matrix(d, size)
    flags = cv2.WARP_INVERSE_MAP
    cv2.warpAffine(bgr, m, (cw, ch), dst=out_rgb, flags=flags | cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    cv2.warpAffine(label, m, (cw, ch), dst=out_label, flags=flags | cv2.INTER_NEAREST,
                   borderMode=cv2.BORDER_REPLICATE)
    _pad(d, out_rgb, out_label)
    if d.factors is None:
        cv2.cvtColor(out_rgb, cv2.COLOR_BGR2RGB, dst=out_rgb)
    else:
        mean = float(np.mean(cv2.mean(out_rgb)[:3]))
        cv2.transform(out_rgb, colour_matrix(d, mean), dst=out_rgb)
    return out_rgb, out_label


def decode_augment(samples: Iterable[tuple[str, bytes, bytes]], *, seed: int, epoch: int, crop,
                   scale_range=(0.5, 2.0), flip: bool = True, jitter: float = 0.2,
                   rows: int = 8) -> Iterator[dict]:
    """Decode and augment samples into blocks of up to ``rows``: {key, image, label} numpy arrays."""
    ch, cw = crop
    block = None
    for key, jpg, png in samples:
        if block is None:
            block = {"key": [], "image": np.empty((rows, ch, cw, 3), np.uint8),
                     "label": np.empty((rows, ch, cw), np.uint8)}
        i = len(block["key"])
        bgr = imdecode(jpg, cv2.IMREAD_COLOR, f"{key}.jpg")
        if bgr is None:
            raise ValueError(f"{key}.jpg: not a readable image (corrupt or empty file)")
        label = decode_mask(png, f"{key}.png")
        d = draw(sample_rng(seed, epoch, key), label.shape, (ch, cw), scale_range, flip, jitter)
        try:
            augment(bgr, label, d, block["image"][i], block["label"][i])
        except ValueError as exc:
            raise ValueError(f"sample {key}: {exc}") from None
        block["key"].append(key)
        if len(block["key"]) == rows:
            yield _finish(block)
            block = None
    if block is not None:
        yield _finish(block)


def _finish(block: dict) -> dict:
    n = len(block["key"])
    return {"key": np.array(block["key"]), "image": block["image"][:n], "label": block["label"][:n]}
