"""`roadseg export`: TorchScript and ONNX files that match the eager model to 1e-4 at sizes other
than the one traced, with the checkpoint's description inside."""
from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from roadseg_dist import build_model, load_model, storage
from roadseg_dist.cli import main
from roadseg_dist.models.checkpoint import save_checkpoint
from roadseg_dist.models.export import export_checkpoint


@pytest.fixture(scope="module")
def unet_ckpt(tmp_path_factory) -> str:
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    model = build_model("unet", base_channels=4)
    model.train()(torch.randn(2, 3, 32, 32))  # move BatchNorm statistics off their defaults
    save_checkpoint(str(run / "checkpoint_000001"), model, epoch=1, metrics={"val_miou": 0.4},
                    input_size=(64, 96))
    return str(run)  # a run dir: export picks its best checkpoint


def eager_logits(ckpt: str, x: torch.Tensor) -> torch.Tensor:
    model, _ = load_model(ckpt)
    with torch.no_grad():
        return model(x)


def test_torchscript_cli_parity_at_new_sizes(unet_ckpt, tmp_path):
    out = tmp_path / "model.pt"
    result = CliRunner().invoke(main, ["export", unet_ckpt, str(out), "--format", "torchscript"])
    assert result.exit_code == 0, result.output
    assert "max |exported - eager|" in result.output

    extra = {"meta.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["meta.json"])
    assert (meta["arch"], meta["num_classes"], meta["export_format"]) == ("unet", 19, "torchscript")
    for size in [(50, 70), (181, 317)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            got = scripted(x)
        assert got.shape == (2, 19, *size)
        assert (got - eager_logits(unet_ckpt, x)).abs().max() <= 1e-4


def test_onnx_from_s3_to_s3_parity(s3_bucket, tmp_path):
    torch.manual_seed(1)
    model = build_model("unet-resnet18", decoder_channels=(32, 16, 16, 8, 8)).eval()
    ckpt = s3_bucket + "/runs/r1/checkpoint_000003"
    save_checkpoint(ckpt, model, epoch=3)
    out = s3_bucket + "/exports/model.onnx"

    report = export_checkpoint(ckpt, out, "onnx")
    assert report["max_abs_diff"] <= 1e-4 and report["checked_at"] != report["traced_at"]

    local = tmp_path / "model.onnx"
    storage.download(out, str(local))
    proto = onnx.load(str(local))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["roadseg_meta"])
    assert meta["arch"] == "unet-resnet18" and meta["epoch"] == 3
    session = ort.InferenceSession(str(local), providers=["CPUExecutionProvider"])
    for size in [(45, 77), (96, 64)]:
        x = torch.randn(1 + size[0] % 2, 3, *size)
        got = torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])
        assert got.shape == (x.shape[0], 19, *size)
        with torch.no_grad():
            assert (got - model(x)).abs().max() <= 1e-4


def test_export_errors_are_clear(unet_ckpt, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(tmp_path / "nowhere"), str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "no checkpoint or run directory" in result.output
    result = runner.invoke(main, ["export", unet_ckpt, str(tmp_path / "m.x"), "--format", "tflite"])
    assert result.exit_code == 2 and "tflite" in result.output
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.x").exists()
