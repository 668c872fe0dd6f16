"""``roadseg demo`` (what ``make demo`` runs): the whole story on one machine, no GPU, no cloud account.

    1 synth   synthetic BDD100K-like scenes, labels and driving clips     data.synth.generate
    2 shard   train and val splits -> WebDataset shards                   shard.job.run
    3 train   a U-Net on a local Ray with two DDP workers                  train.driver.run
    4 eval    the best checkpoint on the val shards                        eval.evaluate.run
    5 infer   the driving clips -> masks, overlays, overlay videos         infer.pipeline.run

Each stage calls the function its ``roadseg`` command calls, with settings built the same way.
Shards and the training run go to the work folder, or with ``--s3`` to a loopback S3-compatible
server (moto) that the demo starts and stops; what a person looks at (eval reports, masks,
overlays, videos) always lands in the work folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from typing import Iterator

from roadseg_dist import settings as settings_mod, storage
from roadseg_dist.errors import JobError
from roadseg_dist.settings import SettingsError, field, parse_size
from roadseg_dist.train.settings import LOSSES

SUBFOLDERS = ("bdd100k", "shards", "runs", "eval", "segmented")  # what a demo run owns in its workdir


@dataclasses.dataclass
class DemoSettings:
    workdir: str = field("demo-output", help="where everything goes (a local folder)", path=True)
    s3: bool = field(False, help="keep shards and the training run on a loopback S3 server (moto) "
                                 "that the demo starts and stops, instead of local disk")
    train_images: int = field(200, help="synthetic training images")
    val_images: int = field(24, help="synthetic validation images")
    height: int = field(180, help="height of the synthetic images and clips")
    width: int = field(320, help="width of the synthetic images and clips")
    videos: int = field(2, help="synthetic driving clips to segment")
    video_frames: int = field(80, help="frames per clip")
    fps: float = field(10.0, help="frame rate of the clips")
    model: str = field("unet", help="zoo model to train")
    # Chosen by a sweep over loss, width, epochs, batch and learning rate at today's compute (about
    # bc16 x 8 epochs): more optimiser steps on a narrower U-Net, class-weighted OHEM, learn the thin
    # classes (pole, lights, signs, persons, riders, bicycles) that bc16 x 8 epochs x plain CE left at 0.
    base_channels: int = field(8, help="U-Net width (smaller is faster)")
    epochs: int = field(16, help="training epochs")
    batch_size: int = field(2, help="images per worker per step (small: more steps in the same time)")
    crop: tuple = field((144, 256), parse=parse_size, help="training crop HxW")
    lr: float = field(4e-3, help="peak learning rate")
    loss: str = field("ohem", choices=LOSSES, help="training loss (ohem: the hard pixels, thin classes)")
    ohem_min_kept: int = field(1000, help="ohem: hardest pixels kept per image at least")
    class_weights: bool = field(True, help="weight the loss by the train split's class weights")
    train_workers: int = field(2, help="DDP training workers on the local Ray")
    num_cpus: int | None = field(None, help="CPUs of the local Ray (default: all cores)")
    seed: int = field(0, help="seed of the data and the training")

    def validate(self) -> None:
        for name in ("train_images", "val_images", "videos", "video_frames", "epochs", "batch_size",
                     "train_workers", "base_channels"):
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        settings_mod.at_least(self, 1, "num_cpus")
        settings_mod.at_least(self, 0, "seed", "ohem_min_kept")
        settings_mod.at_least(self, 32, "height", "width")  # what synth draws
        settings_mod.positive(self, "fps", "lr")
        from roadseg_dist.models.zoo import list_models

        if self.model not in list_models():
            raise SettingsError(f"--model {self.model!r} is not in the zoo; choose one of {', '.join(list_models())}")
        if self.train_images < self.train_workers:
            raise SettingsError("--train-images must be at least --train-workers")
        if storage.is_remote(self.workdir):
            raise SettingsError(f"--workdir must be a local folder (got {storage.redact(self.workdir)}); "
                                "use --s3 to exercise object storage")


# --- the loopback S3 server -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_s3(bucket: str = "roadseg-demo", timeout: float = 30.0) -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1, point the AWS variables at it, yield ``s3://bucket``.

    Call it before Ray starts, so that Ray's workers inherit the endpoint. Everything stored there
    is gone when the block ends (moto keeps it in memory).
    """
    try:
        import moto.server  # noqa: F401 - only to give a clear error
    except ImportError:
        raise JobError("--s3 needs moto's server: pip install 'moto[server]' "
                       "(make demo installs it)") from None
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in names}
    try:
        deadline = time.time() + timeout
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.time() > deadline:
                raise JobError(f"the loopback S3 server did not start on port {port}")
            time.sleep(0.1)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="demo",
                          AWS_SECRET_ACCESS_KEY="demo-secret", AWS_DEFAULT_REGION="us-east-1")
        fs, _ = storage.filesystem(f"s3://{bucket}")
        fs.mkdir(bucket)
        yield f"s3://{bucket}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- stages -------------------------------------------------------------------------------------------

