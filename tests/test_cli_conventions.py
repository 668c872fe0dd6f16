"""The command line behaves the way click and Ray users expect (issue 23): `-v` anywhere on the line,
ROADSEG_<FLAG> variables between the command line and the --config file, --print-config on every
job (YAML that --config reloads into the same settings, credentials redacted), path options typed as
paths or URLs, results on stdout and everything else (progress, logs, Ray's lines) on stderr."""
from __future__ import annotations

import logging

import click
import pytest
import yaml
from click.testing import CliRunner

from roadseg_dist import settings
from roadseg_dist.ops import progress
from roadseg_dist.cli import main
from roadseg_dist.train.settings import TrainSettings

TRAIN = ["--data", "shards", "--storage", "runs", "--name", "r1", "--epochs", "3", "--crop", "64x96"]


@pytest.fixture(autouse=True)
def keep_log_level(monkeypatch):
    monkeypatch.delenv("ROADSEG_VERBOSE", raising=False)  # -v exports it for local Ray workers: not past a test
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def jobs() -> list[str]:
    """Every command built from a settings dataclass (they all take --config)."""
    return sorted(name for name, cmd in main.commands.items() if any(p.name == "config" for p in cmd.params))


@pytest.mark.parametrize("where", ["after", "before"])
def test_verbose_works_before_and_after_the_command(where):
    args = ["train", *TRAIN, "--print-config"]
    args = ["-v", *args] if where == "before" else [*args, "-v"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("botocore").getEffectiveLevel() == logging.INFO  # -v is ours, not the wire's
    for job in jobs() + ["runs", "models"]:  # every subcommand knows -v, as jobs/*.py pass it along
        assert "-v, --verbose" in CliRunner().invoke(main, [job, "--help"]).output, job


def test_print_config_round_trip_runs_the_same_settings(tmp_path, monkeypatch):
    """`roadseg train --print-config ... > run.yaml && roadseg train --config run.yaml` (from elsewhere)."""
    from roadseg_dist.train import driver

    monkeypatch.chdir(tmp_path)
    printed = CliRunner().invoke(main, ["train", *TRAIN, "--lr", "0.01", "--print-config"])
    assert printed.exit_code == 0, printed.output
    (tmp_path / "run.yaml").write_text(printed.stdout)
    ran = []
    monkeypatch.setattr(driver, "run", lambda s, echo=None: ran.append(s) or {
        "best_checkpoint": None, "curves": "c", "metrics": "m", "checkpoints": [], "seconds": 1})
    monkeypatch.setattr("roadseg_dist.cli.train.require", lambda *a: None)  # (the extras are not the point)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = CliRunner().invoke(main, ["train", "--config", "../run.yaml"])
    assert result.exit_code == 0, result.output
    expected = settings.build(TrainSettings, data=str(tmp_path / "shards"), storage=str(tmp_path / "runs"),
                              name="r1", epochs=3, crop="64x96", lr=0.01)
    assert ran == [expected]
    assert yaml.safe_load(printed.stdout)["data"] == [str(tmp_path / "shards")]  # absolute: reloads anywhere


def test_print_config_never_shows_a_credential():
    result = CliRunner().invoke(main, ["train", *TRAIN, "--mlflow", "http://me:pw123@mlflow:5000", "--print-config"])
    assert result.exit_code == 0 and "pw123" not in result.output
    assert yaml.safe_load(result.stdout)["mlflow"] == "http://***@mlflow:5000"


def test_every_job_has_print_config():
    assert {"train", "infer", "shard", "eval", "compare", "export", "synth", "demo", "submit", "view",
            "frames"} <= set(jobs())
    for job in jobs():
        assert "--print-config" in CliRunner().invoke(main, [job, "--help"]).output, job
    result = CliRunner().invoke(main, ["infer", "ckpt", "videos", "out", "--every", "2", "--print-config"])
    assert result.exit_code == 0 and yaml.safe_load(result.stdout)["every"] == 2


def test_environment_is_below_the_command_line_and_above_the_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 5\nbatch_size: 4\n")
    base = ["train", "--data", "d", "--storage", "s", "--name", "n", "--config", str(config), "--print-config"]
    runner = CliRunner(env={"ROADSEG_EPOCHS": "7", "ROADSEG_GPU": "true"})
    got = yaml.safe_load(runner.invoke(main, base).stdout)
    assert (got["epochs"], got["batch_size"], got["gpu"]) == (7, 4, True)  # env > file > default
    assert yaml.safe_load(runner.invoke(main, [*base, "--epochs", "9"]).stdout)["epochs"] == 9  # flag > env
    bad = CliRunner(env={"ROADSEG_EPOCHS": "2.5"}).invoke(main, base)
    assert bad.exit_code == 2 and "--epochs" in bad.output  # checked as strictly as the flag


def test_path_options_are_typed_as_paths_or_urls():
    text = CliRunner().invoke(main, ["train", "--help"]).output
    assert "--data PATH|URL" in text and "--storage PATH|URL" in text and "--config PATH|URL" in text
    option = next(p for p in main.commands["eval"].params if p.name == "data")
    assert option.type.name == "path" and option.envvar == "ROADSEG_DATA"
    from click.shell_completion import CompletionItem

    ctx = click.Context(main.commands["eval"])
    assert [i.type for i in option.type.shell_complete(ctx, option, "ru")] == ["file"]  # the shell completes files
    assert isinstance(option.type.shell_complete(ctx, option, "ru")[0], CompletionItem)


def test_progress_lines_go_to_stderr(capsys):
    with progress.Progress("shard train", 4, "shards", terminal=False) as bar:
        bar.update(4)
    out, err = capsys.readouterr()
    assert out == "" and "shard train: 4/4 shards (100%)" in err
    progress.plain_echo("epoch 1: ...")
    assert capsys.readouterr().err == "epoch 1: ...\n"


def test_stdout_holds_the_results_and_nothing_else(tmp_path, monkeypatch):
    """What a command's work prints (progress, Ray's worker lines, a library) lands on stderr; only the
    result line reaches stdout, so `roadseg synth ... > out.txt` holds just that line."""
    from roadseg_dist.data import synth

    def noisy_generate(root, **kwargs):
        print("(MapWorker pid=1) a Ray worker's line")
        click.echo("progress: 1/1")

    monkeypatch.setattr(synth, "generate", noisy_generate)
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "bdd"), "--train", "1", "--val", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("wrote 1 train + 1 val images") and result.stdout.count("\n") == 1
    assert "a Ray worker's line" in result.stderr and "progress: 1/1" in result.stderr
