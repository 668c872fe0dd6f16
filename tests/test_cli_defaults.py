"""A newcomer's first hour, driven through the CLI as a user would on this 2-core machine.

Every command runs as a subprocess with its own embedded local Ray at default settings (the
session's ``ray_local`` has 4 CPUs, more than this machine, and would hide the defaults' defects),
from a working directory other than the data's, with relative paths, stdout and stderr piped and umask
022. Progress goes to stderr, results to stdout.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "unet", "--base-channels", "8", "--batch-size", "2", "--crop", "64x96", "--val-batch-size", "4"]

pytestmark = pytest.mark.slow


def roadseg(args, cwd, timeout=600, extra_env=None):
    """Run ``roadseg ARGS`` in ``cwd`` with stdout and stderr piped; returns (code, [(seconds, line)] of both
    streams as they came, stderr, seconds, stdout)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               ROADSEG_PROGRESS_SECONDS="5", **(extra_env or {}))
    for k in ("RAY_ADDRESS", "AWS_ENDPOINT_URL"):
        env.pop(k, None)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "roadseg_dist.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=lambda: os.umask(0o022))
    lines, err, out = [], [], []

    def read(stream, into):
        for line in stream:
            lines.append((time.monotonic() - start, line.rstrip("\n")))
            into.append(line)

    reader = threading.Thread(target=read, args=(proc.stderr, err), daemon=True)
    reader.start()
    read(proc.stdout, out)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        proc.kill()
    reader.join(10)
    return code, sorted(lines), "".join(err), time.monotonic() - start, "".join(out)


def files_under(folder):
    return [os.path.join(root, f) for root, _, names in os.walk(folder) for f in names]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A user's folder: ``bdd/`` (synthetic BDD100K) and ``shards/``, both made with relative paths."""
    home = tmp_path_factory.mktemp("home")
    code, lines, err, _, _ = roadseg(["synth", "bdd", "--train", "16", "--val", "4", "--height", "64", "--width", "96",
                                   "--videos", "0"], cwd=home)
    assert code == 0, err
    for split in ("train", "val"):
        code, lines, err, _, _ = roadseg(["shard", "bdd", "shards", "--split", split, "--shard-size", "8"], cwd=home)
        assert code == 0, err
        n = 2 if split == "train" else 1
        assert any(line.startswith(f"shard {split}: {n}/{n} shards (100%)") for _, line in lines), lines
    (home / "work").mkdir()
    return home


@pytest.fixture(scope="module")
def first_run(home):
    """`roadseg train` as a newcomer types it: relative paths from work/, no resource flag."""
    return roadseg(["train", "--data", "../shards", "--storage", "runs", "--name", "first",
                    "--num-workers", "2", "--epochs", "2", *TINY], cwd=home / "work")


def test_train_at_default_resources_from_another_cwd_puts_every_file_where_pointed(home, first_run):
    """No resource flag: `--num-workers 2` fits 2 cores (auto CPUs leave room for the decode tasks);
    relative --data/--storage resolve from the user's cwd; files 0644; progress shows up as it goes."""
    work = home / "work"
    code, lines, err, seconds, out = first_run
    text = "\n".join(line for _, line in lines)
    assert code == 0, f"{text}\n{err[-3000:]}"
    assert "2 training worker(s) x 0.5 CPU (auto)" in text
    run_dir = work / "runs" / "first"
    names = os.listdir(run_dir)
    assert {"metrics.jsonl", "curves.png"} <= set(names) and any(n.startswith("checkpoint_best-") for n in names)
    assert str(run_dir / "curves.png") in text  # the summary names files that exist
    assert out.startswith("best val mIoU ") and out.count("\n") == 2, out  # stdout: the results alone
    modes = {f: stat.S_IMODE(os.stat(f).st_mode) for f in files_under(run_dir) + files_under(home / "shards")}
    assert modes and all(m == 0o644 for m in modes.values()), {f: oct(m) for f, m in modes.items() if m != 0o644}
    # progress while it runs, not only at the end: epoch 1's line and a batch line well before exit
    epoch1 = [t for t, line in lines if line.startswith("epoch   1/2")]
    batches = [t for t, line in lines if line.startswith("train: ") and "batches" in line]
    assert epoch1 and epoch1[0] < seconds - 1.0, lines
    assert batches and batches[0] < epoch1[0], lines