class StageDisplay:
    """A numbered rule per stage and a tick with its time; the stage's own progress shows between."""

    def __init__(self, console, titles: list[str]):
        self.console, self.titles, self.times = console, titles, {}

    def plan(self) -> None:
        self.console.print("[bold]roadseg demo[/]: " + " → ".join(self.titles))

    @contextlib.contextmanager
    def stage(self, title: str):
        n = self.titles.index(title) + 1
        self.console.rule(f"[bold cyan]{n}/{len(self.titles)} {title}", align="left")
        t0 = time.time()
        yield
        self.times[title] = time.time() - t0
        self.console.print(f"[green]✓[/] {title} in {self.times[title]:.0f}s")


def demo_paths(s: DemoSettings, remote_root: str | None) -> dict[str, str]:
    work = storage.normalize(s.workdir)
    store = remote_root or work
    return {"data": storage.join(work, "bdd100k"), "shards": storage.join(store, "shards"),
            "runs": storage.join(store, "runs"), "run": storage.join(store, "runs", "demo"),
            "eval": storage.join(work, "eval"), "segmented": storage.join(work, "segmented")}


def clear_workdir(workdir: str) -> None:
    """A re-run starts clean: only the demo's own subfolders are removed."""
    for name in SUBFOLDERS:
        storage.remove(storage.join(workdir, name), recursive=True)


def copy_tree(src: str, dest: str) -> None:
    """Every file below ``src`` to the same place below local ``dest``."""
    src = storage.normalize(src)
    for url in storage.list_files(src):
        storage.download(url, os.path.join(storage.local_path(dest), url[len(src) + 1:]))


