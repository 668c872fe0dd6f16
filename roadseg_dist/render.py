"""Turning a frame and its mask into the files people look at, cheaply.

The CPU spent here per frame bounds throughput on GPU nodes, so each encoding is picked for cost:
the mask PNG from the model-size mask, its repeated rows' compressed bytes made once
(``upsampled_mask_png``); the colour PNG is that same PNG with a palette spliced in (an 8-bit
paletted PNG stores exactly the bytes of an 8-bit grey one, so it costs no second encode); the
overlay of a video's frame is blended on its YUV planes and encoded from them (``yuv.py``), a BGR
frame's with ``cv2.applyColorMap`` (the palette as a lookup table) and ``cv2.addWeighted``, both
quality-85 JPEGs; class fractions come from ``cv2.calcHist`` on the model-size mask, one
histogram per block size; the model's input is shrunk by a whole-number box first, bilinearly under
2x (``shrink``).
"""
from __future__ import annotations

import dataclasses
import functools
import struct
import zlib
from typing import Callable

import cv2
import numpy as np

from roadseg_dist import labels, yuv

PNG_LEVEL = 1  # ~3x cheaper than the default 3 at 720p, masks barely grow
PNG_MEM_LEVEL = 4  # a smaller hash table to clear at each full flush (-10% at 720p), masks barely grow
SPLICE_REPEATS = 3  # a row repeated 3+ times has its repeats spliced in pre-deflated; fewer are deflated in line


_BGR_LUT_CV = np.ascontiguousarray(labels.palette_lut(bgr=True).reshape(256, 1, 3))  # the shape applyColorMap wants


def model_input(frames: list, size: tuple[int, int]) -> np.ndarray:
    """Frames of any size (BGR uint8 arrays, or ``yuv.Frame`` planes) -> RGB uint8 (N, H, W, 3) at the
    model's input size (area averaging when shrinking). Here, not beside the model: decode tasks call
    it without torch."""
    h, w = size
    batch = np.empty((len(frames), h, w, 3), np.uint8)
    for f, out in zip(frames, batch):
        if isinstance(f, yuv.Frame):
            f = f.bgr()  # the decoder's conversion: the input, hence the masks, of decoding to BGR
        small = shrink(f, h, w) if f.shape[0] > h else cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
        cv2.cvtColor(small, cv2.COLOR_BGR2RGB, dst=out)
    return batch


