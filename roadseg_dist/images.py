"""Decoding untrusted image bytes: the one place that does it, behind a pixel cap.

A 249 KB PNG can declare 16000x16000 pixels and decode to 768 MB. Every decoded image or frame
(shards, BDD100K files, evaluation, inference merges) goes through ``imdecode``, which reads the
width and height from the header first and refuses the image before any pixel is allocated when
it has more than ``max_pixels()`` pixels: ROADSEG_MAX_PIXELS, default 100 MP (8K video is 33 MP).
"""
from __future__ import annotations

import io
import os
import struct

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000
_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (C4 = DHT, C8 = JPG, CC = DAC are not frames)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageTooLarge(ValueError):
    """An image declares more pixels than the cap allows."""


def max_pixels() -> int:
    value = os.environ.get("ROADSEG_MAX_PIXELS", "")
    try:
        return int(float(value)) if value else DEFAULT_MAX_PIXELS
    except ValueError:
        raise ValueError(f"ROADSEG_MAX_PIXELS={value!r} is not a number of pixels (e.g. 100e6)") from None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of PNG/JPEG (or any format PIL knows), without decoding."""
    if data[:8] == _PNG and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except Exception:  # noqa: BLE001 - unknown to PIL: cv2 decides below
        return None


def check_size(width: int, height: int, name: str) -> None:
    """Raise ImageTooLarge naming ``name`` when width x height is over ``max_pixels()``; for video
    frames, call it with the stream's size before decoding the first frame."""
    cap = max_pixels()
    if width * height > cap:
        raise ImageTooLarge(f"{name}: {width}x{height} = {width * height / 1e6:.0f} MP is over the "
                            f"{cap / 1e6:.0f} MP cap (set ROADSEG_MAX_PIXELS to allow larger images)")


def check_pixels(data: bytes, name: str) -> None:
    """Raise ImageTooLarge naming ``name`` when the header declares more than ``max_pixels()``."""
    size = image_size(data)
    if size:
        check_size(size[0], size[1], name)


def imdecode(data: bytes, flags: int, name: str) -> np.ndarray | None:
    """``cv2.imdecode`` behind the pixel cap; None when the bytes are not a readable image."""
    if not data:
        return None
    check_pixels(data if isinstance(data, bytes) else bytes(data), name)
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
