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


def test_palette_roundtrip():
    mask = np.array([[0, 1, 18], [255, 13, 10]], dtype=np.uint8)
    rgb = labels.colorize(mask)
    assert tuple(rgb[0, 0]) == (128, 64, 128) and tuple(rgb[1, 0]) == (0, 0, 0)
    assert (labels.colormap_to_train_ids(rgb) == mask).all()
    assert labels.invalid_label_values(np.array([0, 19, 255, 200])) == [19, 200]
