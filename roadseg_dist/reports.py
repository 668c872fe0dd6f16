"""What the report-writing jobs share: figures as PNG bytes, percentages, and the JSON + Markdown + PNG trio.

    plt = pyplot()                                   matplotlib on its file-only backend (no display)
    png = figure_png(fig)                            the figure as PNG bytes; the figure is closed
    percent(0.4123) == "41.2", percent(None) == "—"  how every table shows a fraction
    write_reports(out, "eval", result, md, png, "iou.png")   out/eval.json, out/eval.md, out/iou.png

Used by ``roadseg eval`` (``eval_report``), ``roadseg compare`` and the training curves (``train/plots``).
"""
from __future__ import annotations

import io
import json

from roadseg_dist import storage


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: jobs draw into files, often on machines without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> bytes:
    """The figure as PNG bytes; closes it (pyplot keeps every open figure alive otherwise)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def percent(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage without the sign; "—" for a value that does not exist."""
    return "—" if value is None else f"{100 * value:.{digits}f}"


def write_reports(out: str, stem: str, result: dict, markdown: str, chart: bytes, chart_name: str) -> dict[str, str]:
    """``out/<stem>.json`` (the result), ``out/<stem>.md`` and ``out/<chart_name>``; their URLs by kind."""
    paths = {"json": storage.join(out, f"{stem}.json"), "markdown": storage.join(out, f"{stem}.md"),
             "chart": storage.join(out, chart_name)}
    storage.write_text(paths["json"], json.dumps(result, indent=2) + "\n")
    storage.write_text(paths["markdown"], markdown)
    storage.write_bytes(paths["chart"], chart)
    return paths
