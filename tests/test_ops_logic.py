"""The newcomer's first hour, the pure parts: resource plans, the stall watchdog, progress lines,
settings (paths, --help, positional arguments from --config) and file modes. No Ray here."""
from __future__ import annotations

import dataclasses
import os
import signal
import stat
import threading
import time

import click
import pytest
from click.testing import CliRunner

from roadseg_dist import settings, storage
from roadseg_dist.ops import progress, resources, watchdog
from roadseg_dist.cli import Command
from roadseg_dist.ops.resources import Offer, Request, ResourceError


# --- resources -----------------------------------------------------------------------------------

def train_request(workers=2, cpus="auto", gpus=0, ingest=0.5):
    return Request(job="train", workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus, task_cpus=ingest,
                   worker_name="training worker", task_name="decode/augment task", task_flag="--ingest-cpus")


LOCAL2 = Offer(cpus=2, largest_node_cpus=2, where="the local Ray (--num-cpus 2)")


@pytest.mark.parametrize("cpus", [2, 3, 4, 8, 16, 96])
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_auto_fits_every_machine_with_two_or_more_cores_and_leaves_room_for_tasks(cpus, workers):
    p = resources.plan(train_request(workers), Offer(cpus=cpus, largest_node_cpus=cpus))
    assert p.auto and p.cpus_per_worker > 0
    left = cpus - workers * p.cpus_per_worker
    assert left >= 0.5 - 1e-9 and left >= cpus / 2 - 1e-9  # the decode tasks keep at least half


def test_the_issue_defaults_two_workers_on_two_cpus_get_three_quarters_each():
    p = resources.plan(train_request(2), LOCAL2)
    assert p.cpus_per_worker == pytest.approx(0.5)  # half of 2 CPUs stays with the decode tasks
    assert "2 training worker(s) x 0.5 CPU (auto)" in p.summary()


def test_explicit_request_that_starves_the_tasks_fails_naming_numbers_and_flags():
    with pytest.raises(ResourceError) as err:
        resources.plan(train_request(2, 1.0), LOCAL2)  # the hang of the issue: 2 x 1 CPU = every CPU
    text = str(err.value)
    assert "2 training worker(s) x 1 CPU" in text and "= 2.5 CPUs" in text and "has 2 CPUs" in text
    assert "--cpus-per-worker" in text and "--num-workers" in text and "--ingest-cpus" in text
    assert "--num-cpus" in text


def test_three_workers_of_one_cpu_on_two_cpus_fail():
    with pytest.raises(ResourceError, match=r"3 training worker\(s\) x 1 CPU .* = 3.5 CPUs"):
        resources.plan(train_request(3, 1.0), LOCAL2)


def test_autoscaler_maximum_counts_and_is_named():
    offer = Offer(cpus=2, largest_node_cpus=2, max_cpus=64, where="the Ray cluster")
    assert resources.plan(train_request(8, 4.0), offer).reserved_cpus == 32.5
    with pytest.raises(ResourceError, match="up to 64 with autoscaling"):
        resources.plan(train_request(16, 4.0), offer)


def test_a_worker_larger_than_any_node_fails():
    offer = Offer(cpus=8, largest_node_cpus=4, where="the Ray cluster")
    with pytest.raises(ResourceError, match="largest node .* has 4"):
        resources.plan(train_request(1, 6.0), offer)


def test_gpus_are_checked():
    with pytest.raises(ResourceError, match=r"2 GPUs, but the Ray cluster has 1 GPU: .*--cpu"):
        resources.plan(train_request(2, "auto", gpus=1), Offer(cpus=16, gpus=1, where="the Ray cluster"))


def test_too_many_workers_for_auto_fail_clearly():
    with pytest.raises(ResourceError, match="do not fit"):
        resources.plan(train_request(64), LOCAL2)


def test_parse_cpus():
    assert resources.parse_cpus("auto") == "auto" and resources.parse_cpus(None) == "auto"
    assert resources.parse_cpus("1.5") == 1.5
    for bad in ("-1", "0", "many"):
        with pytest.raises(ValueError):
            resources.parse_cpus(bad)


