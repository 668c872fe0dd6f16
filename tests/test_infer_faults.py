"""`roadseg infer` under faults: a second writer, a crash between a commit's two writes, an S3 outage
mid-run, a full disk. Real parts: the CLI in its own process, the loopback S3 server behind a proxy
that goes down, a tmpfs that fills up."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from faulty_s3_proxy import FaultyProxy
from roadseg_dist import storage
from roadseg_dist.cli import main
from test_infer_archive import read_frames
from test_infer_frames import make_video
from test_infer_pipeline import SIZE, tiny_checkpoint

pytestmark = pytest.mark.slow


def clips(folder, n: int, frames: int = 3, **kw) -> dict[str, int]:
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        make_video(os.path.join(folder, f"clip{i:02d}.mp4"), frames, w=kw.get("w", 48), h=kw.get("h", 32),
                   bframes=0, noise=kw.get("noise", 0))
    return {f"clip{i:02d}": frames for i in range(n)}


def cli(*args, env=None, **popen):
    return subprocess.Popen([sys.executable, "-m", "roadseg_dist.cli", "infer", *args],
                            env={**os.environ, **(env or {})}, text=True, **popen)


def test_a_second_writer_is_refused_while_the_first_finishes(ray_local, tmp_path):
    import ray

    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    names = clips(tmp_path / "in", 6, frames=12, w=96, h=64)
    out = tmp_path / "out"
    args = [ckpt, str(tmp_path / "in"), str(out), "--size", SIZE, "--no-view"]
    first = cli(*args, "--address", ray.get_runtime_context().gcs_address, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / ".roadseg" / "lease.json").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
    second = CliRunner().invoke(main, ["infer", *args], catch_exceptions=False)
    stdout, stderr = first.communicate(timeout=600)
    assert second.exit_code == 1 and "is being written by another `roadseg infer`" in second.output, second.output
    assert f"pid {first.pid}" in second.output
    assert first.returncode == 0, stderr[-3000:]
    table = read_frames(str(out))
    assert len(table) == sum(names.values()) and not table.duplicated(["video", "frame"]).any()
    assert not (out / ".roadseg" / "lease.json").exists()  # released at the end


def test_a_crash_between_a_commit_and_its_stats_part_redoes_those_sources(ray_local, tmp_path):
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    names = clips(tmp_path / "in", 4)
    out = tmp_path / "out"
    args = ["infer", ckpt, str(tmp_path / "in"), str(out), "--size", SIZE, "--no-view"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROADSEG_COMMIT_SECONDS", "0")  # a batch per source
        assert CliRunner().invoke(main, args, catch_exceptions=False).exit_code == 0
    parts = sorted((out / "frames").iterdir())
    assert len(parts) == 4
    parts[1].unlink()  # as if the run died after the batch's manifest, before its part
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert (report["videos_skipped"], report["videos_done_this_run"]) == (3, 1)
    table = read_frames(str(out))
    assert sorted(zip(table.video, table.frame)) == sorted((n, i) for n, f in names.items() for i in range(f))


def test_an_s3_outage_mid_run_pauses_the_units_and_the_run_finishes(s3_server, s3_bucket, tmp_path):
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    names = clips(tmp_path / "in", 8, frames=10, w=96, h=64, noise=30)
    for name in names:
        storage.upload(str(tmp_path / "in" / f"{name}.mp4"), f"{s3_bucket}/in/{name}.mp4")
    out = s3_bucket + "/out"
    with FaultyProxy(s3_server.endpoint, every=1 << 30) as proxy:
        env = {"AWS_ENDPOINT_URL": proxy.endpoint, "PYTHONPATH": os.pathsep.join(sys.path)}
        run = cli(ckpt, f"{s3_bucket}/in", out, "--size", SIZE, "--no-view", "--num-cpus", "2", env=env,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def down_when_masks_appear():
            deadline = time.time() + 300
            while time.time() < deadline and run.poll() is None:
                if storage.exists(f"{out}/clip00/mask/000000.png"):
                    proxy.outage(12.0)  # longer than botocore's own tries
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=down_when_masks_appear)
        watcher.start()
        stdout, stderr = run.communicate(timeout=900)
        watcher.join()
    assert proxy.refused > 0, "the outage never happened"
    report = json.loads(storage.read_text(out + "/report.json"))
    assert run.returncode == 0, (report["failures"], stderr[-3000:])
    assert report["videos_done"] == 8 and not report["failures"]
    table = read_frames(out)
    assert sorted(zip(table.video, table.frame)) == sorted((n, i) for n, f in names.items() for i in range(f))


def test_a_full_disk_stops_the_run_naming_the_path_and_a_rerun_finishes(ray_local, tmp_path):
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    names = clips(tmp_path / "in", 6, frames=20, w=160, h=96, noise=60)
    out = tmp_path / "disk"
    out.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(out)], capture_output=True,
                           text=True)
    assert mount.returncode == 0, f"a small tmpfs is how this test fills a disk (needs root): {mount.stderr}"
    try:
        args = ["infer", ckpt, str(tmp_path / "in"), str(out / "seg"), "--size", SIZE, "--no-view"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        errors = [line for line in result.output.splitlines() if not line.startswith("infer: ")]  # bar aside
        assert len(errors) == 1 and errors[0].startswith("Error: cannot write") and "Traceback" not in result.output
        assert "no space left on the device" in errors[0], result.output
        assert f"cannot write {out}/seg/" in result.output and "run the same command again" in result.output
        subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        table = read_frames(str(out / "seg"))
        assert sorted(zip(table.video, table.frame)) == sorted((n, i) for n, f in names.items() for i in range(f))
        assert all(len(os.listdir(out / "seg" / n / "mask")) == f for n, f in names.items())
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True)
