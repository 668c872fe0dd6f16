"""``roadseg train`` when the run directory goes wrong, on the session's local Ray with real files.

Issue 26, case 4: the disk fills while a checkpoint is saved. The run's storage is a small tmpfs
(mounted here, so the test runs as root: it is a real ``ENOSPC`` from the kernel, not an rlimit), sized
to hold epoch 1's files and best copy but not Ray's copy of its checkpoint.
Case 5: the latest checkpoint is corrupt and an older one was removed by hand; resume goes on from the
newest checkpoint that loads.
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess

import pytest
import torch

from roadseg_dist import settings, storage
from roadseg_dist.errors import JobError
from roadseg_dist.train import checkpoints, driver, run
from roadseg_dist.train.settings import TrainSettings

BASE_CHANNELS = 8


def tiny(data: str, runs: str, **kw) -> TrainSettings:
    values = dict(data=data, storage=runs, name="r", model="unet", base_channels=BASE_CHANNELS, epochs=2,
                  batch_size=4, crop="64x96", scale_range="1.0,1.0", num_workers=2, val_batch_size=8, keep=1,
                  overlays=0, seed=0)
    values.update(kw)
    return settings.build(TrainSettings, None, **values)


@contextlib.contextmanager
def small_disk(path, size: int):
    """A tmpfs of ``size`` bytes at ``path``; yields a function that grows it."""
    path.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "roadseg-test", str(path)],
                           capture_output=True, text=True)
    assert mount.returncode == 0, f"this test mounts a tmpfs and needs root: {mount.stderr}"

    def grow(new_size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True)
    try:
        yield grow
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def model_bytes() -> int:
    from roadseg_dist.models.zoo import build_model

    buf = io.BytesIO()
    torch.save(build_model("unet", base_channels=BASE_CHANNELS).state_dict(), buf)
    return len(buf.getvalue())


@pytest.mark.slow
def test_full_disk_leaves_no_half_checkpoint_and_resume_goes_on(synthetic_data, tmp_path):
    weights = model_bytes()                  # model.pt; train_state.pt (AdamW) is about twice that
    # epoch 1 writes metrics, curves and events (< 300 KB), the best copy (model + state + meta),
    # then Ray's copy: room for its model.pt and half of its train_state.pt
    size = 300_000 + 2 * (3 * weights) - weights
    disk = tmp_path / "disk"
    with small_disk(disk, size) as grow:
        s = tiny(synthetic_data.shards, str(disk))
        run_dir = storage.join(s.storage, s.name)
        with pytest.raises(JobError) as failed:
            driver.train(s, echo=lambda line: None)
        message = str(failed.value)
        assert "checkpoint_epoch0001" in message and "disk is full" in message and "--resume" in message
        status = run.read_status(run_dir)
        assert status["status"] == "failed" and "checkpoint_epoch0001" in status["error"]
        # no folder under its final name is half written: every one holding meta.json loads whole
        assert not (disk / "r" / "checkpoint_epoch0001").exists()
        assert [u.rsplit("/", 1)[-1] for u in run.checkpoint_dirs(run_dir)] == [run.best_name(1)]
        assert checkpoints.check_intact(storage.join(run_dir, run.best_name(1))) == 1

        grow(64 * 2**20)  # space freed: the run continues from the intact epoch-1 copy
        lines: list[str] = []
        driver.train(tiny(synthetic_data.shards, str(disk), epochs=3, resume=True), echo=lines.append)
        records = run.read_metrics(run_dir)
        assert [r["epoch"] for r in records] == [1, 2, 3]
        assert records[1]["restored_from_epoch"] == 1
        assert any(f"from {run_dir}/{run.best_name(1)}" in line for line in lines)
        assert run.read_status(run_dir)["status"] == "finished"


@pytest.mark.slow
def test_resume_skips_a_corrupt_latest_checkpoint_and_folders_removed_by_hand(synthetic_data, tmp_path):
    s = tiny(synthetic_data.shards, str(tmp_path / "runs"), epochs=3, keep=3)
    run_dir = storage.join(s.storage, s.name)
    driver.train(s, echo=lambda line: None)
    folder = tmp_path / "runs" / "r"
    state = (folder / run.checkpoint_name(3) / "train_state.pt").read_bytes()
    (folder / run.checkpoint_name(3) / "train_state.pt").write_bytes(state[: len(state) // 2])  # corrupt
    storage.remove(storage.join(run_dir, run.checkpoint_name(2)), recursive=True)  # removed by hand
    best_epoch = run.best_checkpoint(run_dir)[1]["epoch"]  # its copy is intact, like epoch 1
    lines: list[str] = []
    driver.train(tiny(synthetic_data.shards, s.storage, epochs=4, keep=3, resume=True), echo=lines.append)
    assert any("skipping" in line and run.checkpoint_name(3) in line and "corrupt" in line for line in lines)
    records = run.read_metrics(run_dir)
    assert [r["epoch"] for r in records] == list(range(1, 5))
    assert records[best_epoch]["restored_from_epoch"] == best_epoch  # the newest checkpoint that loads
    assert run.read_status(run_dir)["status"] == "finished"
