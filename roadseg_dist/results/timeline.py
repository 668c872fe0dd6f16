"""The timeline of a source: one strip per driving class, its fraction of the frame over time, as inline SVG.

Small multiples, each scaled to its own maximum, because a pedestrian covers 1 % of a frame where
the road covers 40 %: on one shared axis the classes that matter most for driving would be invisible.
Inline SVG (not a PNG per source) costs no extra file on S3 and no plotting time for 1000 sources.
"""
from __future__ import annotations

import html

import numpy as np

from roadseg_dist import labels

# (label, columns summed into it): the classes that matter for driving
TIMELINE_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("road", ("road",)), ("sidewalk", ("sidewalk",)), ("person", ("person",)), ("rider", ("rider",)),
    ("car", ("car",)), ("truck", ("truck",)), ("bus", ("bus",)), ("bicycle", ("bicycle",)),
    ("motorcycle", ("motorcycle",)), ("traffic light/sign", ("traffic light", "traffic sign")),
)
WIDTH, ROW, LABEL_W, AXIS_H = 900, 24, 150, 18
MAX_POINTS = 250  # columns of the chart (3 px each): long videos are averaged down to this many
MIN_SCALE = 0.01  # a strip's top is at least 1 % of the frame, so a few stray pixels stay flat


def color(label: str) -> str:
    first = dict(TIMELINE_CLASSES)[label][0]
    r, g, b = labels.PALETTE[labels.CLASS_ID[first]]
    return f"#{r:02x}{g:02x}{b:02x}"


def driving_fractions(fractions: np.ndarray) -> np.ndarray:
    """(frames, 19) class fractions -> (frames, len(TIMELINE_CLASSES)), traffic light + sign summed."""
    x = np.asarray(fractions, dtype=np.float64)
    return np.stack([x[:, [labels.CLASS_ID[c] for c in cols]].sum(axis=1) for _, cols in TIMELINE_CLASSES], axis=1)


def bucket_means(values: np.ndarray, buckets: int) -> np.ndarray:
    """Average consecutive rows down to at most ``buckets`` rows (order kept)."""
    n = len(values)
    if n <= buckets:
        return values
    edges = np.linspace(0, n, buckets + 1).astype(int)
    return np.add.reduceat(values, edges[:-1], axis=0) / np.diff(edges)[:, None]


def _ticks(duration: float) -> list[float]:
    step = next((s for s in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800) if duration / s <= 8), 3600)
    return [i * step for i in range(int(duration // step) + 1)]


def _strip(row: int, label: str, col: np.ndarray, xs: np.ndarray, fill: str, scale: float, tip: str) -> str:
    top, base = row * ROW + 3, (row + 1) * ROW - 1
    ys = base - (base - top) * col / scale
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    first, last = (xs[0], xs[-1]) if len(xs) else (LABEL_W, WIDTH)
    return (f'<g><title>{html.escape(tip)}</title>'
            f'<rect x="{LABEL_W}" y="{top}" width="{WIDTH - LABEL_W}" height="{base - top}" fill="#f4f4f4"/>'
            f'<polygon points="{first:.1f},{base} {pts} {last:.1f},{base}" fill="{fill}"/>'
            f'<text x="4" y="{base - 6}" font-size="12">{html.escape(label)}</text></g>')


def svg(timestamps: np.ndarray, fractions: np.ndarray, marks: list[float] = (),
        confidence: np.ndarray | None = None) -> str:
    """Inline SVG: a strip per class (area in the class colour, its peak in the label), with
    ``confidence`` one more strip of how unsure the model was (1 - mean top-class probability), a time
    axis, and dashed lines at ``marks`` (the thumbnails' times). ``fractions`` is (frames, classes)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    duration = float(ts[-1] - ts[0]) if len(ts) > 1 else 0.0
    values = bucket_means(np.asarray(fractions, dtype=np.float64), MAX_POINTS)
    xs = LABEL_W + (np.arange(len(values)) + 0.5) * (WIDTH - LABEL_W) / max(len(values), 1)
    rows = len(TIMELINE_CLASSES) + (confidence is not None)
    height = ROW * rows + AXIS_H
    out = [f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
           f'data-duration="{duration:.3f}" xmlns="http://www.w3.org/2000/svg">']
    for row, (label, _) in enumerate(TIMELINE_CLASSES):
        col = values[:, row]
        peak = float(col.max()) if len(col) else 0.0
        out.append(_strip(row, f"{label} {100 * peak:.1f} %", col, xs, color(label), max(peak, MIN_SCALE),
                          f"{label}: up to {100 * peak:.1f} % of the frame"))
    if confidence is not None:
        unsure = bucket_means(1.0 - np.nan_to_num(np.asarray(confidence, np.float64)[:, None], nan=1.0), MAX_POINTS)
        out.append(_strip(len(TIMELINE_CLASSES), "model unsure", unsure[:, 0], xs, "#c0392b", 1.0,
                          "1 - the mean top-class probability: higher is less sure"))
    axis_y = ROW * rows
    for t in _ticks(duration):
        x = LABEL_W + (WIDTH - LABEL_W) * t / duration if duration else LABEL_W
        out.append(f'<text x="{x:.1f}" y="{axis_y + 13}" font-size="11" fill="#555">{t:g}s</text>')
    for t in marks:
        x = LABEL_W + (WIDTH - LABEL_W) * (t - ts[0]) / duration if duration else LABEL_W
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{axis_y}" stroke="#333" stroke-dasharray="3 3"/>')
    out.append("</svg>")
    return "".join(out)