def run_demo(s: DemoSettings, console=None) -> dict:
    """Run every stage, telling how they go on ``console`` (default: stderr); returns the summary (also
    written to WORKDIR/summary.json), which ``print_summary`` shows."""
    import ray
    from rich.console import Console

    from roadseg_dist.ops.cluster import init_ray, shutdown_ray

    console = console or Console(stderr=True)
    titles = ["synthetic data", "shards", "training", "evaluation", "video segmentation"]
    display = StageDisplay(console, titles)
    display.plan()
    work = storage.normalize(s.workdir)
    clear_workdir(work)
    t0 = time.time()
    with (loopback_s3() if s.s3 else contextlib.nullcontext(None)) as bucket:
        paths = demo_paths(s, bucket)
        started_ray = not ray.is_initialized()  # a test's Ray is left running
        init_ray("local", s.num_cpus)
        try:
            summary = run_stages(s, paths, display, console)
        finally:
            if started_ray:
                shutdown_ray()
    summary.update(seconds=round(time.time() - t0, 1), stage_seconds={k: round(v, 1) for k, v in display.times.items()},
                   storage="loopback S3 (moto), gone after the demo" if s.s3 else "local disk")
    storage.write_text(storage.join(work, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary  # `roadseg demo` prints it (print_summary) to stdout, the stages went to stderr


def run_stages(s: DemoSettings, paths: dict[str, str], display: StageDisplay, console) -> dict:
    from roadseg_dist.data import synth
    from roadseg_dist.shard import job as shard_job
    from roadseg_dist.eval import evaluate, report as eval_report
    from roadseg_dist.eval.settings import EvalSettings
    from roadseg_dist.infer import pipeline
    from roadseg_dist.infer.settings import InferSettings
    from roadseg_dist.train import driver
    from roadseg_dist.train.settings import TrainSettings

    build = settings_mod.build
    with display.stage("synthetic data"):
        synth.generate(paths["data"], train=s.train_images, val=s.val_images, height=s.height, width=s.width,
                       videos=s.videos, video_frames=s.video_frames, fps=s.fps, seed=s.seed)
        console.print(f"{s.train_images} train + {s.val_images} val images and {s.videos} clips of "
                      f"{s.video_frames} frames at {s.width}x{s.height} in {paths['data']}")

    with display.stage("shards"):
        for split in ("train", "val"):
            shard_job.run(build(shard_job.ShardSettings, root=paths["data"], dest=paths["shards"], split=split,
                                   shard_size=64))
        console.print(f"shards in {storage.redact(paths['shards'])}")

    with display.stage("training"):
        train = driver.run(build(
            TrainSettings, data=paths["shards"], storage=paths["runs"], name="demo", model=s.model,
            base_channels=s.base_channels, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
            loss=s.loss, ohem_min_kept=s.ohem_min_kept, class_weights=s.class_weights, warmup_epochs=0.5,
            crop=s.crop, scale_range=(0.75, 1.25), num_workers=s.train_workers, val_batch_size=8, keep=1,
            seed=s.seed),
            echo=console.print)

    with display.stage("evaluation"):
        ev = evaluate.run(build(EvalSettings, checkpoint=paths["run"], data=paths["shards"],
                                split="val", out=paths["eval"], workers=1, batch_size=8), console=console)
        eval_report.print_summary(ev, console)

    with display.stage("video segmentation"):
        report = pipeline.run(build(InferSettings, checkpoint=paths["run"],
                                    input=storage.join(paths["data"], "videos"), output=paths["segmented"],
                                    size=(s.height, s.width), batch_size=8, concurrency=1))
        if report.get("videos_failed"):
            raise JobError(f"segmentation failed for {report['videos_failed']} clip(s): "
                           f"{report['failures']}")

    page = results_page(paths["segmented"], paths["eval"].rsplit("/", 1)[0])
    if storage.is_remote(paths["run"]):  # the S3 server goes away with the demo: keep the run
        local_run = storage.join(paths["eval"].rsplit("/", 1)[0], "runs", "demo")
        copy_tree(paths["run"], local_run)
        train = {k: (v.replace(paths["run"], local_run) if isinstance(v, str) else v) for k, v in train.items()}
        console.print(f"copied the run from {paths['run']} to {local_run}")
    return stage_summary(paths, train, ev, report, page)


def stage_summary(paths: dict[str, str], train: dict, ev: dict, report: dict, page: str) -> dict:
    """What the stages left and where: the demo's summary.json."""
    videos = storage.list_files(paths["segmented"], suffixes=(".mp4",))
    clips = sorted({v.rsplit("/", 1)[0] for v in videos})
    return {
        "miou": ev["metrics"]["miou"], "pixel_acc": ev["metrics"]["pixel_acc"],
        "best_val_miou": train.get("best_val_miou"), "epochs": train.get("epochs"),
        "checkpoint": storage.redact(train.get("best_checkpoint") or paths["run"]),
        "curves": storage.redact(train["curves"]) if train.get("curves") else None,
        "eval_report": ev["reports"]["markdown"], "eval_chart": ev["reports"]["chart"],
        "frames_segmented": report.get("frames_this_run"), "frames_per_second": report.get("frames_per_second"),
        "masks": [storage.join(c, "mask") for c in clips], "overlays": [storage.join(c, "overlay") for c in clips],
        "overlay_videos": videos, "infer_report": storage.join(paths["segmented"], "report.json"),
        "results_page": page,
    }


def results_page(segmented: str, workdir: str) -> str:
    """`roadseg view` of the segmented clips; from the loopback S3 server, which goes away with the
    demo, over a local copy of them."""
    from roadseg_dist.results.page import write_site

    if storage.is_remote(segmented):
        copy_tree(segmented, storage.join(workdir, "segmented"))
        segmented = storage.join(workdir, "segmented")
    return write_site(segmented)


def print_summary(summary: dict, console) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_row("[bold]val mIoU", f"[bold green]{100 * summary['miou']:.1f} %[/]   pixel accuracy "
                  f"{100 * summary['pixel_acc']:.1f} %")
    table.add_row("time", f"{summary['seconds']:.0f} s (" + ", ".join(
        f"{k} {v:.0f}s" for k, v in summary["stage_seconds"].items()) + ")")
    table.add_row("storage", summary["storage"])
    table.add_row("checkpoint", summary["checkpoint"])
    if summary.get("curves"):
        table.add_row("training curves", summary["curves"])
    table.add_row("eval report", f"{summary['eval_report']}  {summary['eval_chart']}")
    table.add_row("masks", "\n".join(summary["masks"]))
    table.add_row("overlays", "\n".join(summary["overlays"]))
    table.add_row("overlay videos", "\n".join(summary["overlay_videos"]))
    console.rule("[bold]demo finished")
    console.print(table)
    console.print(f"[bold]results page:[/] {summary['results_page']}")
