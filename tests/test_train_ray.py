"""``roadseg train`` end to end on the session's local Ray, with data and runs in the loopback S3.

One training run carries most properties (each costs a Ray Train start-up on 2 cores): learning,
exact val pixels, every train sample once per epoch, a worker killed by pid mid-run, the run dir's
contents; a second call resumes it. A small separate run checks DDP gradients against one process.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest
import torch

from roadseg_dist import settings, storage
from roadseg_dist.train import driver, rundir as run
from roadseg_dist.settings import SettingsError
from roadseg_dist.train.settings import TrainSettings

EPOCHS = 8
MIOU_BAR = 0.8


@pytest.fixture(scope="module")
def s3_shards(ray_local, s3_server, tmp_path_factory):
    """Coarse synthetic scenes (large classes only: a tiny model can learn them in a CPU test's budget),
    128 train + 8 val images at 64x96, sharded straight into the loopback S3 server."""
    from roadseg_dist.data import synth
    from roadseg_dist.shard import job as shard_job

    root = str(tmp_path_factory.mktemp("coarse") / "bdd100k")
    synth.generate(root, train=128, val=8, height=64, width=96, videos=0, seed=0, detail="coarse")
    url = "s3://" + s3_server.new_bucket("shards") + "/bdd100k"
    for split in ("train", "val"):
        shard_job.run(shard_job.ShardSettings(root=root, dest=url, split=split, shard_size=32))
    return url


def tiny_run(data, runs, name, **kw) -> TrainSettings:
    values = dict(data=data, storage=runs, name=name, model="unet", base_channels=16, epochs=EPOCHS,
                  batch_size=2, lr=3e-3, warmup_epochs=1, crop="64x96", scale_range="1.0,1.25",
                  jitter=0.1, num_workers=2, val_batch_size=8,
                  keep=2, max_failures=1, seed=0, record_keys=True, class_weights=True)
    values.update(kw)
    return settings.build(TrainSettings, None, **values)


def read_json(url):
    return json.loads(storage.read_text(url))


def kill_rank_after_epoch(run_dir: str, rank: int, epoch: int, stop: threading.Event, killed: dict):
    """Wait until ``rank`` finished ``epoch``, then SIGKILL that worker process by its pid."""
    marker = storage.join(run_dir, "debug", f"keys-epoch{epoch:04d}-rank{rank}.json")
    while not stop.is_set():
        if storage.exists(marker):
            pid = read_json(storage.join(run_dir, "debug", f"worker-rank{rank}.json"))["pid"]
            os.kill(pid, signal.SIGKILL)
            killed["pid"] = pid
            return
        time.sleep(0.2)


@pytest.mark.slow
def test_train_streams_from_s3_learns_and_survives_a_killed_worker(s3_shards, s3_bucket, tmp_path):
    from roadseg_dist.data import shards
    from roadseg_dist.models.checkpoint import load_model

    s = tiny_run(s3_shards, s3_bucket + "/runs", "synthetic", mlflow=f"file:{tmp_path / 'mlruns'}")
    run_dir = storage.join(s.storage, s.name)
    stop, killed, lines = threading.Event(), {}, []
    killer = threading.Thread(target=kill_rank_after_epoch, args=(run_dir, 1, 2, stop, killed), daemon=True)
    killer.start()
    try:
        summary = driver.run(s, echo=lines.append)
    finally:
        stop.set()
    assert killed, "the worker was never killed"

    records = run.read_metrics(run_dir)
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    # the kill really restarted the workers: a new rank-1 process went on from a checkpoint
    assert any(r.get("restored_from_epoch") for r in records)
    assert read_json(storage.join(run_dir, "debug", "worker-rank1.json"))["pid"] != killed["pid"]
    # it learns
    losses = [r["train_loss"] for r in records]
    assert losses[-1] < 0.6 * losses[0]
    # validation counted every labelled val pixel exactly once
    val_pixels = int(shards.read_index(s3_shards, "val")["labelled_pixels"].sum())
    assert val_pixels == shards.read_stats(s3_shards, "val")["labelled_pixels"]
    assert all(r["val_pixels"] == val_pixels for r in records)
    # each epoch every train sample once across the two workers, in a new order each epoch
    train_keys = set(shards.read_index(s3_shards, "train")["key"])
    orders = []
    for epoch in range(1, EPOCHS + 1):
        parts = [read_json(storage.join(run_dir, "debug", f"keys-epoch{epoch:04d}-rank{r}.json")) for r in (0, 1)]
        seen = parts[0] + parts[1]
        assert len(parts[0]) == len(parts[1]) == len(train_keys) // 2
        assert sorted(seen) == sorted(train_keys)
        orders.append(seen)
    assert len({tuple(o) for o in orders}) == EPOCHS
    # the run directory: last K=2 checkpoints plus the best, metrics, curves
    names = sorted(u.rsplit("/", 1)[-1] for u in run.checkpoint_dirs(run_dir))
    best_epoch = max(records, key=lambda r: r["val_miou"])["epoch"]
    assert set(names) == {run.checkpoint_name(EPOCHS - 1), run.checkpoint_name(EPOCHS), run.best_name(best_epoch)}
    assert storage.read_bytes(storage.join(run_dir, run.CURVES))[:4] == b"\x89PNG"
    model, meta = load_model(run_dir)
    assert meta["epoch"] == best_epoch and meta["input_size"] == [64, 96]
    assert "testing-secret-key" not in json.dumps(meta)
    assert summary["best_val_miou"] == pytest.approx(max(r["val_miou"] for r in records))
    assert any("best val mIoU" in line for line in lines) and sum(l.startswith("epoch") for l in lines) >= EPOCHS

    check_tracking(s, run_dir, summary, tmp_path)

    # without --resume the finished run is not overwritten
    with pytest.raises(SettingsError, match="--resume"):
        driver.run(tiny_run(s3_shards, s.storage, s.name, epochs=EPOCHS + 1))

    # --resume continues from the latest checkpoint without repeating finished epochs
    before = {r["epoch"]: r for r in records}
    driver.run(tiny_run(s3_shards, s.storage, s.name, epochs=EPOCHS + 1, resume=True, max_failures=0),
                 echo=lines.append)
    after = run.read_metrics(run_dir)
    assert [r["epoch"] for r in after] == list(range(1, EPOCHS + 2))
    assert all(after[e - 1] == before[e] for e in before)
    assert after[-1]["restored_from_epoch"] == EPOCHS

    # last, so that every property above is checked even while this one fails: the learning bar
    mious = [round(r["val_miou"], 3) for r in after]
    print("val mIoU per epoch:", mious, "loss:", [round(r["train_loss"], 3) for r in after], file=sys.stderr)
    assert max(mious) >= MIOU_BAR, f"val mIoU per epoch {mious} never reached {MIOU_BAR}"


def check_tracking(s, run_dir: str, summary: dict, tmp_path) -> None:
    """status.json, TensorBoard events of every epoch (uploaded to S3), MLflow, ``roadseg runs``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from roadseg_dist.train.tracking import mlflow_client

    assert run.read_status(run_dir)["status"] == "finished"
    events = tmp_path / "events"
    for url in storage.list_files(storage.join(run_dir, "tensorboard")):
        storage.download(url, str(events / url.rsplit("/", 1)[-1]))
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    epochs = set(range(1, EPOCHS + 1))
    for tag in ("train/loss", "train/lr", "train/images_per_s", "val/miou", "val/pixel_acc", "val_iou/road"):
        assert {e.step for e in acc.Scalars(tag)} == epochs, tag  # restarts may log an epoch twice
    assert {e.step for e in acc.Images("val_overlay/0")} == epochs
    client = mlflow_client(s.mlflow)
    run_id = read_json(storage.join(run_dir, "tracking.json"))["mlflow_run_id"]
    assert {m.step for m in client.get_metric_history(run_id, "val/miou")} == epochs
    assert client.get_run(run_id).data.params["name"] == s.name
    assert "testing-secret-key" not in json.dumps(client.get_run(run_id).data.params)
    [row] = run.list_runs(s.storage)
    assert (row["name"], row["status"], row["epochs"]) == (s.name, "finished", EPOCHS)
    assert row["best_val_miou"] == pytest.approx(summary["best_val_miou"])


def gradient_probe(config):
    """Per worker: the DDP gradient of one step on its slice of a fixed batch, beside (on rank 0) the
    gradient of a plain single-process model on the whole batch."""
    import ray.train
    import ray.train.torch

    from roadseg_dist.data.ingest import to_model_input
    from roadseg_dist.models.zoo import build_model
    from roadseg_dist.train import losses, loop

    b = config["per_worker_batch"]
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (b * world, 32, 48, 3), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 19, (b * world, 32, 48), generator=g, dtype=torch.uint8)
    labels[0, :20] = 255  # rank 0's slice has far fewer labelled pixels than rank 1's

    def fresh():
        torch.manual_seed(0)
        return build_model("unet", base_channels=4).eval()  # eval: BatchNorm uses running stats

    ddp = ray.train.torch.prepare_model(fresh())
    part = slice(rank * b, (rank + 1) * b)
    loss_sum, norm = losses.cross_entropy(ddp(to_model_input(images[part])), labels[part])
    loop.ddp_loss(loss_sum, norm).backward()
    grads = torch.cat([p.grad.flatten() for p in ddp.module.parameters()])

    metrics = {"world": world}
    if rank == 0:
        single = fresh()
        loss_sum, norm = losses.cross_entropy(single(to_model_input(images)), labels)
        (loss_sum / norm).backward()
        ref = torch.cat([p.grad.flatten() for p in single.parameters()])
        metrics.update(max_abs_diff=float((grads - ref).abs().max()), max_abs_grad=float(ref.abs().max()))
        with open(config["out"], "w") as f:  # v2's Result.metrics only carries checkpointed reports
            json.dump(metrics, f)
    ray.train.report(metrics)


@pytest.mark.slow
def test_two_workers_batch_b_give_the_gradient_of_one_worker_batch_2b(ray_local, tmp_path):
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    trainer = TorchTrainer(gradient_probe, train_loop_config={"per_worker_batch": 2, "out": str(tmp_path / "grads.json")},
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name="grad-probe", storage_path=str(tmp_path)))
    sigint = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit()
    finally:  # fit() on the main thread installs Ray's SIGINT handler and leaves it
        signal.signal(signal.SIGINT, sigint)
    metrics = json.loads((tmp_path / "grads.json").read_text())
    assert metrics["world"] == 2
    assert metrics["max_abs_grad"] > 1e-3  # a real gradient, not zeros
    assert metrics["max_abs_diff"] <= 1e-5
