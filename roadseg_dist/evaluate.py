"""``roadseg eval``: score a checkpoint on a sharded split, in parallel on Ray.

    plan_reads(index, workers)                       the split's samples as (shard, keys) read tasks
      -> Ray Data: flat_map(read_task_rows)          CPU tasks streaming (key, jpg, png) from storage
      -> map_batches(Scorer, actor pool)             decode, predict at the label's full resolution,
                                                     a confusion matrix per batch (+ masks for --save-preds)
      -> driver: sum the matrices                    metrics.ConfusionMatrix.compute (the BDD100K definitions)
      -> OUT/eval.json, eval.md, iou.png             numbers, a Markdown table, a per-class IoU chart

Prediction (``predict_masks``) and the reports are plain functions; only ``score_split`` touches Ray.
"""
from __future__ import annotations

import dataclasses
import io
import json
import time
from typing import Iterator, Sequence

import click
import numpy as np

from roadseg_dist import labels, storage
from roadseg_dist.metrics import ConfusionMatrix
from roadseg_dist.settings import field, parse_size


@dataclasses.dataclass
class EvalSettings:
    checkpoint: str = field(argument=True, help="checkpoint or training run directory (its best checkpoint)")
    data: str = field(help="shard folder (local, file:// or s3://) holding SPLIT-*.tar and SPLIT-index.parquet")
    split: str = field("val", help="which split of the shard folder to score")
    out: str | None = field(None, help="where eval.json, eval.md and iou.png go; default: CHECKPOINT/eval-SPLIT")
    save_preds: str | None = field(None, help="also write the predicted train-id masks as DIR/<key>.png")
    size: tuple | None = field(None, parse=parse_size,
                               help="run the model at HxW and upsample its logits to each label's "
                                    "resolution; default: at the label's full resolution")
    limit: int | None = field(None, help="score only the first N samples of the split (quick checks)")
    batch_size: int = field(4, help="images per model call")
    workers: int = field(2, help="model actors scoring in parallel")
    cpus_per_worker: float = field(1.0, help="CPUs reserved per model actor (also its torch threads)")
    gpu: bool = field(False, flag="--gpu/--cpu", help="one GPU per model actor, or CPUs (fp16 autocast on GPU, as infer)")
    channels_last: bool = field(False, help="run the model in NHWC memory format (faster on GPUs)")
    compile: bool = field(False, help="torch.compile the model in each actor (slow first batches)")
    address: str | None = field(None, help="Ray cluster address; default: RAY_ADDRESS or a local Ray")
    num_cpus: int | None = field(None, help="CPUs of the local Ray (default: all cores)")

    def validate(self) -> None:
        for name in ("batch_size", "workers"):
            if getattr(self, name) < 1:
                raise click.BadParameter(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise click.BadParameter(f"--limit must be at least 1, got {self.limit}")
        if self.cpus_per_worker <= 0:
            raise click.BadParameter(f"--cpus-per-worker must be positive, got {self.cpus_per_worker}")

    def output_dir(self) -> str:
        return self.out or storage.join(self.checkpoint, f"eval-{self.split}")


# --- prediction (plain torch) ----------------------------------------------------------------------

def predict_masks(model, images: Sequence[np.ndarray], meta: dict, *, size: tuple[int, int] | None = None,
                  out_sizes: Sequence[tuple[int, int]] | None = None, device="cpu",
                  channels_last: bool = False) -> list[np.ndarray]:
    """RGB uint8 images (H, W, 3) -> train-id masks (uint8), each at its ``out_sizes`` entry
    (default: the image's own size). Same-sized images go through the model together; on CUDA
    under fp16 autocast, as ``roadseg infer`` runs."""
    import torch
    import torch.nn.functional as F

    from roadseg_dist.models.checkpoint import input_normalization
    from roadseg_dist.models.speed import as_input, inference_autocast

    mean, std = input_normalization(meta)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    out_sizes = list(out_sizes or [img.shape[:2] for img in images])
    masks: list[np.ndarray | None] = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault((img.shape, tuple(out_sizes[i])), []).append(i)
    with torch.inference_mode():
        for (shape, out_size), idx in groups.items():
            x = torch.from_numpy(np.stack([images[i] for i in idx])).to(device)
            x = (x.permute(0, 3, 1, 2).float().div_(255.0) - mean_t) / std_t
            if size is not None and tuple(size) != tuple(shape[:2]):
                x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
            with inference_autocast(device):
                logits = model(as_input(x, channels_last))
            if tuple(logits.shape[-2:]) != tuple(out_size):
                logits = F.interpolate(logits.float(), size=tuple(out_size), mode="bilinear", align_corners=False)
            pred = logits.argmax(1).to(torch.uint8).cpu().numpy()
            for j, i in enumerate(idx):
                masks[i] = pred[j]
    return masks  # type: ignore[return-value]


# --- the Ray pipeline -------------------------------------------------------------------------------

def plan_reads(index, workers: int, limit: int | None = None) -> list[dict]:
    """The split's samples as read tasks ``{"shard", "keys"}`` in index order, a shard cut into
    pieces where needed so that every model actor gets work (about four tasks per actor).

    A piece re-reads its shard's tar only up to its last key, so the cut costs little."""
    rows = index[["shard", "key"]].itertuples(index=False)
    samples = [(r.shard, r.key) for r in rows][: limit or None]
    per_task = max(1, -(-len(samples) // (4 * workers)))
    shards: dict[str, list[str]] = {}
    for shard, key in samples:
        shards.setdefault(shard, []).append(key)
    tasks = []
    for shard, keys in shards.items():
        pieces = -(-len(keys) // per_task)
        step = -(-len(keys) // pieces)  # equal pieces rather than a short last one
        tasks += [{"shard": shard, "keys": keys[i:i + step]} for i in range(0, len(keys), step)]
    return tasks


def read_task_rows(task: dict, data: str) -> Iterator[dict]:
    """Ray Data ``flat_map`` body: one read task -> its samples as (key, jpg, png) bytes rows."""
    from roadseg_dist.data.ingest import read_samples

    for key, jpg, png in read_samples(storage.join(data, task["shard"]), list(task["keys"])):
        yield {"key": key, "jpg": jpg, "png": png}


class Scorer:
    """Model actor: loads the checkpoint once; each batch -> its confusion matrix (flattened)."""

    def __init__(self, checkpoint: str, size=None, save_preds: str | None = None, device: str = "cpu",
                 threads: int = 1, channels_last: bool = False, compile: bool = False):
        import torch

        from roadseg_dist.models.checkpoint import load_model
        from roadseg_dist.models.speed import optimize

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.device, self.channels_last = device, channels_last
        model, self.meta = load_model(checkpoint, device)
        self.model = optimize(model, channels_last=channels_last, compile=compile).eval()
        self.size = size
        self.save_preds = save_preds

    def __call__(self, batch: dict) -> dict:
        from roadseg_dist.data.shards import decode_sample
        from roadseg_dist.infer.render import encode_mask_png

        decoded = [decode_sample(bytes(j), bytes(p)) for j, p in zip(batch["jpg"], batch["png"])]
        images = [rgb for rgb, _ in decoded]
        targets = [label for _, label in decoded]
        preds = predict_masks(self.model, images, self.meta, size=self.size,
                              out_sizes=[t.shape for t in targets], device=self.device,
                              channels_last=self.channels_last)
        cm = ConfusionMatrix()
        for key, target, pred in zip(batch["key"], targets, preds):
            cm.update(target, pred)
            if self.save_preds:
                storage.write_bytes(storage.join(self.save_preds, f"{key}.png"), encode_mask_png(pred))
        return {"confusion": cm.mat.reshape(1, -1), "images": np.array([len(images)])}


def score_split(checkpoint: str, data: str, split: str = "val", *, size=None, limit: int | None = None,
                batch_size: int = 4, workers: int = 2, cpus_per_worker: float = 1.0, gpu: bool = False,
                save_preds: str | None = None, progress=None, channels_last: bool = False,
                compile: bool = False) -> tuple[ConfusionMatrix, int]:
    """Run the model over the split on Ray; the summed confusion matrix and the number of images.

    ``progress(done, total)`` is called on the driver as batches finish. Ray must be initialised.
    """
    import functools

    import ray.data

    from roadseg_dist.data.shards import read_index

    try:
        index = read_index(data, split)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    tasks = plan_reads(index, workers, limit)
    if not tasks:
        raise click.ClickException(f"the {split} split under {storage.redact(data)} has no samples")
    total = sum(len(t["keys"]) for t in tasks)
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    ds = ds.flat_map(functools.partial(read_task_rows, data=data), num_cpus=0.25)
    ds = ds.map_batches(
        Scorer, batch_size=batch_size, batch_format="numpy",
        # min_size=1: a pool that must start whole could take every CPU and starve the read tasks
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
        num_cpus=cpus_per_worker, num_gpus=1 if gpu else 0,
        fn_constructor_kwargs=dict(checkpoint=checkpoint, size=size, save_preds=save_preds,
                                   device="cuda" if gpu else "cpu", threads=max(1, int(cpus_per_worker)),
                                   channels_last=channels_last, compile=compile))
    cm = ConfusionMatrix()
    done = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for flat, n in zip(batch["confusion"], batch["images"]):
            cm.mat += np.asarray(flat, dtype=np.int64).reshape(cm.mat.shape)
            done += int(n)
        if progress:
            progress(done, total)
    return cm, done


# --- reports (plain) --------------------------------------------------------------------------------

def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}"


def markdown_report(result: dict) -> str:
    m = result["metrics"]
    lines = [f"# Evaluation of `{result['checkpoint']}`", "",
             f"{result['images']} images of split `{result['split']}` from `{result['data']}`, "
             f"{m['labelled_pixels']:,} labelled pixels. Values in %; the BDD100K evaluator's definitions "
             "(mIoU and mAcc over the classes present in the ground truth; — = class absent).", "",
             "| mIoU | mAcc | pixel acc | fwIoU |", "| ---: | ---: | ---: | ---: |",
             f"| {fmt(m['miou'])} | {fmt(m['mean_acc'])} | {fmt(m['pixel_acc'])} | {fmt(m['fwiou'])} |", "",
             "| class | IoU | Acc |", "| --- | ---: | ---: |"]
    for name in labels.CLASSES:
        lines.append(f"| {name} | {fmt(m['iou'][name])} | {fmt(m['acc'][name])} |")
    return "\n".join(lines) + "\n"


def iou_chart(metrics: dict, title: str) -> bytes:
    """A horizontal bar per class in its official colour, and the mIoU as a dashed line (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_reports(result: dict, out: str) -> dict[str, str]:
    """eval.json, eval.md and iou.png under ``out``; returns their URLs."""
    paths = {"json": storage.join(out, "eval.json"), "markdown": storage.join(out, "eval.md"),
             "chart": storage.join(out, "iou.png")}
    storage.write_text(paths["json"], json.dumps(result, indent=2) + "\n")
    storage.write_text(paths["markdown"], markdown_report(result))
    title = f"{result['arch']} on {result['split']} ({result['images']} images)"
    storage.write_bytes(paths["chart"], iou_chart(result["metrics"], title))
    return paths


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
        table.add_row(name, fmt(m["iou"][name]), fmt(m["acc"][name]))
    table.add_section()
    table.add_row("[bold]mIoU / mAcc", f"[bold]{fmt(m['miou'])}", f"[bold]{fmt(m['mean_acc'])}")
    console.print(table)
    console.print(f"pixel acc {fmt(m['pixel_acc'])} %   fwIoU {fmt(m['fwiou'])} %   "
                  f"({result['seconds']:.1f} s, {result['images_per_s']:.2f} images/s)")


# --- the job ----------------------------------------------------------------------------------------

def run_eval(s: EvalSettings, console=None) -> dict:
    """``roadseg eval``: score, write the reports, return the result dict (also in eval.json)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from roadseg_dist.cluster import init_ray
    from roadseg_dist.models.checkpoint import load_model

    console = console or Console()
    try:
        # fail fast, on the driver, on a bad checkpoint; the actors load the checkpoint resolved here
        _, meta = load_model(s.checkpoint, "cpu")
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"cannot load checkpoint {storage.redact(s.checkpoint)}: {exc}") from exc
    init_ray(s.address, s.num_cpus)
    start = time.time()
    with Progress(TextColumn("[bold]eval[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(s.split, total=None)
        cm, images = score_split(
            meta["checkpoint"], s.data, s.split, size=s.size, limit=s.limit, batch_size=s.batch_size,
            workers=s.workers, cpus_per_worker=s.cpus_per_worker, gpu=s.gpu, save_preds=s.save_preds,
            channels_last=s.channels_last, compile=s.compile, progress=lambda done, total: bar.update(task, completed=done, total=total))
    seconds = time.time() - start
    result = {
        "checkpoint": storage.redact(meta["checkpoint"]), "arch": meta.get("arch", "?"), "epoch": meta.get("epoch"),
        "data": storage.redact(s.data), "split": s.split, "images": images,
        "size": list(s.size) if s.size else None, "metrics": cm.compute(),
        "confusion": cm.mat.tolist(), "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 3) if seconds > 0 else 0.0,
        "predictions": storage.redact(s.save_preds) if s.save_preds else None,
    }
    result["reports"] = {k: storage.redact(v) for k, v in write_reports(result, s.output_dir()).items()}
    return result
