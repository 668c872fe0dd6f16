"""`roadseg export`: TorchScript, torch.export (.pt2) and ONNX files that match the eager model to 1e-4 at
sizes other than the one traced, with the checkpoint's description inside; with --uint8-input they take
decoded frames as they come, and ONNX Runtime alone reproduces `roadseg infer`'s masks on a real video."""
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
from roadseg_dist.models.checkpoint import input_normalization
from roadseg_dist.models.export import export_checkpoint
from roadseg_dist.models.predict import normalize

VIDEO = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"  # Debian's opencv-doc: 795 frames of 576x768
EVERY = 200


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


def test_pt2_takes_uint8_frames_and_normalises_inside(unet_ckpt, tmp_path):
    out = tmp_path / "model.pt2"  # the format from the suffix
    result = CliRunner().invoke(main, ["export", unet_ckpt, str(out), "--uint8-input"])
    assert result.exit_code == 0, result.output
    assert "(pt2, " in result.stdout and "takes uint8 RGB (N, H, W, 3)" in result.stdout
    extra = {"meta.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    meta = json.loads(extra["meta.json"])
    assert meta["export_input"] == {"name": "image", "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                                    "normalized": False, "min_size": 17}
    model, meta = load_model(unet_ckpt)
    for size in [(50, 70), (181, 317)]:
        frames = torch.randint(0, 256, (3, *size, 3), dtype=torch.uint8)
        with torch.no_grad():
            got, expected = program.module()(frames), model(normalize(frames, *input_normalization(meta)))
        assert got.shape == (3, 19, *size) and (got - expected).abs().max() <= 1e-4


def decoded_frames(every: int):
    """(index, RGB uint8 frame) of VIDEO as `roadseg infer` decodes it (PyAV, one sequential pass)."""
    import av

    with av.open(VIDEO) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % every == 0:
                yield index, frame.to_ndarray(format="rgb24")


def test_onnxruntime_alone_reproduces_infer_masks_on_a_real_video(ray_local, tmp_path):
    """`roadseg infer --amp off` against ONNX Runtime on nothing but the exported file and decoded frames:
    with --uint8-input no normalisation code at all; without it, the mean/std of the file's metadata."""
    import cv2
    import numpy as np

    torch.manual_seed(3)
    model = build_model("unet", base_channels=4)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.momentum = None  # statistics of these frames exactly: an untrained net whose argmax varies
    with torch.no_grad():
        model.train()(normalize(np.stack([rgb for _, rgb in decoded_frames(EVERY)][:2])))
    ckpt = str(tmp_path / "ckpt")
    save_checkpoint(ckpt, model, input_size=(576, 768))  # the video's size: infer resizes nothing
    for flag, name in (("--uint8-input", "u8.onnx"), ("--no-uint8-input", "f32.onnx")):
        result = CliRunner().invoke(main, ["export", ckpt, str(tmp_path / name), flag])
        assert result.exit_code == 0, result.output
    out = tmp_path / "segmented"
    result = CliRunner().invoke(main, ["infer", ckpt, VIDEO, str(out), "--amp", "off", "--every", str(EVERY),
                                       "--outputs", "mask", "--no-view"])
    assert result.exit_code == 0, result.output
    sessions = {name: ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
                for name in ("u8.onnx", "f32.onnx")}
    meta = json.loads(onnx.load(str(tmp_path / "f32.onnx")).metadata_props[0].value)
    mean = np.array(meta["normalization"]["mean"], np.float32)
    std = np.array(meta["normalization"]["std"], np.float32)
    same = {name: 0 for name in sessions}
    total, classes = 0, np.zeros(19, np.int64)
    for index, rgb in decoded_frames(EVERY):
        mask = cv2.imread(str(out / "vtest" / "mask" / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
        feeds = {"u8.onnx": rgb[None], "f32.onnx": ((rgb / np.float32(255) - mean) / std).transpose(2, 0, 1)[None]}
        for name, session in sessions.items():
            logits = session.run(["logits"], {"image": feeds[name].astype(feeds[name].dtype)})[0]
            same[name] += int((logits[0].argmax(0) == mask).sum())
        total += mask.size
        classes += np.bincount(mask.ravel(), minlength=19)[:19]
    assert total == 4 * 576 * 768
    assert (classes > 0.01 * total).sum() >= 3, classes  # masks with several classes, not one colour
    assert {name: n / total for name, n in same.items()} == {name: pytest.approx(1.0, abs=0.01) for name in same}
