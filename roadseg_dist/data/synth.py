"""Synthetic BDD100K-like datasets and driving clips: the files, from scenes made elsewhere.

    generate(root, train=8, val=4, ...)        ->  the BDD100K 10K layout under ``root``
    render_scene(rng, height, width)           ->  (rgb, label) of one random frame
    render_clip / write_video(url, rng, ...)   ->  one scene at successive times: a driving clip, and
                                                   its per-frame labels (ROOT/video_labels/<name>/NNNNNN.png)

A scene (``synth_scene``: layout, lighting, objects in metres) is drawn by ``synth_draw.render``
with the same polygons into the image and the label, so labels match what is drawn exactly. A
clip is one scene rendered as the camera drives forward while other vehicles and pedestrians move.
Objects are kept large enough to be learnt by a small model at 64x96; the same seed always gives
the same files.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os

import cv2
import numpy as np

from roadseg_dist import labels, settings, storage
from roadseg_dist.data.synth_draw import render
from roadseg_dist.data.synth_scene import DETAILS, LIGHTS, make_street
from roadseg_dist.settings import SettingsError


def render_scene(rng: np.random.Generator, height: int, width: int, detail: str = "full", light: str = "any"):
    """One random driving frame: (rgb uint8 HxWx3, label uint8 HxW of train ids)."""
    scene = make_street(rng, detail, light)
    return render(scene, height, width, 0.0, int(rng.integers(2 ** 31)))


# --- writing the BDD100K layout -----------------------------------------------------------------

@dataclasses.dataclass
class SynthSettings:
    root: str = settings.field(help="where to write the dataset (local path, file:// or s3://)", argument=True,
                               path=True)
    train: int = settings.field(8, help="training images")
    val: int = settings.field(4, help="validation images")
    height: int = settings.field(180, help="image height in pixels")
    width: int = settings.field(320, help="image width in pixels")
    videos: int = settings.field(1, help="driving clips under ROOT/videos")
    video_frames: int = settings.field(30, help="frames per clip")
    fps: float = settings.field(10.0, help="clip frame rate")
    seed: int = settings.field(0, help="random seed: the same seed gives the same files")
    detail: str = settings.field("full", choices=DETAILS,
                                 help="full: all 19 classes; coarse: large classes only, for quick learning checks")
    light: str = settings.field("any", choices=LIGHTS, help="the light of the train/val scenes (any: mostly day)")
    clip_light: str = settings.field("any", choices=LIGHTS,
                                     help="the light of the clips: another than --light makes clips a model "
                                          "trained on the scenes has not seen (their labels are written too)")

    def validate(self) -> None:
        if min(self.height, self.width) < 32:
            raise SettingsError(f"--height and --width must be at least 32, got {self.height}x{self.width}")
        settings.at_least(self, 0, "train", "val", "videos", "video_frames", "seed")
        settings.positive(self, "fps")


def sample_name(seed: int, split: str, index: int) -> str:
    """A BDD100K-style name (``0a1b2c3d-4e5f6071``), stable for (seed, split, index)."""
    rng = np.random.default_rng([seed, {"train": 1, "val": 2, "test": 3, "video": 4}[split], index])
    a, b = rng.integers(0, 2 ** 32, 2)
    return f"{int(a):08x}-{int(b):08x}"


def encode_jpg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def encode_png(image: np.ndarray) -> bytes:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _write_sample(root: str, seed: int, split: str, index: int, height: int, width: int,
                  detail: str = "full", light: str = "any") -> None:
    name = sample_name(seed, split, index)
    rng = np.random.default_rng([seed, 100 + {"train": 1, "val": 2}[split], index])
    rgb, label = render_scene(rng, height, width, detail, light)
    storage.write_bytes(storage.join(root, "images/10k", split, name + ".jpg"), encode_jpg(rgb))
    storage.write_bytes(storage.join(root, "labels/sem_seg/masks", split, name + ".png"), encode_png(label))
    storage.write_bytes(storage.join(root, "labels/sem_seg/colormaps", split, name + ".png"),
                        encode_png(labels.colorize(label)))


def render_clip(rng: np.random.Generator, height: int, width: int, frames: int, fps: float,
                detail: str = "full", light: str = "any"):
    """Frames of one driving clip: a scene rendered as the camera drives forward. Yields (rgb, label)."""
    scene = make_street(rng, detail, light)
    noise = int(rng.integers(2 ** 31))
    for i in range(frames):
        yield render(scene, height, width, i / fps, noise + i)


def write_video(url: str, rng: np.random.Generator, height: int, width: int, frames: int, fps: float,
                detail: str = "full", light: str = "any", labels_url: str | None = None) -> None:
    """A clip as an MP4 at ``url``; with ``labels_url``, frame N's label (train ids) as
    ``labels_url/NNNNNN.png``: the ground truth of frame N of a sequential decode."""
    with storage.atomic_output(url, suffix=".mp4") as tmp:
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
        if not writer.isOpened():
            raise RuntimeError("OpenCV cannot write mp4v video on this system")
        try:
            for i, (rgb, label) in enumerate(render_clip(rng, height, width, frames, fps, detail, light)):
                writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                if labels_url:
                    storage.write_bytes(storage.join(labels_url, f"{i:06d}.png"), encode_png(label))
        finally:
            writer.release()


def generate(root: str, train: int = 8, val: int = 4, height: int = 180, width: int = 320, videos: int = 1,
             video_frames: int = 30, fps: float = 10, seed: int = 0, detail: str = "full",
             progress: bool = False, light: str = "any", clip_light: str = "any") -> None:
    """Write a synthetic dataset in the BDD100K 10K layout under ``root`` (a path or URL).

    ``images/10k/{train,val}/<name>.jpg``, ``labels/sem_seg/masks/{train,val}/<name>.png`` (train ids),
    ``labels/sem_seg/colormaps/{train,val}/<name>.png``, ``videos/<name>.mp4`` and its frames' labels
    ``video_labels/<name>/NNNNNN.png``. Deterministic per seed. ``light``/``clip_light``: the scenes'
    and the clips' light (``synth_scene.LIGHTS``). ``progress`` shows a progress bar (the CLI's choice).
    """
    if height < 32 or width < 32:
        raise ValueError(f"height and width must be at least 32 pixels, got {height}x{width}")
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {', '.join(DETAILS)}, got {detail!r}")
    root = storage.normalize(root)
    jobs = [(split, i) for split, n in (("train", train), ("val", val)) for i in range(n)]
    workers = min(8, os.cpu_count() or 2) if storage.is_remote(root) else min(4, os.cpu_count() or 2)
    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(_write_sample, root, seed, split, i, height, width, detail, light)
                   for split, i in jobs]
        futures += [pool.submit(write_video, storage.join(root, "videos", sample_name(seed, "video", k) + ".mp4"),
                                np.random.default_rng([seed, 200, k]), height, width, video_frames, fps, detail,
                                clip_light, storage.join(root, "video_labels", sample_name(seed, "video", k)))
                    for k in range(videos)]
        if not progress:
            for fut in futures:
                fut.result()
            return
        from rich.console import Console
        from rich.progress import Progress

        with Progress(transient=True, console=Console(stderr=True)) as bar:
            task = bar.add_task("synth", total=len(futures))
            for fut in cf.as_completed(futures):
                fut.result()
                bar.advance(task)
