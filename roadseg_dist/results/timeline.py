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


def svg(timestamps: np.ndarray, fractions: np.ndarray, marks: list[float] = ()) -> str:
    """Inline SVG: a strip per class (area in the class colour, its peak in the label), a time axis,
    and dashed lines at ``marks`` (the thumbnails' times). ``fractions`` is (frames, classes)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    duration = float(ts[-1] - ts[0]) if len(ts) > 1 else 0.0
    values = bucket_means(np.asarray(fractions, dtype=np.float64), MAX_POINTS)
    plot_w = WIDTH - LABEL_W
    xs = LABEL_W + (np.arange(len(values)) + 0.5) * plot_w / max(len(values), 1)
    height = ROW * len(TIMELINE_CLASSES) + AXIS_H
    out = [f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
           f'data-duration="{duration:.3f}" xmlns="http://www.w3.org/2000/svg">']
    for row, (label, _) in enumerate(TIMELINE_CLASSES):
        col = values[:, row]
        peak = float(col.max()) if len(col) else 0.0
        top, base = row * ROW + 3, (row + 1) * ROW - 1
        ys = base - (base - top) * col / max(peak, MIN_SCALE)
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
        first, last = (xs[0], xs[-1]) if len(xs) else (LABEL_W, WIDTH)
        out.append(f'<g><title>{html.escape(label)}: up to {100 * peak:.1f} % of the frame</title>'
                   f'<rect x="{LABEL_W}" y="{top}" width="{plot_w}" height="{base - top}" fill="#f4f4f4"/>'
                   f'<polygon points="{first:.1f},{base} {pts} {last:.1f},{base}" fill="{color(label)}"/>'
                   f'<text x="4" y="{base - 6}" font-size="12">{html.escape(label)}'
                   f'<tspan fill="#777"> {100 * peak:.1f} %</tspan></text></g>')
    axis_y = ROW * len(TIMELINE_CLASSES)
    for t in _ticks(duration):
        x = LABEL_W + plot_w * t / duration if duration else LABEL_W
        out.append(f'<text x="{x:.1f}" y="{axis_y + 13}" font-size="11" fill="#555">{t:g}s</text>')
    for t in marks:
        x = LABEL_W + plot_w * (t - ts[0]) / duration if duration else LABEL_W
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{axis_y}" stroke="#333" stroke-dasharray="3 3"/>')
    out.append("</svg>")
    return "".join(out)