def _box_factor(height: int, width: int, h: int, w: int) -> int:
    """The largest k >= 2 that divides the frame's sides and leaves it at least (h, w); 1 if none."""
    for k in range(min(height // h, width // w), 1, -1):
        if height % k == 0 and width % k == 0:
            return k
    return 1


def shrink(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Shrinking to (h, w) by area averaging, or bilinear where the factor is under 2 both ways.

    OpenCV's area resize has a fast path for whole-number factors only: 720p to 192x256 (3.75 x 5)
    took ~1.9 CPU-ms a frame, a 2x box first (720p -> 640x360, the fast path) and area on the rest
    ~0.9; both steps average boxes of pixels, and the result differs from one area step by rounding
    at the boxes' edges. Under 2x (720p to 512x1024 or 576x768, the sizes models train at) area
    averaging took 3-4 CPU-ms and bilinear ~1, within ~0.4 levels on average: no pixel is skipped
    at those factors, and training's random rescaling resamples bilinearly too (``data/augment``)."""
    k = _box_factor(image.shape[0], image.shape[1], h, w)
    if k > 1:
        image = cv2.resize(image, (image.shape[1] // k, image.shape[0] // k), interpolation=cv2.INTER_AREA)
    if image.shape[:2] == (h, w):
        return image
    mild = image.shape[0] < 2 * h and image.shape[1] < 2 * w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR if mild else cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A model-size mask -> the source frame's size (nearest: ids are labels, not intensities)."""
    if mask.shape == (height, width):
        return mask
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


@functools.lru_cache(maxsize=32)
def _taken(small: int, full: int) -> np.ndarray:
    """The input pixel each of ``full`` output pixels (a row or a column) of nearest-neighbour
    resizing is: cv2's own mapping, read off by resizing a ramp."""
    ramp = np.arange(small, dtype=np.uint16).reshape(1, small)
    return cv2.resize(ramp, (full, 1), interpolation=cv2.INTER_NEAREST)[0].astype(np.intp)


@functools.lru_cache(maxsize=32)
def _repeats(small: int, full: int) -> np.ndarray:
    """How many of ``full`` output pixels nearest-neighbour resizing takes from each of ``small``."""
    return np.bincount(_taken(small, full), minlength=small)


@functools.lru_cache(maxsize=32)
def _blocks(shape: tuple[int, int], height: int, width: int) -> tuple[tuple[int, np.ndarray | None], ...]:
    """The small mask's pixels grouped by the size of the block of output pixels each becomes:
    (block size, uint8 mask of those pixels, or None for all of them). Nearest upsampling by r
    rows and c columns has at most two block heights and two widths, so at most four groups."""
    rows, cols = _repeats(shape[0], height), _repeats(shape[1], width)
    groups = []
    for a in np.unique(rows[rows > 0]).tolist():
        for b in np.unique(cols[cols > 0]).tolist():
            where = np.outer(rows == a, cols == b)
            groups.append((a * b, None if where.all() else where.view(np.uint8)))
    return tuple(groups)


def _block_hist(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Counts of each uint8 value of ``image`` as its upsampled twin's pixels, exactly."""
    counts = np.zeros(256, np.float64)
    for size, where in _blocks(image.shape, height, width):
        counts += size * cv2.calcHist([image], [0], where, [256], [0, 256]).ravel()
    return counts


def upsampled_fractions(mask: np.ndarray, height: int, width: int,
                        num_classes: int = labels.NUM_CLASSES) -> np.ndarray:
    """``class_fractions(resize_mask(mask, height, width))``, exactly, from the small mask: each of
    its pixels counts as the block of output pixels it becomes (~20x fewer pixels to count), one
    histogram per block size (``_blocks``)."""
    if mask.shape == (height, width):
        return class_fractions(mask, num_classes)
    counts = _block_hist(np.ascontiguousarray(mask, dtype=np.uint8), height, width)[:num_classes]
    return (counts / max(1, height * width)).astype(np.float32)


def changed_fraction(before: np.ndarray, after: np.ndarray, height: int, width: int) -> float:
    """The share of a frame's pixels (at ``height`` x ``width``) whose class differs between two
    model-size masks, counted as their upsampled masks' pixels (``resize_mask``), exactly."""
    changed = np.not_equal(before, after).view(np.uint8)
    # each row's changed pixels weighted by their columns' repeats, then the rows': whole numbers, and
    # einsum, not BLAS, whose threads spin on the unit's CPU after every call (a 512x1024 mask: +14 CPU-ms a frame)
    per_row = np.einsum("ij,j->i", changed, _repeats(after.shape[1], width))
    return float(_repeats(after.shape[0], height) @ per_row / max(1, height * width))


def encode_mask_png(mask: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a label mask (``upsampled_mask_png`` for one at the model's size)."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    return _png_rows(mask, np.arange(mask.shape[0]))


def upsampled_mask_png(mask: np.ndarray, height: int, width: int) -> bytes:
    """``encode_mask_png(resize_mask(mask, height, width))`` from the small mask: its rows widened,
    each taken by the output rows that nearest upsampling takes from it (the full mask is never made)."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if mask.shape[1] != width:
        mask = cv2.resize(mask, (width, mask.shape[0]), interpolation=cv2.INTER_NEAREST)
    return _png_rows(mask, _taken(mask.shape[0], height))


def _png_rows(rows: np.ndarray, take: np.ndarray) -> bytes:
    """The PNG of the image whose row i is ``rows[take[i]]``, ~4x cheaper than libpng's for a mask
    upsampled from the model's size, where most rows repeat the row above (a road scene's mask at
    192x256 to 720p: ~1.0 against ~4.5 CPU-ms at level 1).

    A repeated row is, under PNG's UP filter, a filter byte and zeros: the deflate bytes of
    SPLICE_REPEATS or more such rows are made once per width and count (``_repeats_deflated``) and
    spliced into the stream. The other rows are SUB-filtered and deflated at level 1, with a full flush before each
    splice (the stream is byte-aligned there and nothing after it refers back), so only the distinct
    rows are compressed. Fewer repeats (a 2x upsampled mask has one a row) are deflated in line:
    a flush costs more than deflating a row of zeros. The deflater's hash table is small (memLevel
    4), as a full flush clears it. The zlib checksum is carried over the spliced rows arithmetically."""
    h, w = len(take), rows.shape[1]
    group = np.zeros(len(rows), np.intp)  # equal neighbouring rows share a group
    group[1:] = np.cumsum(np.any(rows[1:] != rows[:-1], axis=1))
    changed = np.ones(h, bool)
    changed[1:] = group[take[1:]] != group[take[:-1]]
    starts = np.flatnonzero(changed)
    runs = np.diff(np.append(starts, h)).tolist()
    firsts = rows[take[starts]]
    filtered = np.empty((len(starts), w + 1), np.uint8)
    filtered[:, 0], filtered[:, 1] = 1, firsts[:, 0]  # filter 1: SUB
    np.subtract(firsts[:, 1:], firsts[:, :-1], out=filtered[:, 2:])
    deflate, parts, adler = zlib.compressobj(PNG_LEVEL, zlib.DEFLATED, -15, PNG_MEM_LEVEL), [b"\x78\x01"], 1
    repeat = b"\x02" + bytes(w)
    for row, run in zip(filtered, runs):
        parts.append(deflate.compress(row))
        adler = zlib.adler32(row, adler)
        if 0 < run - 1 < SPLICE_REPEATS:
            zeros = repeat * (run - 1)
            parts.append(deflate.compress(zeros))
            adler = zlib.adler32(zeros, adler)
        elif run - 1 >= SPLICE_REPEATS:
            parts += [deflate.flush(zlib.Z_FULL_FLUSH), _repeats_deflated(w, run - 1)]
            a, b = adler & 0xFFFF, adler >> 16
            for _ in range(run - 1):  # the checksum over b"\x02" + w zero bytes
                a = (a + 2) % 65521
                b = (b + (w + 1) * a) % 65521
            adler = (b << 16) | a
    parts += [deflate.flush(), adler.to_bytes(4, "big")]
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


@functools.lru_cache(maxsize=256)
def _repeats_deflated(width: int, count: int) -> bytes:
    """Raw deflate of ``count`` UP-filtered rows of zeros (a row repeated), ending byte-aligned."""
    deflate = zlib.compressobj(PNG_LEVEL, zlib.DEFLATED, -15, PNG_MEM_LEVEL)
    return deflate.compress((b"\x02" + bytes(width)) * count) + deflate.flush(zlib.Z_FULL_FLUSH)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def palettize_png(grey_png: bytes, palette=labels.PALETTE) -> bytes:
    """An 8-bit greyscale PNG of train ids -> the same image as an indexed PNG in ``palette``."""
    if grey_png[:8] != b"\x89PNG\r\n\x1a\n" or grey_png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    ihdr = bytearray(grey_png[16:29])
    if ihdr[8] != 8 or ihdr[9] != 0:
        raise ValueError(f"need an 8-bit greyscale PNG, got bit depth {ihdr[8]} colour type {ihdr[9]}")
    ihdr[9] = 3  # colour type 3: indexed
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    colours[labels.IGNORE_INDEX] = labels.IGNORE_COLOR
    rest = grey_png[33:]  # after signature (8) + IHDR chunk (4 + 4 + 13 + 4)
    return grey_png[:8] + _chunk(b"IHDR", bytes(ihdr)) + _chunk(b"PLTE", colours.tobytes()) + rest


def colorize_bgr(mask: np.ndarray) -> np.ndarray:
    return cv2.applyColorMap(mask, _BGR_LUT_CV)  # 3-4x faster than numpy take at 720p


def blend_overlay(frame, mask: np.ndarray, alpha: float = 0.5):
    """The frame with its classes' colours laid over it: BGR for a BGR frame, planes for planes."""
    if isinstance(frame, yuv.Frame):
        return yuv.blend(frame, mask, alpha)
    return cv2.addWeighted(frame, 1.0 - alpha, colorize_bgr(mask), alpha, 0.0)


def encode_jpeg(image, quality: int = 85) -> bytes:
    """A quality-``quality`` 4:2:0 JPEG of a BGR image or of ``yuv.Frame`` planes."""
    if isinstance(image, yuv.Frame):
        return yuv.encode_jpeg(image, quality)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def class_fractions(mask: np.ndarray, num_classes: int = labels.NUM_CLASSES) -> np.ndarray:
    """Fraction of the frame's pixels per class (float32, length ``num_classes``)."""
    counts = cv2.calcHist([mask], [0], None, [256], [0, 256]).ravel()[:num_classes]
    return (counts / max(1, mask.size)).astype(np.float32)


class Rendered:
    """One frame (BGR, or ``yuv.Frame`` planes) and its mask (at the model's size or the frame's), each
    derived image made once: the mask PNG serves mask and color, the blended overlay serves the overlay
    JPEG and the overlay video. The mask at the frame's size is made only where a BGR frame needs it."""

    def __init__(self, frame, mask: np.ndarray, alpha: float = 0.5, quality: int = 85):
        self.frame, self.small, self.alpha, self.quality = frame, mask, alpha, quality

    @functools.cached_property
    def mask(self) -> np.ndarray:
        return resize_mask(self.small, self.frame.shape[0], self.frame.shape[1])

    @functools.cached_property
    def mask_png(self) -> bytes:
        return upsampled_mask_png(self.small, self.frame.shape[0], self.frame.shape[1])

    @functools.cached_property
    def overlay(self):
        planes = isinstance(self.frame, yuv.Frame)  # planes upsample the colours themselves
        return blend_overlay(self.frame, self.small if planes else self.mask, self.alpha)


@dataclasses.dataclass(frozen=True)
class OutputKind:
    """One thing ``roadseg infer --outputs`` writes. A per-frame kind has an extension and an encoder
    (``OUTPUT/<id>/<name>/NNNNNN<extension>``); the others are written once per source or run."""
    name: str
    extension: str | None = None                          # per-frame file's extension
    encode: Callable[[Rendered], bytes] | None = None     # that file's bytes
    needs: tuple[str, ...] = ()                           # kinds written with it
    default: bool = True                                  # written when --outputs is not given
    in_stats: bool = False                                # its path is a column of the stats


# The one table of output kinds: settings, the unit of work, the stats and the pages read it.
OUTPUTS: dict[str, OutputKind] = {k.name: k for k in (
    OutputKind("mask", ".png", lambda r: r.mask_png, in_stats=True),           # train ids, grey PNG
    OutputKind("color", ".png", lambda r: palettize_png(r.mask_png)),          # the same, paletted
    OutputKind("overlay", ".jpg", lambda r: encode_jpeg(r.overlay, r.quality), in_stats=True),
    OutputKind("original", ".jpg", lambda r: encode_jpeg(r.frame, r.quality), default=False),
    OutputKind("video", needs=("overlay",)),  # overlay.mp4, made of the overlay JPEGs' frames
    OutputKind("stats"),                      # OUTPUT/frames/part-*.parquet
)}
FRAME_KINDS = tuple(k for k, o in OUTPUTS.items() if o.encode is not None)
STATS_PATHS = tuple(k for k, o in OUTPUTS.items() if o.in_stats)


def encode_files(r: Rendered, kinds) -> dict[str, bytes]:
    """The per-frame files of ``kinds`` (others ignored), by kind, in the table's order."""
    return {k: OUTPUTS[k].encode(r) for k in FRAME_KINDS if k in kinds}


def render_frame(frame, mask: np.ndarray, kinds, alpha: float = 0.5,
                 quality: int = 85) -> dict[str, bytes]:
    """Encoded files of one frame, by output kind: mask/color (.png), overlay/original (.jpg)."""
    return encode_files(Rendered(frame, mask, alpha, quality), kinds)


def frame_name(index: int, kind: str) -> str:
    return f"{kind}/{index:06d}{OUTPUTS[kind].extension}"