# --- watchdog ------------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_watchdog_fires_only_after_the_timeout_without_beats(monkeypatch):
    monkeypatch.setattr(watchdog, "ray_diagnosis", lambda: "Ray: nothing pending")
    clock = Clock()
    dog = watchdog.Watchdog("train", 60, clock=clock, pending=lambda: "batch 3 of rank 1")
    clock.t = 59
    dog.check()
    dog.beat("batch 2")
    clock.t = 118
    dog.check()
    clock.t = 120
    with pytest.raises(watchdog.StallError) as err:
        dog.check()
    text = str(err.value)
    assert "no progress for 61 s" in text and "last progress: batch 2" in text
    assert "waiting for: batch 3 of rank 1" in text and "Ray: nothing pending" in text


def test_watchdog_with_timeout_zero_never_fires():
    clock = Clock()
    dog = watchdog.Watchdog("eval", 0, clock=clock)
    clock.t = 1e9
    dog.check()


def test_watch_interrupts_a_blocked_main_thread_with_the_diagnosis(monkeypatch):
    monkeypatch.setattr(watchdog, "ray_diagnosis", lambda: "Ray: 1 task running")
    dog = watchdog.Watchdog("eval", 0.5, pending=lambda: "a read that never returns")
    start = time.monotonic()
    with pytest.raises(watchdog.StallError, match="a read that never returns"):
        with watchdog.watch(dog, poll_s=0.1):
            threading.Event().wait(30)  # blocks like a stuck ray.get
    assert time.monotonic() - start < 10


def test_a_stall_interrupts_even_where_a_library_left_its_own_sigint_handler(monkeypatch):
    """Ray Train's fit() on the main thread leaves a SIGINT handler that does not raise: the stall must
    still end the wait, the user's Ctrl-C must still reach that handler, and it is back afterwards."""
    monkeypatch.setattr(watchdog, "ray_diagnosis", lambda: "Ray: 1 task running")
    calls = []
    left_behind = lambda signum, frame: calls.append(signum)  # noqa: E731 - logs and returns, as Ray's does
    before = signal.signal(signal.SIGINT, left_behind)
    try:
        dog = watchdog.Watchdog("eval", 0.5, pending=lambda: "a read that never returns")
        start = time.monotonic()
        with pytest.raises(watchdog.StallError, match="a read that never returns"):
            with watchdog.watch(dog, poll_s=0.1):
                threading.Event().wait(30)
        assert time.monotonic() - start < 10
        assert signal.getsignal(signal.SIGINT) is left_behind
        with watchdog.watch(watchdog.Watchdog("eval", 30), poll_s=0.1):
            signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, no stall
        assert calls == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, before)


def test_watch_leaves_a_moving_job_alone(monkeypatch):
    dog = watchdog.Watchdog("eval", 0.5)
    with watchdog.watch(dog, poll_s=0.05):
        for _ in range(15):
            time.sleep(0.1)
            dog.beat("batch")


# --- progress ------------------------------------------------------------------------------------

def test_plain_progress_prints_at_milestones_and_every_interval_with_rate_and_eta():
    clock, lines = Clock(), []
    with progress.Progress("shard train", 8, "shards", echo=lines.append, interval=15, clock=clock) as p:
        assert lines == ["shard train: 0/8 shards (0%), 0.00 shards/s, 0 failed, 0s elapsed"]
        clock.t = 5
        p.update(1)          # not a milestone, interval not up
        assert len(lines) == 1
        clock.t = 10
        p.update(2)          # 25 %
        assert lines[-1] == "shard train: 2/8 shards (25%), 0.20 shards/s, ETA 30s, 0 failed, 10s elapsed"
        clock.t = 26
        p.tick()             # heartbeat after the interval
        assert len(lines) == 3
        p.update(failures=1)  # a new failure is always shown
        assert "1 failed" in lines[-1] and len(lines) == 4
        clock.t = 30
        p.update(8)
    assert lines[-1].startswith("shard train: 8/8 shards (100%)")
    assert sum(line.startswith("shard train: 8/8") for line in lines) == 1  # the milestone is the final line


def test_progress_without_total_and_log_lines():
    clock, lines = Clock(), []
    with progress.Progress("eval val", None, "images", echo=lines.append, interval=15, clock=clock) as p:
        p.log("resources: ...")
        clock.t = 20
        p.update(40, total=80)
    assert lines[1] == "resources: ..." and "40/80 images (50%)" in lines[2]


