"""The model zoo: registry, sizes, any-input-size forward, ImageNet weights from local files only."""
from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

from roadseg_dist import build_model
from roadseg_dist.models import pretrained, zoo

SMP_MODELS = ["unet-vgg11", "unet-resnet18", "unet-resnet34", "unet-efficientnet-b0", "unet-mobilenet_v2"]


@pytest.fixture
def no_weight_caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches, so only what a test writes there exists."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_registry_lists_the_issue_models():
    assert set(zoo.list_models()) >= {"unet", *SMP_MODELS}
    with pytest.raises(zoo.UnknownModel, match="unknown model 'unet-resnet999'.*unet-resnet18"):
        build_model("unet-resnet999")


def test_classic_unet_is_the_31m_prototype_and_runs_at_full_width():
    model = build_model("unet").eval()
    params = zoo.count_parameters(model)
    assert 30_000_000 <= params <= 32_000_000
    assert (model.arch, model.arch_kwargs, model.num_classes) == ("unet", {"base_channels": 64}, 19)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 40, 72))  # 40 is not a multiple of 16: padded and cropped back
    assert out.shape == (1, 19, 40, 72) and torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(720, 1280), (528, 720), (181, 317)])
def test_any_input_size_gives_logits_of_that_size(size):
    model = build_model("unet", base_channels=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 19, *size)


def test_padding_does_not_change_what_the_net_sees_inside_the_image():
    """Cropping back returns exactly the net's output on the padded image: no resampling."""
    model = build_model("unet", base_channels=4).eval()
    x = torch.randn(1, 3, 181, 317)
    with torch.no_grad():
        full = model.net(zoo.pad_to_multiple(x, 16))
        assert full.shape[-2:] == (192, 320)
        torch.testing.assert_close(model(x), full[:, :, :181, :317])


@pytest.mark.parametrize("name", SMP_MODELS)
def test_pretrained_encoder_unets_build_and_run_at_odd_sizes(name):
    model = build_model(name, num_classes=7).eval()
    assert model.arch == name and model.encoder == name.removeprefix("unet-") and model.multiple == 32
    assert 5_000_000 < zoo.count_parameters(model) < 30_000_000
    with torch.no_grad():
        out = model(torch.randn(2, 3, 45, 77))
    assert out.shape == (2, 7, 45, 77)


def test_smp_unet_at_the_issue_sizes():
    model = build_model("unet-mobilenet_v2", decoder_channels=(32, 16, 16, 8, 8)).eval()
    assert model.arch_kwargs == {"decoder_channels": [32, 16, 16, 8, 8]}
    with torch.no_grad():
        for size in [(528, 720), (181, 317)]:
            assert model(torch.randn(1, 3, *size)).shape == (1, 19, *size)


# --- ImageNet weights: local files only --------------------------------------------------------------

def _imagenet_like_file(encoder_module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state dict shaped like the torchvision download: encoder weights plus a classifier head."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen).to(v.dtype) if v.is_floating_point() else v.clone()
             for k, v in encoder_module.state_dict().items()}
    state["fc.weight"] = torch.randn(1000, 512, generator=gen)
    state["fc.bias"] = torch.zeros(1000)
    return state


def test_pretrained_loads_the_torch_hub_cache_file(no_weight_caches):
    template = build_model("unet-resnet18")
    expected = _imagenet_like_file(template.net.encoder, seed=1)
    hub = no_weight_caches / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(expected, hub / "resnet18-f37072fd.pth")  # the exact name torchvision downloads

    model = build_model("unet-resnet18", pretrained=True)
    got = model.net.encoder.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight"):
        torch.testing.assert_close(got[key], expected[key])
    assert model.arch_kwargs == {}  # a checkpoint of it must not need the ImageNet file again


def test_pretrained_loads_an_explicit_file_and_the_hf_cache(no_weight_caches):
    from safetensors.torch import save_file

    template = build_model("unet-mobilenet_v2")
    expected = _imagenet_like_file(template.net.encoder, seed=2)
    explicit = no_weight_caches / "my-mobilenet.pth"
    torch.save({"state_dict": expected}, explicit)  # wrapped, as many training scripts save
    model = build_model("unet-mobilenet_v2", weights=str(explicit))
    torch.testing.assert_close(model.net.encoder.state_dict()["features.3.conv.1.0.weight"],
                               expected["features.3.conv.1.0.weight"])

    snap = no_weight_caches / "hf" / "models--smp-hub--mobilenet_v2.imagenet" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    encoder_only = {k: v for k, v in expected.items() if not k.startswith("fc.")}
    save_file({k: v.contiguous() for k, v in encoder_only.items()}, str(snap / "model.safetensors"))
    assert pretrained.find_encoder_weights("mobilenet_v2") == str(snap / "model.safetensors")
    model = build_model("unet-mobilenet_v2", pretrained=True)
    torch.testing.assert_close(model.net.encoder.state_dict()["features.0.0.weight"],
                               expected["features.0.0.weight"])


def test_missing_weights_name_the_file_and_where_to_put_it(no_weight_caches):
    with pytest.raises(pretrained.PretrainedWeightsMissing) as err:
        build_model("unet-resnet34", pretrained=True)
    expected = os.path.join(str(no_weight_caches), "torch", "hub", "checkpoints", "resnet34-b627a593.pth")
    assert expected in str(err.value)
    assert "https://download.pytorch.org/models/resnet34-b627a593.pth" in str(err.value)
    with pytest.raises(pretrained.PretrainedWeightsMissing, match="nowhere.pth does not exist"):
        build_model("unet-resnet18", weights=str(no_weight_caches / "nowhere.pth"))
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model("unet", pretrained=True)


def test_weights_of_another_encoder_are_refused(no_weight_caches):
    wrong = no_weight_caches / "resnet34.pth"
    torch.save(build_model("unet-resnet34").net.encoder.state_dict(), wrong)
    with pytest.raises(ValueError, match="does not fit encoder 'resnet18'"):
        build_model("unet-resnet18", weights=str(wrong))
    garbage = no_weight_caches / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pth is not a readable"):
        build_model("unet-resnet18", weights=str(garbage))


# --- model_info and `roadseg models` -----------------------------------------------------------------

def test_model_info_counts_on_the_meta_device_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    info = zoo.model_info("unet", base_channels=8)
    real = build_model("unet", base_channels=8)
    assert info["parameters"] == zoo.count_parameters(real)
    # the meta-device count at 720x1280 = a real forward at 144x256 (every level 5x smaller) x 25
    small = zoo._count_flops(real, (144, 256), "cpu") / 1e9
    assert info["gflops_720x1280"] == pytest.approx(25 * small, rel=0.01)
    assert info["encoder"] is None
    cache = json.loads((tmp_path / "roadseg_dist" / "model_info.json").read_text())
    assert info in cache.values()
    assert zoo.model_info("unet", base_channels=8) == info


def test_models_command_json(tmp_path, monkeypatch):
    from roadseg_dist.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == set(zoo.list_models())
    assert 30e6 < rows["unet"]["parameters"] < 32e6
    assert rows["unet-resnet34"]["encoder"] == "resnet34"
    assert rows["unet"]["gflops_720x1280"] > rows["unet-resnet34"]["gflops_720x1280"] > \
        rows["unet-resnet18"]["gflops_720x1280"] > 0
    table = CliRunner().invoke(main, ["models"])
    assert table.exit_code == 0 and "unet-efficientnet-b0" in table.output
