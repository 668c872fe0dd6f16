"""``roadseg compare``: models side by side on one split and one machine.

One row per model: mIoU and per-class IoU on the split (scored by ``evaluate.score_split`` on Ray),
parameters, and inference frames/s measured here, one model after the other, at the same input size
and batch size (``measure_fps``: ``models.predict.predict`` on random frames, i.e. the forward
pass, the argmax and the masks back on the host, after a warm-up). Written as compare.json, compare.md and compare.png (per-class IoU bars + mIoU vs speed).
"""
from __future__ import annotations

import os
import time

import numpy as np

from roadseg_dist import labels, reports, storage
from roadseg_dist.ops import progress
from roadseg_dist.eval.score import plan_scoring, progress_echo, score_split
from roadseg_dist.eval.settings import CompareSettings
from roadseg_dist.reports import percent


def measure_fps(model, size: tuple[int, int], *, batch: int = 1, seconds: float = 3.0, device="cpu",
                min_iters: int = 3, channels_last: bool = False) -> float:
    """Frames per second of ``predict`` (forward, argmax, masks to the host) at ``size`` (H, W), after
    two warm-up calls; on CUDA under fp16 autocast, as ``roadseg infer`` runs. Each call ends with the
    masks on the host, so no GPU work is left uncounted."""
    import torch

    from roadseg_dist.models.predict import INFERENCE_AMP, predict

    x = torch.randn(batch, 3, *size, device=device)
    model.eval()
    for _ in range(2):
        predict(model, x, amp=INFERENCE_AMP, channels_last=channels_last)
    iters, start = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - start < seconds:
        predict(model, x, amp=INFERENCE_AMP, channels_last=channels_last)
        iters += 1
    return batch * iters / (time.perf_counter() - start)


def common_size(data: str, split: str) -> tuple[int, int]:
    """The most common (height, width) of the split's images, from its index."""
    from roadseg_dist.data.shards import read_index

    index = read_index(data, split)
    df = index.to_pandas() if hasattr(index, "to_pandas") else index
    counts = df.groupby(["height", "width"]).size().sort_values(ascending=False)
    h, w = counts.index[0]
    return int(h), int(w)


def model_labels(urls) -> list[str]:
    """Short unique names for the rows: the last path parts that tell the models apart (a
    ``checkpoint_*`` folder keeps its run's name in front)."""
    parts = [storage.normalize(u).rstrip("/").split("/") for u in urls]

    def name(p: list[str], depth: int) -> str:
        return "/".join(p[-(depth + p[-1].startswith("checkpoint")):])

    for depth in range(1, max(len(p) for p in parts) + 1):
        names = [name(p, depth) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{i}:{n}" for i, n in enumerate(names)]


# --- reports (plain) --------------------------------------------------------------------------------

def markdown_table(result: dict) -> str:
    h, w = result["size"]
    lines = [f"# Model comparison on `{result['split']}` of `{result['data']}`", "",
             f"{result['images']} images per model; IoU in %; frames/s of forward + argmax at {h}x{w}, "
             f"batch {result['speed_batch']}, on {result['device']}.", "",
             "| model | arch | params | frames/s | mIoU | " + " | ".join(labels.CLASSES) + " |",
             "| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in labels.CLASSES) + " |"]
    for row in result["models"]:
        ious = " | ".join(percent(row["iou"][n]) for n in labels.CLASSES)
        lines.append(f"| {row['name']} | {row['arch']} | {row['params']:,} | {row['fps']:.2f} | "
                     f"{percent(row['miou'])} | {ious} |")
    return "\n".join(lines) + "\n"


def comparison_chart(result: dict) -> bytes:
    """Left: per-class IoU, one bar per model. Right: mIoU against frames/s, one point per model."""
    plt = reports.pyplot()
    rows = result["models"]
    names = list(labels.CLASSES)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 5), dpi=100, gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(rows)
    x = np.arange(len(names))
    for i, row in enumerate(rows):
        values = [100 * (row["iou"][n] or 0.0) for n in names]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=f"{row['name']} "
               f"(mIoU {100 * row['miou']:.1f})")
        ax2.scatter(row["fps"], 100 * row["miou"], s=60)
        ax2.annotate(row["name"], (row["fps"], 100 * row["miou"]), textcoords="offset points",
                     xytext=(4, 4), fontsize=8)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(f"per-class IoU on {result['split']} ({result['images']} images)", fontsize=10)
    h, w = result["size"]
    ax2.set_xlabel(f"frames/s at {h}x{w} ({result['device']})")
    ax2.set_ylabel("mIoU (%)")
    ax2.set_xlim(left=0)
    ax2.set_ylim(0, 100)
    ax2.grid(alpha=0.3)
    ax2.set_title("accuracy vs speed", fontsize=10)
    fig.tight_layout()
    return reports.figure_png(fig)