def test_poster_throttles_and_forces():
    class Board:
        def __init__(self):
            self.posts = []
            self.post = self

        def remote(self, who, **fields):
            self.posts.append((who, fields))

    clock, board = Clock(), Board()
    post = progress.Poster(board, 0, every_s=1.0, clock=clock)
    post(epoch=1, batches=1)
    post(epoch=1, batches=2)
    clock.t = 1.5
    post(epoch=1, batches=3)
    post(force=True, epoch=1, batches=4)
    assert [f["batches"] for _, f in board.posts] == [1, 3, 4]
    progress.Poster(None, 0)(force=True, epoch=1)  # no board: nothing to do


# --- settings: paths, --help, positional arguments from --config ----------------------------------

@dataclasses.dataclass
class Job:
    checkpoint: str = settings.field(argument=True, path=True, help="a checkpoint")
    data: str = settings.field(path=True, help="shards")
    out: str = settings.field("out", path=True, help="reports")
    name: str = settings.field("x", help="not a path")
    size: tuple | None = settings.field(None, parse=settings.parse_size, help="HxW size")


@click.command(cls=Command)  # the CLI's command class: SettingsError is a usage error (exit 2)
@settings.cli_options(Job)
def job_cmd(config, **values):
    s = settings.build(Job, config, **values)
    click.echo(f"{s.checkpoint}|{s.data}|{s.out}|{s.name}")


def test_local_paths_become_absolute_urls_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = settings.build(Job, None, checkpoint="runs/a", data="s3://b/shards", out="file://rel/out", name="n")
    assert s.checkpoint == str(tmp_path / "runs" / "a")
    assert s.data == "s3://b/shards" and s.out == "file://rel/out" and s.name == "n"
    assert settings.absolute_paths(Job(checkpoint="c", data="~/d")).data == os.path.expanduser("~/d")


def test_help_marks_required_shows_sizes_and_says_what_relative_means():
    text = CliRunner().invoke(job_cmd, ["--help"], terminal_width=200).output
    assert "--data PATH" in text and "[required]" in text.split("--data", 1)[1].split("--out")[0]
    assert "--size HxW" in text and "TEXT" not in text.split("--size", 1)[1].split("\n")[0]
    assert "under `roadseg submit`, to the job's working dir" in text
    assert "[OPTIONS] CHECKPOINT\n" in text


def test_positional_argument_from_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.yaml").write_text("checkpoint: runs/best\ndata: shards\n")
    result = CliRunner().invoke(job_cmd, ["--config", "f.yaml"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{tmp_path}/runs/best|{tmp_path}/shards|{tmp_path}/out|x"
    missing = CliRunner().invoke(job_cmd, ["--data", "d"])
    assert missing.exit_code == 2 and "argument CHECKPOINT" in missing.output


def test_every_job_marks_its_paths():
    from roadseg_dist.eval.settings import CompareSettings
    from roadseg_dist.shard.settings import ShardSettings
    from roadseg_dist.eval.settings import EvalSettings
    from roadseg_dist.train.settings import TrainSettings

    def paths(cls):
        return {f.name for f in dataclasses.fields(cls) if f.metadata.get("path")}

    assert paths(TrainSettings) == {"data", "storage", "init_from"}
    assert paths(EvalSettings) == {"checkpoint", "data", "out", "save_preds"}
    assert paths(CompareSettings) == {"data", "models", "out"}
    assert paths(ShardSettings) == {"root", "dest"}


def test_the_resnet34_recipe_names_the_weight_file_the_zoo_reads():
    from roadseg_dist.models import zoo

    path, _ = zoo.pretrained_weights_file("unet-resnet34")
    recipe = open(os.path.join(os.path.dirname(__file__), "..", "configs", "bdd100k-unet-resnet34.yaml")).read()
    assert os.path.basename(path) in recipe


# --- file modes ------------------------------------------------------------------------------------

def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        storage.write_bytes(str(tmp_path / "a" / "x.bin"), b"1")
        src = tmp_path / "src"
        src.write_bytes(b"2")
        storage.upload(str(src), str(tmp_path / "b" / "y.bin"))
        with storage.atomic_output(str(tmp_path / "c" / "z.bin")) as tmp:
            open(tmp, "wb").write(b"3")
        for f in ("a/x.bin", "b/y.bin", "c/z.bin"):
            assert stat.S_IMODE(os.stat(tmp_path / f).st_mode) == 0o644, f
        os.umask(0o027)
        storage.write_bytes(str(tmp_path / "a" / "w.bin"), b"1")
        assert stat.S_IMODE(os.stat(tmp_path / "a" / "w.bin").st_mode) == 0o640
    finally:
        os.umask(old)
