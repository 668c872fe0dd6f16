"""The reports of ``roadseg eval``: eval.md (a Markdown table), iou.png (a bar per class) and the terminal table.

Plain functions of the result dict that ``evaluate.run`` also writes as eval.json.
"""
from __future__ import annotations

import numpy as np

from roadseg_dist import labels, reports
from roadseg_dist.reports import percent


def markdown_report(result: dict) -> str:
    m = result["metrics"]
    lines = [f"# Evaluation of `{result['checkpoint']}`", "",
             f"{result['images']} images of split `{result['split']}` from `{result['data']}`, "
             f"{m['labelled_pixels']:,} labelled pixels. Values in %; the BDD100K evaluator's definitions "
             "(mIoU and mAcc over the classes present in the ground truth; — = class absent).", "",
             "| mIoU | mAcc | pixel acc | fwIoU |", "| ---: | ---: | ---: | ---: |",
             f"| {percent(m['miou'])} | {percent(m['mean_acc'])} | {percent(m['pixel_acc'])} | "
             f"{percent(m['fwiou'])} |", "",
             "| class | IoU | Acc |", "| --- | ---: | ---: |"]
    for name in labels.CLASSES:
        lines.append(f"| {name} | {percent(m['iou'][name])} | {percent(m['acc'][name])} |")
    return "\n".join(lines) + "\n"


def iou_chart(metrics: dict, title: str) -> bytes:
    """A horizontal bar per class in its official colour, and the mIoU as a dashed line (PNG)."""
    plt = reports.pyplot()
    names = list(labels.CLASSES)
    values = [100 * (metrics["iou"][n] or 0.0) for n in names]
    colors = [np.array(labels.PALETTE[i]) / 255 for i in range(len(names))]
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    bars = ax.barh(names, values, color=colors, edgecolor="black", linewidth=0.5)
    for bar, name, value in zip(bars, names, values):
        text = "absent" if metrics["iou"][name] is None else f"{value:.1f}"
        ax.text(value + 1, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=8)
    ax.axvline(100 * metrics["miou"], color="black", linestyle="--", linewidth=1,
               label=f"mIoU {100 * metrics['miou']:.1f} (classes present in the ground truth)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, 110)
    ax.invert_yaxis()
    ax.set_xlabel("IoU (%)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return reports.figure_png(fig)


def write_eval_reports(result: dict, out: str) -> dict[str, str]:
    """eval.json, eval.md and iou.png under ``out``; returns their URLs."""
    title = f"{result['arch']} on {result['split']} ({result['images']} images)"
    return reports.write_reports(out, "eval", result, markdown_report(result), iou_chart(result["metrics"], title),
                                 "iou.png")


def print_summary(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    m = result["metrics"]
    table = Table(title=f"{result['arch']} · {result['split']} · {result['images']} images", show_lines=False)
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    table.add_column("Acc %", justify="right")
    for name in labels.CLASSES:
        table.add_row(name, percent(m["iou"][name]), percent(m["acc"][name]))
    table.add_section()
    table.add_row("[bold]mIoU / mAcc", f"[bold]{percent(m['miou'])}", f"[bold]{percent(m['mean_acc'])}")
    console.print(table)
    console.print(f"pixel acc {percent(m['pixel_acc'])} %   fwIoU {percent(m['fwiou'])} %   "
                  f"({result['seconds']:.1f} s, {result['images_per_s']:.2f} images/s)")