def print_table(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    h, w = result["size"]
    table = Table(title=f"{result['split']} · {result['images']} images · speed at {h}x{w} on {result['device']}")
    for col, justify in (("model", "left"), ("arch", "left"), ("params", "right"), ("frames/s", "right"),
                         ("mIoU %", "right")):
        table.add_column(col, justify=justify)
    # per-class columns only for classes that some model was scored on, to keep the table readable
    shown = [n for n in labels.CLASSES if any(r["iou"][n] is not None for r in result["models"])]
    for n in shown:
        table.add_column(n[:8], justify="right")
    for row in result["models"]:
        table.add_row(row["name"], row["arch"], f"{row['params'] / 1e6:.2f}M", f"{row['fps']:.2f}",
                      f"[bold]{percent(row['miou'])}", *[percent(row["iou"][n]) for n in shown])
    console.print(table)


# --- the job ----------------------------------------------------------------------------------------

def run(s: CompareSettings, console=None) -> dict:
    from roadseg_dist import settings
    from roadseg_dist.models.checkpoint import CheckpointError, load_model
    from roadseg_dist.models.predict import optimize
    from roadseg_dist.models.zoo import count_parameters

    s = settings.absolute_paths(s)
    device = "cuda" if s.gpu else "cpu"
    size = tuple(s.size) if s.size else common_size(s.data, s.split)
    plan = plan_scoring(s.workers, s.cpus_per_worker, s.gpu, s.address, s.num_cpus, job="compare")
    rows, images = [], 0
    names = model_labels(s.models)
    for name, url in zip(names, s.models):
        try:
            model, meta = load_model(url, device)
        except (FileNotFoundError, ValueError) as exc:
            raise CheckpointError(f"cannot load {storage.redact(url)}: {exc}") from exc
        with progress.Progress(f"compare {name}", None, "images", echo=progress_echo(console),
                               terminal=console.is_terminal if console else None) as bar:
            cm, images = score_split(
                meta["checkpoint"], s.data, s.split, limit=s.limit, batch_size=s.batch_size, workers=s.workers,
                cpus_per_worker=plan.cpus_per_worker, gpu=s.gpu, stall_timeout=s.stall_timeout,
                channels_last=s.channels_last, compile=s.compile,
                progress=lambda done, total: bar.update(done, total=total))
            bar.update(note=f"timing at {size[0]}x{size[1]}")
            fps = measure_fps(optimize(model, channels_last=s.channels_last, compile=s.compile), size,
                              batch=s.speed_batch, seconds=s.speed_seconds, device=device,
                              channels_last=s.channels_last)
            bar.update(note=f"{fps:.2f} frames/s")
        m = cm.compute()
        rows.append({"name": name, "checkpoint": storage.redact(meta["checkpoint"]), "arch": meta.get("arch", "?"),
                     "epoch": meta.get("epoch"), "params": int(count_parameters(model)), "fps": round(fps, 3),
                     "miou": m["miou"], "mean_acc": m["mean_acc"], "pixel_acc": m["pixel_acc"],
                     "fwiou": m["fwiou"], "iou": m["iou"]})
        del model
    result = {"data": storage.redact(s.data), "split": s.split, "images": images, "size": list(size),
              "speed_batch": s.speed_batch, "device": _device_name(device), "models": rows}
    paths = reports.write_reports(s.out, "compare", result, markdown_table(result), comparison_chart(result),
                                  "compare.png")
    result["reports"] = {k: storage.redact(v) for k, v in paths.items()}
    return result


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"CPU, {torch.get_num_threads()} threads ({os.cpu_count()} cores)"
