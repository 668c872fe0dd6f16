"""``roadseg train`` when the run directory goes wrong, on the session's local Ray with real files.

One run, two fits (each a Ray Train start-up). After a first fit of two epochs, the latest checkpoint
is corrupted and an older one, which Ray's snapshot lists, is removed by hand (issue 26, case 5); the
run's storage, a small tmpfs, is then shrunk so that epoch 3's checkpoint cannot be written (case 4:
a real ``ENOSPC`` from the kernel, not an rlimit; mounting it needs root, which this suite has). The
resumed fit must start from the newest checkpoint that loads and, when the disk fills, fail naming the
folder, leave no half-written checkpoint under its final name and say so in status.json.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess

import pytest
import torch

from roadseg_dist import settings, storage
from roadseg_dist.errors import JobError
from roadseg_dist.train import checkpoints, driver, rundir as run
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
    """A tmpfs of ``size`` bytes at ``path``; yields a function that resizes it."""
    path.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "roadseg-test", str(path)],
                           capture_output=True, text=True)
    assert mount.returncode == 0, f"this test mounts a tmpfs and needs root: {mount.stderr}"

    def resize(new_size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True)
    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def model_bytes() -> int:
    from roadseg_dist.models.zoo import build_model

    buf = io.BytesIO()
    torch.save(build_model("unet", base_channels=BASE_CHANNELS).state_dict(), buf)
    return len(buf.getvalue())


def used_bytes(path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.slow
def test_resume_skips_what_does_not_load_and_a_full_disk_leaves_no_half_checkpoint(synthetic_data, tmp_path):
    disk = tmp_path / "disk"
    with small_disk(disk, 64 * 2**20) as resize:
        s = tiny(synthetic_data.shards, str(disk), keep=3)
        run_dir = storage.join(s.storage, s.name)
        driver.run(s, echo=lambda line: None)
        folder = disk / "r"
        latest = folder / run.checkpoint_name(2) / "train_state.pt"
        latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])      # corrupt
        storage.remove(storage.join(run_dir, run.checkpoint_name(1)), recursive=True)  # removed by hand
        best_epoch = run.best_checkpoint(run_dir)[1]["epoch"]                      # its copy is intact
        # room for epoch 3's metrics, curves and events (< 600 KB) and one model.pt (the first file of a
        # checkpoint), not for the train_state.pt (AdamW: twice the weights) that follows it
        resize(used_bytes(disk) + 600_000 + model_bytes())
        lines: list[str] = []
        with pytest.raises(JobError) as failed:
            driver.run(tiny(synthetic_data.shards, s.storage, epochs=3, keep=3, resume=True), echo=lines.append)
        check_after(run_dir, folder, best_epoch, lines, str(failed.value))


def check_after(run_dir: str, folder, best_epoch: int, lines: list[str], message: str) -> None:
    # case 5: resumed from the newest checkpoint that loads, saying what it skipped and why
    assert any("skipping" in line and run.checkpoint_name(2) in line and "corrupt" in line for line in lines)
    assert any(f"from {run_dir}/{run.best_name(best_epoch)}" in line for line in lines), lines
    restored = [r for r in run.read_metrics(run_dir) if r.get("restored_from_epoch")]
    assert (restored[-1]["epoch"], restored[-1]["restored_from_epoch"]) == (best_epoch + 1, best_epoch)
    # case 4: the error and status.json name the checkpoint folder and say what to do
    assert "disk is full" in message and "--resume" in message
    named = re.search(r"checkpoint (\S*/(checkpoint_[^/\s:]+)):", message)
    assert named and named.group(1).startswith(run_dir), message
    status = run.read_status(run_dir)
    assert status["status"] == "failed" and named.group(2) in status["error"]
    # ... and no checkpoint is half written under its final name: the failed one is gone, the others load
    assert not (folder / named.group(2)).exists()
    intact = [u for u in run.checkpoint_dirs(run_dir) if not u.endswith(run.checkpoint_name(2))]
    assert intact and all(checkpoints.check_intact(u) for u in intact)
