"""Experiment tracking on rank 0: TensorBoard event files in the run dir, and MLflow with ``--mlflow``.

    epoch_scalars(record)        one epoch's metrics.jsonl line -> flat {name: float}, the names every
                                 tracker uses (train/loss, train/lr, train/images_per_s, val/miou,
                                 val/pixel_acc, val_iou/<class>); ray.train.report gets them too
    overlay_panel(rgb, gt, pred) image | ground truth | prediction, for a few val images per epoch
    Tracker(run_dir, settings)   writes both, once per epoch; ``best(folder)`` logs the best
                                 checkpoint's meta.json; ``close(status)``

TensorBoard: ``RUN/tensorboard/events.out.tfevents.*``. A local run dir is written in place; on S3
the events go to a local folder first and each file is uploaded whole after every epoch (event files
only grow, so the latest upload is always a complete prefix). A worker restarted by Ray Train opens
a new event file; TensorBoard merges the files of one folder.

MLflow: ``--mlflow URI`` (``file:/path`` or ``http(s)://server``). Params are the scrubbed settings
(``checkpoint.scrub``: no secrets, redacted URLs), metrics the epoch scalars with ``step = epoch``,
artifacts curves.png, the overlays and ``best_checkpoint/meta.json``. The MLflow run id is kept in
``RUN/tracking.json`` so a resumed or restarted run continues the same MLflow run.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from roadseg_dist import storage

EVENTS_DIR = "tensorboard"
TRACKING_FILE = "tracking.json"


def epoch_scalars(record: dict) -> dict[str, float]:
    """The tracked scalars of one epoch (classes absent from the val ground truth are left out)."""
    out = {"train/loss": record["train_loss"], "train/lr": record["lr"],
           "train/images_per_s": record["images_per_s"], "train/seconds": record["seconds"],
           "val/miou": record["val_miou"], "val/pixel_acc": record["val_pixel_acc"]}
    for name, iou in (record.get("val_iou") or {}).items():
        if iou is not None:
            out[f"val_iou/{name}"] = iou
    return {k: float(v) for k, v in out.items()}


def overlay_panel(rgb: np.ndarray, truth: np.ndarray, pred: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, 3W, 3) uint8 RGB: the image, the ground truth blended over it, the prediction blended over it."""
    from roadseg_dist.render import blend_overlay

    bgr = np.ascontiguousarray(rgb[..., ::-1])
    views = [bgr, blend_overlay(bgr, truth.astype(np.uint8), alpha), blend_overlay(bgr, pred.astype(np.uint8), alpha)]
    return np.ascontiguousarray(np.concatenate(views, axis=1)[..., ::-1])


def mlflow_client(uri: str):
    """An ``MlflowClient`` for ``uri``, with a clear error when MLflow is not installed."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise RuntimeError("--mlflow needs MLflow: pip install 'roadseg_dist[tracking]' "
                           "(or mlflow-skinny)") from None
    if uri.startswith("file:"):
        # MLflow 3 keeps the file store in maintenance mode behind this switch; we use it on purpose
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


class Tracker:
    """Rank 0's TensorBoard writer and optional MLflow run for one training run."""

    def __init__(self, run_dir: str, settings, mlflow_uri: str | None = None, experiment: str = "roadseg"):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.events_url = storage.join(run_dir, EVENTS_DIR)
        self._tmp = tempfile.mkdtemp(prefix="roadseg-tb-") if storage.is_remote(run_dir) else None
        self.writer = SummaryWriter(log_dir=self._tmp or storage.local_path(self.events_url))
        self.mlflow, self.mlflow_run = None, None
        if mlflow_uri:
            self._start_mlflow(mlflow_uri, experiment, settings)

    def _start_mlflow(self, uri: str, experiment: str, settings) -> None:
        from mlflow.entities import Param

        from roadseg_dist.models.checkpoint import scrub

        self.mlflow = mlflow_client(uri)
        state_url = storage.join(self.run_dir, TRACKING_FILE)
        state = json.loads(storage.read_text(state_url)) if storage.exists(state_url) else {}
        if state.get("mlflow_run_id"):
            self.mlflow_run = state["mlflow_run_id"]
            self.mlflow.update_run(self.mlflow_run, status="RUNNING")
            return
        found = self.mlflow.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.mlflow.create_experiment(experiment)
        config = scrub(settings)
        self.mlflow_run = self.mlflow.create_run(exp_id, run_name=config.get("name")).info.run_id
        params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in config.items()]
        self.mlflow.log_batch(self.mlflow_run, params=params)
        storage.write_text(state_url, json.dumps({"mlflow_run_id": self.mlflow_run}) + "\n")

    def log_epoch(self, record: dict, panels: list[np.ndarray] = (), curves_png: bytes | None = None) -> None:
        """One epoch: scalars and overlay images to TensorBoard (uploaded) and MLflow."""
        epoch = int(record["epoch"])
        scalars = epoch_scalars(record)
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, epoch)
        for i, panel in enumerate(panels):
            self.writer.add_image(f"val_overlay/{i}", panel, epoch, dataformats="HWC")
        self.writer.flush()
        self._upload_events()
        if self.mlflow is not None:
            self._mlflow_epoch(epoch, scalars, panels, curves_png)

    def _mlflow_epoch(self, epoch: int, scalars: dict, panels, curves_png: bytes | None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.mlflow.log_batch(self.mlflow_run, metrics=[Metric(k, v, now, epoch) for k, v in scalars.items()])
        with tempfile.TemporaryDirectory(prefix="roadseg-mlflow-") as tmp:
            if curves_png:
                with open(os.path.join(tmp, "curves.png"), "wb") as f:
                    f.write(curves_png)
                self.mlflow.log_artifact(self.mlflow_run, os.path.join(tmp, "curves.png"))
            for i, panel in enumerate(panels):
                path = os.path.join(tmp, f"val_overlay_{i}.png")
                _write_png(path, panel)
                self.mlflow.log_artifact(self.mlflow_run, path, f"overlays/epoch{epoch:04d}")

    def best(self, checkpoint_folder: str, epoch: int, miou: float) -> None:
        """A new best checkpoint: its meta.json as an MLflow artifact, and tags naming it."""
        if self.mlflow is None:
            return
        self.mlflow.log_artifact(self.mlflow_run, os.path.join(checkpoint_folder, "meta.json"), "best_checkpoint")
        self.mlflow.set_tag(self.mlflow_run, "best_epoch", str(epoch))
        self.mlflow.set_tag(self.mlflow_run, "best_val_miou", f"{miou:.6f}")

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()
        self._upload_events()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        if self.mlflow is not None:
            self.mlflow.set_terminated(self.mlflow_run, status=status)

    def _upload_events(self) -> None:
        if self._tmp is None:
            return
        for name in sorted(os.listdir(self._tmp)):
            storage.upload(os.path.join(self._tmp, name), storage.join(self.events_url, name))


def _write_png(path: str, rgb: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1])):
        raise RuntimeError(f"could not write {path}")
