"""The checkpoint format: round trips through local disk and the loopback S3 server, run-dir
selection, scrubbed configs and the errors a user meets with a bad checkpoint."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from roadseg_dist import build_model, labels, load_model, storage
from roadseg_dist.models import checkpoint as ckpt
from roadseg_dist.models.checkpoint import CheckpointError


def tiny_unet(num_classes: int = 19, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("unet", num_classes=num_classes, base_channels=4).eval()


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "s3":
        return request.getfixturevalue("s3_bucket") + "/runs"
    return str(tmp_path / "runs")


def test_round_trip_and_meta_contract(root):
    model = tiny_unet()
    config = {"model": "unet", "lr": 0.01, "data": "s3://user:hunter2@bucket/shards",
              "aws_secret_access_key": "AKIA-SECRET", "nested": {"api_token": "t0ken", "epochs": 3}}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    optimizer.step()
    url = storage.join(root, "r1", "checkpoint_000002")
    ckpt.save_checkpoint(url, model, epoch=2, metrics={"val_miou": 0.25, "val_loss": 1.5},
                         train_config=config, input_size=(64, 96),
                         train_state={"optimizer": optimizer.state_dict(), "epoch": 2})

    loaded, meta = load_model(url)
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not loaded.training
    for key in ("format", "arch", "arch_kwargs", "num_classes", "class_names", "palette", "normalization",
                "input_size", "epoch", "metrics", "train_config", "roadseg_version"):
        assert key in meta, key
    assert (meta["arch"], meta["arch_kwargs"], meta["num_classes"]) == ("unet", {"base_channels": 4}, 19)
    assert meta["class_names"] == list(labels.CLASSES) and meta["palette"][0] == [128, 64, 128]
    assert meta["normalization"] == {"mean": list(labels.MEAN), "std": list(labels.STD)}
    assert (meta["input_size"], meta["epoch"], meta["metrics"]["val_miou"]) == ([64, 96], 2, 0.25)
    assert meta["checkpoint"] == storage.normalize(url)
    text = storage.read_text(storage.join(url, "meta.json"))
    assert "hunter2" not in text and "AKIA-SECRET" not in text and "t0ken" not in text
    assert meta["train_config"]["nested"] == {"epochs": 3} and meta["train_config"]["lr"] == 0.01

    state = ckpt.load_train_state(url)
    fresh = torch.optim.SGD(tiny_unet(seed=5).parameters(), lr=0.01, momentum=0.9)
    fresh.load_state_dict(state["optimizer"])  # a real optimizer takes it back
    assert state["epoch"] == 2
    assert ckpt.read_meta(url)["epoch"] == 2


def test_run_dir_picks_best_val_miou_ties_to_latest_epoch(root):
    run = storage.join(root, "run-a")
    for epoch, miou in [(1, 0.10), (2, 0.30), (3, 0.30), (4, 0.20)]:
        ckpt.save_checkpoint(storage.join(run, f"checkpoint_{epoch:06d}"), tiny_unet(seed=epoch),
                             epoch=epoch, metrics={"val_miou": miou}, train_state={"epoch": epoch})
    # an interrupted save: weights but no meta.json; never chosen
    storage.write_bytes(storage.join(run, "checkpoint_000009", "model.pt"), b"partial")
    storage.write_text(storage.join(run, "metrics.jsonl"), "{}\n")

    assert ckpt.resolve_checkpoint(run).endswith("checkpoint_000003")
    model, meta = load_model(run)
    assert meta["epoch"] == 3 and meta["checkpoint"].endswith("checkpoint_000003")
    with torch.no_grad():
        x = torch.randn(1, 3, 16, 16)
        torch.testing.assert_close(model(x), tiny_unet(seed=3)(x))
    assert ckpt.resolve_checkpoint(run, pick="latest").endswith("checkpoint_000004")
    assert ckpt.load_train_state(run) == {"epoch": 4}  # resuming continues from the latest


def test_wrapped_models_are_saved_unwrapped(tmp_path):
    class DDPLike(nn.Module):  # DistributedDataParallel keeps the model in .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = tiny_unet(num_classes=5)
    ckpt.save_checkpoint(str(tmp_path / "c"), DDPLike(model))
    state = torch.load(tmp_path / "c" / "model.pt", weights_only=True)
    assert all(k.startswith("net.") for k in state)
    loaded, meta = load_model(str(tmp_path / "c"), num_classes=5)
    assert meta["num_classes"] == 5 and meta["class_names"][4] == "class_4" and meta["palette"] is None
    assert ckpt.load_train_state(str(tmp_path / "c")) is None
    with pytest.raises(CheckpointError, match="build_model"):
        ckpt.save_checkpoint(str(tmp_path / "d"), nn.Conv2d(3, 19, 1))


def test_overwriting_removes_old_meta_first(tmp_path):
    url = str(tmp_path / "c")
    ckpt.save_checkpoint(url, tiny_unet(), epoch=1)
    ckpt.save_checkpoint(url, tiny_unet(seed=1), epoch=2)
    assert ckpt.read_meta(url)["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "config.json", "meta.json", "model.pt", "model.safetensors"]


# --- errors a user can meet -------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path) -> str:
    url = str(tmp_path / "ckpt")
    ckpt.save_checkpoint(url, tiny_unet(), epoch=1, metrics={"val_miou": 0.5})
    return url


def _edit_meta(url: str, **changes) -> None:
    meta = json.loads(storage.read_text(storage.join(url, "meta.json")))
    meta.update(changes)
    storage.write_text(storage.join(url, "meta.json"), json.dumps(meta))


def test_unknown_architecture(saved):
    _edit_meta(saved, arch="segformer-b9")
    with pytest.raises(CheckpointError, match="'segformer-b9'.*does not know.*unet-resnet18"):
        load_model(saved)


def test_different_number_of_classes(saved):
    with pytest.raises(CheckpointError, match="predicts 19 classes but 7 were requested"):
        load_model(saved, num_classes=7)
    _edit_meta(saved, num_classes=7)  # meta.json and weights disagree
    with pytest.raises(CheckpointError, match="weights have 19 output classes, meta.json says 7"):
        load_model(saved)


def test_corrupt_files(saved):
    weights = storage.join(saved, "model.safetensors")
    storage.write_bytes(weights, storage.read_bytes(weights)[:500])  # truncated upload
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        load_model(saved)
    storage.remove(weights)  # an earlier roadseg_dist's checkpoint: model.pt alone
    model_pt = storage.join(saved, "model.pt")
    storage.write_bytes(model_pt, storage.read_bytes(model_pt)[:500])
    with pytest.raises(CheckpointError, match="model.pt is corrupt"):
        load_model(saved)
    storage.write_text(storage.join(saved, "meta.json"), '{"arch": "unet", "num_cl')
    with pytest.raises(CheckpointError, match="meta.json is corrupt"):
        load_model(saved)


def test_missing_and_empty(tmp_path, saved):
    for name in ("model.pt", "model.safetensors"):
        storage.remove(storage.join(saved, name))
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_model(saved)
    storage.remove(storage.join(saved, "meta.json"))
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no meta.json: the checkpoint was not finished"):
        load_model(saved)
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(CheckpointError, match="empty-run holds no finished checkpoint"):
        load_model(str(tmp_path / "empty-run"))
    with pytest.raises(CheckpointError, match="no checkpoint or run directory at .*nowhere"):
        load_model(str(tmp_path / "nowhere"))


def test_scrub_drops_secret_keys_and_redacts_values():
    out = ckpt.scrub({"password": "p", "AWS_SESSION_TOKEN": "t", "endpoint": "http://a:b@h:9000",
                      "sizes": (1, 2), "path": None})
    assert out == {"endpoint": "http://***@h:9000", "sizes": [1, 2], "path": None}


def test_a_folder_of_runs_is_refused_and_lists_them(root):
    """`roadseg infer runs ...` once walked the whole tree and took the best checkpoint of any run
    below, a damaged one included: only a checkpoint dir or a run dir (checkpoints directly in it)."""
    for run, miou in (("team/run-a", 0.2), ("team/run-b", 0.9)):
        ckpt.save_checkpoint(storage.join(root, run, "checkpoint_000001"), tiny_unet(), epoch=1,
                             metrics={"val_miou": miou})
    storage.write_text(storage.join(root, "team/run-c/checkpoint_000001/meta.json"), '{"arch": "unet", "num_cl')
    for folder in (root, storage.join(root, "team")):
        with pytest.raises(CheckpointError, match=r"holds 3 run\(s\): .*run-a, .*run-b, .*run-c; pick one"):
            load_model(folder)
    assert ckpt.resolve_checkpoint(storage.join(root, "team/run-a")).endswith("team/run-a/checkpoint_000001")


# --- the files other tools read ---------------------------------------------------------------------

def test_smp_from_pretrained_and_load_model_give_identical_outputs(tmp_path):
    """model.safetensors + config.json: smp's own loader rebuilds the network, ours the whole model."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(2)
    model = build_model("unet-resnet18", decoder_channels=(32, 16, 16, 8, 8))
    model.train()(torch.randn(2, 3, 64, 64))  # BatchNorm statistics off their defaults
    model.eval()
    url = str(tmp_path / "ckpt")
    ckpt.save_checkpoint(url, model, epoch=3, input_size=(64, 96))
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert (config["_model_class"], config["encoder_name"], config["classes"]) == ("Unet", "resnet18", 19)
    assert config["_roadseg"]["arch"] == "unet-resnet18" and config["_roadseg"]["multiple"] == 32
    (tmp_path / "ckpt" / "model.pt").unlink()  # the new files alone
    theirs = smp.from_pretrained(url).eval()
    ours, _ = load_model(url)
    x = torch.randn(2, 3, 96, 128)  # smp's bare net wants sides divisible by 32
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(ours(x), model(x), rtol=0, atol=0)
        y = torch.randn(1, 3, 45, 77)  # ours pads any size, as before
        torch.testing.assert_close(ours(y), model(y), rtol=0, atol=0)


def test_the_classic_unet_and_earlier_checkpoints_load_identically(tmp_path):
    from safetensors.torch import load_file

    model = tiny_unet()
    model.train()(torch.randn(2, 3, 32, 32))
    model.eval()
    new, old = str(tmp_path / "new"), str(tmp_path / "old")
    ckpt.save_checkpoint(new, model, epoch=1)
    assert set(load_file(tmp_path / "new" / "model.safetensors")) == set(model.net.state_dict())
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert config["_class"] == "roadseg_dist.models.unet.UNet" and config["base_channels"] == 4
    ckpt.save_checkpoint(old, model, epoch=1)  # as an earlier roadseg_dist wrote it: model.pt + meta.json
    for name in ("model.safetensors", "config.json"):
        (tmp_path / "old" / name).unlink()
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        for url in (new, old):
            torch.testing.assert_close(load_model(url)[0](x), model(x), rtol=0, atol=0)
    assert ckpt.weights_url(new).endswith("model.safetensors") and ckpt.weights_url(old).endswith("model.pt")