def test_an_explicit_request_that_cannot_fit_fails_in_seconds_naming_cpus(home):
    code, lines, err, seconds, _ = roadseg(["train", "--data", "../shards", "--storage", "runs", "--name", "big",
                                         "--num-workers", "3", "--cpus-per-worker", "1", "--num-cpus", "2", *TINY],
                                        cwd=home / "work", timeout=120)
    assert code == 1 and seconds < 60, (seconds, err)
    # 3 workers x 1 CPU + one 1-CPU decode task
    assert "3 training worker(s) x 1 CPU" in err and "= 4 CPUs" in err and "has 2 CPUs" in err, err
    assert not (home / "work" / "runs" / "big").exists()


def test_a_data_source_that_never_yields_fails_with_the_stall_diagnosis(home):
    """The train shards are named pipes nobody writes: reading one blocks forever, as a hung mount would."""
    stuck = home / "stuck-shards"
    stuck.mkdir()
    for name in os.listdir(home / "shards"):
        if name.startswith("train-") and name.endswith(".tar"):
            os.mkfifo(stuck / name)
        else:
            shutil.copy(home / "shards" / name, stuck / name)
    code, lines, err, seconds, _ = roadseg(["train", "--data", "../stuck-shards", "--storage", "runs", "--name",
                                         "stuck", "--stall-timeout", "20", "--epochs", "1", *TINY],
                                        cwd=home / "work", timeout=300)
    started = next(t for t, line in lines if line.startswith("run "))
    assert code == 1, (lines, err[-3000:])
    assert "train stalled: no progress for" in err and "--stall-timeout 20" in err, err[-3000:]
    assert "waiting for:" in err and "Ray resources: CPU" in err, err[-3000:]
    assert seconds - started < 20 + 90, (started, seconds)  # start-up of the workers + the timeout


def test_eval_piped_prints_progress_lines_and_writes_where_pointed(home, first_run):
    """`eval` printed one blank line when piped; now plain progress lines, reports under a relative --out."""
    work = home / "work"
    assert first_run[0] == 0, first_run[2][-3000:]
    code, lines, err, _, out = roadseg(["eval", "runs/first", "--data", "../shards", "--out", "eval-first"], cwd=work)
    assert code == 0, err[-3000:]
    text = [line for _, line in lines if line.startswith("eval ")]
    assert text[0].startswith("eval val: 0 images") and "" not in text[:2], text
    assert any(line.startswith("eval val: 4/4 images (100%)") for line in text), text
    assert "eval val:" not in out and out.rstrip().splitlines()[-1].startswith("reports: "), out
    assert {"eval.json", "eval.md", "iou.png"} <= set(os.listdir(work / "eval-first"))
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o644 for f in files_under(work / "eval-first"))


def test_infer_piped_prints_progress_lines_and_writes_where_pointed(home, first_run):
    """`infer` printed its progress once, at the end, when piped; relative CKPT/INPUT/OUTPUT from another cwd."""
    work = home / "work"
    assert first_run[0] == 0, first_run[2][-3000:]
    code, lines, err, seconds, stdout = roadseg(["infer", "runs/first", "../bdd/images/10k/val", "segmented",
                                                 "--no-view"], cwd=work)
    assert code == 0, err[-3000:]
    assert not [n for n in ("Progress bars", "execution finished", "Token authentication") if n in err], err
    progress = [(t, line) for t, line in lines if line.startswith("infer: ")]
    assert progress and progress[0][0] < seconds - 1.0, lines  # a line as the work starts, not only at the end
    assert any("frames (100%)" in line for _, line in progress), lines
    assert stdout.startswith("1/1 source(s) done") and stdout.count("\n") == 1, stdout  # the result line alone
    out = work / "segmented"
    assert (out / "report.json").is_file() and any((out / d / "mask").is_dir() for d in os.listdir(out))
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o644 for f in files_under(out))
