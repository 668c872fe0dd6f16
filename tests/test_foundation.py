"""The foundation: storage URLs against local disk and the loopback S3 server, settings, labels."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from roadseg_dist import labels, settings, storage


@pytest.mark.parametrize("root_kind", ["local", "file", "s3"])
def test_storage_roundtrip(root_kind, tmp_path, request):
    if root_kind == "s3":
        root = request.getfixturevalue("s3_bucket") + "/some/prefix"
    elif root_kind == "file":
        root = "file://" + str(tmp_path)
    else:
        root = str(tmp_path)
    url = storage.join(root, "a", "b.bin")
    assert not storage.exists(url)
    storage.write_bytes(url, b"hello")
    assert storage.read_bytes(url) == b"hello"
    assert storage.exists(url) and storage.size(url) == 5
    with storage.atomic_output(storage.join(root, "c.txt")) as tmp:
        open(tmp, "w").write("done")
    assert storage.read_text(storage.join(root, "c.txt")) == "done"
    found = storage.list_files(root)
    assert [f.rsplit("/", 1)[-1] for f in found] == ["b.bin", "c.txt"]
    assert storage.list_files(root, suffixes=(".TXT",)) == [storage.join(root, "c.txt")]


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = str(tmp_path / "out.bin")
    with pytest.raises(RuntimeError):
        with storage.atomic_output(target) as tmp:
            open(tmp, "wb").write(b"partial")
            raise RuntimeError("crash mid-write")
    assert not storage.exists(target)
    assert list(tmp_path.iterdir()) == []


def test_normalize_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="gs://"):
        storage.normalize("gs://bucket/x")


def test_redact_hides_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "supersecretvalue123")
    text = "key supersecretvalue123 and password=hunter2 at s3://user:pw@host/x"
    out = storage.redact(text)
    assert "supersecretvalue123" not in out and "hunter2" not in out and "user:pw" not in out


@dataclasses.dataclass
class Demo:
    data: str = settings.field(help="where", argument=True)
    batch_size: int = settings.field(8)
    crop: tuple = settings.field((64, 64), parse=settings.parse_size)
    gpu: bool = settings.field(False, flag="--gpu/--cpu")


def test_settings_precedence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_size: 4\ncrop: 32x48\ndata: from-yaml\n")
    s = settings.build(Demo, str(cfg), batch_size=2, gpu=None)
    assert (s.data, s.batch_size, s.crop, s.gpu) == ("from-yaml", 2, (32, 48), False)
    cfg.write_text("batchsize: 4\n")
    with pytest.raises(Exception, match="batchsize"):
        settings.build(Demo, str(cfg))


@pytest.mark.parametrize("line, message", [
    ("epochs: 2.7", "epochs (--epochs): got 2.7, expected a whole number"),
    ("epochs: true", "epochs (--epochs): got True, expected a whole number"),
    ("gpu: maybe", "gpu (--gpu/--cpu): got 'maybe', expected true or false"),
    ("gpu: 1", "gpu (--gpu/--cpu): got 1, expected true or false"),
    ("loss: focal", "loss (--loss): got 'focal', expected one of ce, ohem, dice_ce"),
    ("model: nosuch", "--model 'nosuch' is not in the zoo; choose one of unet, "),
    ("lr: .nan", "lr (--lr): got nan, expected a number"),
    ("name: [a, b]", "name (--name): got ['a', 'b'], expected a text value"),
    ("max_failures: -1", "--max-failures must be at least 0, got -1"),
])
def test_yaml_values_are_checked_not_coerced(tmp_path, line, message):
    """epochs: 2.7 trained 2 epochs, `gpu: maybe` trained on CPUs, `loss: focal` failed in the workers."""
    from roadseg_dist.train.settings import TrainSettings

    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"data: d\nstorage: s\nname: n\n{line}\n")
    with pytest.raises(settings.SettingsError) as err:
        settings.build(TrainSettings, str(cfg))
    assert str(err.value).startswith(message)


def test_yaml_values_that_are_what_they_say_are_taken(tmp_path):
    from roadseg_dist.train.settings import TrainSettings

    cfg = tmp_path / "train.yaml"
    cfg.write_text("data: d\nstorage: s\nname: 2024\nepochs: 3.0\nlr: 1e-3\ngpu: false\nloss: ohem\n"
                   "warmup_epochs: 1\nmodel: unet\n")
    s = settings.build(TrainSettings, str(cfg))
    assert (s.name, s.epochs, s.lr, s.gpu, s.loss, s.warmup_epochs) == ("2024", 3, 0.001, False, "ohem", 1.0)
    assert type(s.epochs) is int and type(s.warmup_epochs) is float


@pytest.mark.parametrize("flags, message", [
    (["--max-failures", "-1"], "--max-failures must be at least 0, got -1"),
    (["--ingest-cpus", "0"], "a CPU reservation must be positive (or auto), got '0'"),
    (["--jitter", "-1"], "--jitter must be within 0..1, got -1.0"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be at least 0, got -1.0"),
    (["--shuffle-buffer", "0"], "--shuffle-buffer must be at least 1, got 0"),
    (["--stall-timeout", "-5"], "--stall-timeout must be at least 0, got -5.0"),
    (["--num-cpus", "0"], "--num-cpus must be at least 1, got 0"),
    (["--model", "nosuch"], "--model 'nosuch' is not in the zoo"),
])
def test_train_flags_out_of_range_are_usage_errors(flags, message):
    from click.testing import CliRunner

    from roadseg_dist.cli import main

    result = CliRunner().invoke(main, ["train", "--data", "d", "--storage", "s", "--name", "n", *flags])
    assert result.exit_code == 2 and message in result.output, result.output


def test_other_jobs_check_their_ranges():
    from roadseg_dist.eval.settings import CompareSettings
    from roadseg_dist.shard.settings import ShardSettings
    from roadseg_dist.eval.settings import EvalSettings

    for cls, kwargs, message in [
            (ShardSettings, dict(root="r", dest="d", stall_timeout=-1), "--stall-timeout must be at least 0"),
            (EvalSettings, dict(checkpoint="c", data="d", num_cpus=0), "--num-cpus must be at least 1"),
            (CompareSettings, dict(data="d", models="a", limit=0), "--limit must be at least 1"),
            (ShardSettings, dict(root="r", dest="d", split="test"), r"split \(--split\): got .test., expected one of train, val")]:
        with pytest.raises(settings.SettingsError, match=message):
            settings.build(cls, **kwargs)


def test_palette_roundtrip():
    mask = np.array([[0, 1, 18], [255, 13, 10]], dtype=np.uint8)
    rgb = labels.colorize(mask)
    assert tuple(rgb[0, 0]) == (128, 64, 128) and tuple(rgb[1, 0]) == (0, 0, 0)
    assert (labels.colormap_to_train_ids(rgb) == mask).all()
    assert labels.invalid_label_values(np.array([0, 19, 255, 200])) == [19, 200]
