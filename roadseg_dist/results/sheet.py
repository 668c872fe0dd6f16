"""A contact sheet: the overlay frames of a search, in a grid, each captioned with its video and frame."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from roadseg_dist import storage
from roadseg_dist.render import frame_name

TILE_W, CAPTION_H = 320, 22
READ_THREADS = 8


def _tile(jpeg: bytes | None, caption: str) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) if jpeg else None
    if img is None:
        img = np.full((TILE_W * 9 // 16, TILE_W, 3), 90, np.uint8)
        cv2.putText(img, "overlay missing", (10, img.shape[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (255, 255, 255), 1, cv2.LINE_AA)
    else:
        img = cv2.resize(img, (TILE_W, max(1, round(img.shape[0] * TILE_W / img.shape[1]))),
                         interpolation=cv2.INTER_AREA)
    bar = np.full((CAPTION_H, TILE_W, 3), 255, np.uint8)
    cv2.putText(bar, caption[:48], (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([img, bar])


def _read(url: str) -> bytes | None:
    try:
        return storage.read_bytes(url)
    except FileNotFoundError:
        return None


def contact_sheet(output: str, rows: list[dict[str, Any]], columns: int = 5) -> np.ndarray:
    """BGR image: one tile per row (OUTPUT/<video>/overlay/<frame>.jpg), ``columns`` per line."""
    if not rows:
        raise ValueError("no frames matched: nothing to put on a contact sheet")
    urls = [storage.join(output, str(r["video"]), frame_name(int(r["frame"]), "overlay")) for r in rows]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        jpegs = list(pool.map(_read, urls))
    tiles = [_tile(j, f"{r['video']} #{r['frame']} {r['timestamp']:.2f}s") for j, r in zip(jpegs, rows)]
    cell_h = max(t.shape[0] for t in tiles)
    columns = min(columns, len(tiles))
    lines = -(-len(tiles) // columns)
    sheet = np.full((lines * cell_h, columns * TILE_W, 3), 255, np.uint8)
    for n, t in enumerate(tiles):
        y, x = (n // columns) * cell_h, (n % columns) * TILE_W
        sheet[y:y + t.shape[0], x:x + TILE_W] = t
    return sheet


def write_sheet(url: str, image: np.ndarray) -> None:
    import cv2

    ext = "." + url.rsplit(".", 1)[-1].lower()
    ok, buf = cv2.imencode(".jpg" if ext == ".jpeg" else ext, image)
    if not ok:
        raise ValueError(f"cannot encode a contact sheet as {ext}: name a .png or .jpg file")
    storage.write_bytes(url, buf.tobytes())
