"""Experiment tracking without Ray: TensorBoard event files read back with tensorboard's own reader,
an MLflow ``file:`` store read back with MLflow's client, and ``roadseg runs`` on local disk and S3."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from roadseg_dist import storage
from roadseg_dist.labels import CLASSES
from roadseg_dist.train import rundir as run, tracking

EPOCHS = 3


def record(epoch: int) -> dict:
    iou = {name: (0.1 * epoch if i < 10 else None) for i, name in enumerate(CLASSES)}
    return {"epoch": epoch, "train_loss": 2.0 / epoch, "lr": 1e-3 / epoch, "images_per_s": 10.0 + epoch,
            "seconds": 5.0, "val_miou": 0.1 * epoch, "val_pixel_acc": 0.5 + 0.1 * epoch, "val_iou": iou}


def panels(n: int = 2) -> list[np.ndarray]:
    rgb = np.full((8, 12, 3), 100, np.uint8)
    truth = np.zeros((8, 12), np.uint8)
    pred = np.full((8, 12), 13, np.uint8)
    pred[0, 0] = 255
    return [tracking.overlay_panel(rgb, truth, pred) for _ in range(n)]


def read_events(folder: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(folder, size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def assert_every_epoch_logged(acc, epochs: int = EPOCHS) -> None:
    expected = set(tracking.epoch_scalars(record(1)))
    assert {"train/loss", "train/lr", "train/images_per_s", "val/miou", "val/pixel_acc",
            "val_iou/road"} <= expected
    assert expected <= set(acc.Tags()["scalars"])
    for tag in expected:
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, epochs + 1)), tag
    assert [e.value for e in acc.Scalars("val/miou")] == pytest.approx([0.1 * e for e in range(1, epochs + 1)])
    assert "val_iou/bus" not in acc.Tags()["scalars"]  # absent from the ground truth: not a zero
    assert [e.step for e in acc.Images("val_overlay/0")] == list(range(1, epochs + 1))


def test_epoch_scalars_and_overlay_panel():
    scalars = tracking.epoch_scalars(record(2))
    assert scalars["train/loss"] == 1.0 and scalars["val/miou"] == pytest.approx(0.2)
    assert len([k for k in scalars if k.startswith("val_iou/")]) == 10
    panel = panels(1)[0]
    assert panel.shape == (8, 36, 3) and panel.dtype == np.uint8
    assert (panel[:, :12] == 100).all()  # the image itself on the left
    assert not (panel[:, 12:24] == panel[:, 24:]).all()  # truth and prediction differ


def test_tensorboard_event_files_in_a_local_run_dir_hold_every_epoch(tmp_path):
    run_dir = str(tmp_path / "runs" / "r")
    tracker = tracking.Tracker(run_dir, {"name": "r"})
    for epoch in range(1, EPOCHS + 1):
        tracker.log_epoch(record(epoch), panels())
    tracker.close()
    assert_every_epoch_logged(read_events(os.path.join(run_dir, tracking.EVENTS_DIR)))


def test_tensorboard_event_files_reach_an_s3_run_dir_after_each_epoch(s3_bucket, tmp_path):
    run_dir = s3_bucket + "/runs/r"
    tracker = tracking.Tracker(run_dir, {"name": "r"})
    tracker.log_epoch(record(1), panels())
    events = storage.list_files(storage.join(run_dir, tracking.EVENTS_DIR))
    assert len(events) == 1 and "tfevents" in events[0]  # uploaded before the run ends
    for epoch in range(2, EPOCHS + 1):
        tracker.log_epoch(record(epoch), panels())
    tracker.close()
    local = tmp_path / "events"
    for url in storage.list_files(storage.join(run_dir, tracking.EVENTS_DIR)):
        storage.download(url, str(local / url.rsplit("/", 1)[-1]))
    assert_every_epoch_logged(read_events(str(local)))


def test_mlflow_file_store_holds_params_metrics_and_the_best_checkpoint_meta(tmp_path):
    from roadseg_dist.models.checkpoint import save_checkpoint
    from roadseg_dist.models.zoo import build_model
    from roadseg_dist.train.settings import TrainSettings

    uri = f"file:{tmp_path / 'mlruns'}"
    run_dir = str(tmp_path / "runs" / "r")
    s = TrainSettings(data="s3://key:hidden-secret@bucket/shards", storage=str(tmp_path / "runs"), name="r",
                      loss="ohem", epochs=EPOCHS)
    ckpt = str(tmp_path / "ckpt")
    save_checkpoint(ckpt, build_model("unet", base_channels=4), epoch=2, metrics={"val_miou": 0.2},
                    train_config=s)
    tracker = tracking.Tracker(run_dir, s, mlflow_uri=uri)
    for epoch in range(1, EPOCHS):
        tracker.log_epoch(record(epoch), panels(1), curves_png=b"\x89PNG fake")
    tracker.best(ckpt, 2, 0.2)
    run_id = tracker.mlflow_run
    tracker.close("FAILED")  # a worker died: the restarted rank 0 continues the same MLflow run
    again = tracking.Tracker(run_dir, s, mlflow_uri=uri)
    assert again.mlflow_run == run_id
    again.log_epoch(record(EPOCHS), panels(1))
    again.close()

    client = tracking.mlflow_client(uri)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "r"
    assert got.data.params["loss"] == "ohem" and got.data.params["epochs"] == str(EPOCHS)
    assert "hidden-secret" not in json.dumps(got.data.params)
    history = client.get_metric_history(run_id, "val/miou")
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))
    assert len(client.get_metric_history(run_id, "val_iou/road")) == EPOCHS
    assert got.data.tags["best_epoch"] == "2"
    meta_path = client.download_artifacts(run_id, "best_checkpoint/meta.json", str(tmp_path / "dl"))
    meta = json.loads(open(meta_path).read())
    assert meta["epoch"] == 2 and meta["metrics"]["val_miou"] == 0.2 and meta["arch"] == "unet"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"curves.png", "overlays", "best_checkpoint"} <= artifacts


def test_mlflow_missing_gives_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(RuntimeError, match="pip install 'roadseg_dist\\[tracking\\]'"):
        tracking.mlflow_client("file:/tmp/nowhere")


def make_runs(root: str) -> None:
    """Three hand-made runs under ``root``: finished with a best checkpoint, failed, running."""
    from roadseg_dist.models.checkpoint import save_checkpoint
    from roadseg_dist.models.zoo import build_model

    done = storage.join(root, "done")
    for epoch in (1, 2):
        run.append_metrics(done, {"epoch": epoch, "val_miou": 0.3 * epoch})
    save_checkpoint(storage.join(done, run.best_name(2)), build_model("unet", base_channels=4), epoch=2,
                    metrics={"val_miou": 0.6}, train_config={"epochs": 2})
    run.write_status(done, "finished", epoch=2, epochs=2, model="unet")
    broken = storage.join(root, "broken")
    run.write_status(broken, "failed", epoch=0, epochs=5, model="fcn", error="boom")
    going = storage.join(root, "going")
    run.append_metrics(going, {"epoch": 1, "val_miou": 0.1})
    run.write_status(going, "running", epoch=1, epochs=4, model="unet")
    storage.write_text(storage.join(root, "notes.txt"), "not a run\n")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_list_runs_and_the_runs_command(where, tmp_path, request):
    from click.testing import CliRunner

    from roadseg_dist.cli import main

    root = str(tmp_path / "runs") if where == "local" else request.getfixturevalue("s3_bucket") + "/runs"
    make_runs(root)
    rows = {r["name"]: r for r in run.list_runs(root)}
    assert sorted(rows) == ["broken", "done", "going"]
    assert (rows["done"]["status"], rows["done"]["epochs"], rows["done"]["planned_epochs"]) == ("finished", 2, 2)
    assert (rows["done"]["best_val_miou"], rows["done"]["best_epoch"], rows["done"]["model"]) == (0.6, 2, "unet")
    assert (rows["broken"]["status"], rows["broken"]["error"], rows["broken"]["best_val_miou"]) == ("failed", "boom", None)
    assert (rows["going"]["status"], rows["going"]["epochs"], rows["going"]["planned_epochs"]) == ("running", 1, 4)

    result = CliRunner().invoke(main, ["runs", root])
    assert result.exit_code == 0, result.output
    assert "done" in result.output and "finished" in result.output and "60.0 %" in result.output
    assert "failed" in result.output and "running" in result.output
    as_json = json.loads(CliRunner().invoke(main, ["runs", root, "--json"]).output)
    assert [r["name"] for r in as_json] == ["broken", "done", "going"]


def test_status_is_checked_and_old_runs_read_as_unknown(tmp_path):
    with pytest.raises(ValueError, match="status must be one of"):
        run.write_status(str(tmp_path), "paused")
    assert run.read_status(str(tmp_path / "old"))["status"] == "unknown"


def test_runs_show_what_is_resumable_a_gone_driver_and_a_bad_file(tmp_path):
    """Issue 26/11: a run killed in epoch 2 (metrics of epoch 2, checkpoint of epoch 1 only, heartbeat
    stopped) reads as interrupted and resumable from 1; an unreadable metrics.jsonl is that run's
    problem, named, and the other runs are still listed."""
    import datetime as dt

    from click.testing import CliRunner

    from roadseg_dist.cli import main
    from roadseg_dist.models.checkpoint import save_checkpoint
    from roadseg_dist.models.zoo import build_model

    root = str(tmp_path / "runs")
    killed = storage.join(root, "killed")
    for epoch in (1, 2):
        run.append_metrics(killed, {"epoch": epoch, "val_miou": 0.1 * epoch})
    save_checkpoint(storage.join(killed, run.checkpoint_name(1)), build_model("unet", base_channels=4), epoch=1,
                    metrics={"val_miou": 0.1}, train_config={"epochs": 3})
    stopped = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)).isoformat(timespec="seconds")
    storage.write_text(storage.join(killed, run.STATUS), json.dumps(
        {"status": "running", "updated": stopped, "heartbeat_s": run.HEARTBEAT_S, "epoch": 2, "epochs": 3}))
    live = storage.join(root, "live")
    run.Heartbeat(live, epoch=0, epochs=5, model="unet").beat(force=True)
    bad = storage.join(root, "bad")
    storage.write_text(storage.join(bad, run.METRICS), '{"epoch": 1}\n{"epoch": 2, "val_mi\n')
    run.write_status(bad, "running", epoch=1, epochs=4, model="unet")

    rows = {r["name"]: r for r in run.list_runs(root)}
    assert sorted(rows) == ["bad", "killed", "live"]
    assert (rows["killed"]["status"], rows["killed"]["epochs"], rows["killed"]["resumable_epoch"],
            rows["killed"]["planned_epochs"]) == ("interrupted", 2, 1, 3)
    assert (rows["live"]["status"], rows["live"]["problem"]) == ("running", None)
    assert rows["bad"]["problem"].startswith(f"{bad}/metrics.jsonl line 2 is not JSON")
    result = CliRunner().invoke(main, ["runs", root])
    assert result.exit_code == 0, result.output
    assert "interrupted" in result.output and "killed" in result.output and "live" in result.output
    assert "metrics.jsonl line 2 is not JSON" in result.output.replace("\n", "")
    assert rows["bad"]["epochs"] is None and rows["killed"]["problem"] is None
