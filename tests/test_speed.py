"""--channels-last and --compile change speed, not results: checked on CPU against the plain model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from roadseg_dist.models.predict import as_input, fold_batchnorm, optimize
from roadseg_dist.models.zoo import build_model
from roadseg_dist.train import loop


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("unet", base_channels=4)


def batch(n: int = 2, h: int = 40, w: int = 56):
    g = torch.Generator().manual_seed(3)
    return {"image": torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8),
            "label": torch.randint(0, 19, (n, h, w), generator=g, dtype=torch.uint8)}


@pytest.mark.parametrize("channels_last,compiled", [(True, False), (False, True)])
def test_optimized_model_gives_the_plain_outputs(channels_last, compiled):
    x = torch.randn(2, 3, 40, 56)  # not a multiple of 16: the any-size wrapper pads and crops
    plain = tiny().eval()
    fast = optimize(tiny().eval(), channels_last=channels_last, compile=compiled)
    with torch.no_grad():
        ref = plain(x)
        out = fast(as_input(x, channels_last))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    if channels_last:
        assert next(fast.parameters()).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("arch", ["unet", "unet-resnet18"])
def test_folded_batchnorm_gives_the_plain_outputs(arch):
    torch.manual_seed(0)
    model = build_model(arch, **({"base_channels": 4} if arch == "unet" else {}))
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for _ in range(3):
            model(torch.randn(2, 3, 64, 64) * 3 + 1)
    model.eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        ref = model(x)
        folded = fold_batchnorm(model)
        out = folded(x)
    bns = [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert arch != "unet" or not bns  # every U-Net BatchNorm follows a convolution in a Sequential
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        fold_batchnorm(folded.train())


def test_channels_last_training_step_matches_plain_and_checkpoints_the_plain_state(tmp_path):
    from roadseg_dist.models.checkpoint import load_model, save_checkpoint

    results = {}
    for channels_last in (False, True):
        model = optimize(tiny(), channels_last=channels_last)
        opt = loop.build_optimizer(model, "adamw", 1e-3, 1e-4, 0.9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        stats = loop.train_one_epoch(model, [batch()] * 2, opt, sched, scaler, torch.device("cpu"),
                                     channels_last=channels_last)
        results[channels_last] = (stats["loss_sum"] / stats["norm"], model)
    assert results[True][0].item() == pytest.approx(results[False][0].item(), rel=1e-4)
    for a, b in zip(results[False][1].state_dict().values(), results[True][1].state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    save_checkpoint(str(tmp_path / "ck"), results[True][1], epoch=1)
    reloaded, _ = load_model(str(tmp_path / "ck"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), results[True][1].eval()(x), atol=1e-4, rtol=1e-4)


def test_eval_predictions_with_channels_last_match_plain():
    from roadseg_dist.eval.score import label_size_masks as predict_masks
    from roadseg_dist.labels import MEAN, STD

    meta = {"normalization": {"mean": list(MEAN), "std": list(STD)}}
    images = [np.asarray(img) for img in batch(3)["image"]]
    plain = predict_masks(tiny().eval(), images, meta)
    fast = predict_masks(optimize(tiny().eval(), channels_last=True), images, meta, channels_last=True)
    assert all((a == b).mean() > 0.999 for a, b in zip(plain, fast))


def test_compare_timing_runs_with_the_speed_options():
    from roadseg_dist.eval.compare import measure_fps

    model = optimize(tiny(), channels_last=True)
    assert measure_fps(model, (32, 48), seconds=0.05, min_iters=2, channels_last=True) > 0


def test_infer_actor_with_channels_last_writes_the_plain_masks(tmp_path):
    from roadseg_dist.render import model_input
    from roadseg_dist.infer.segment import Segmenter
    from roadseg_dist.models.checkpoint import save_checkpoint

    save_checkpoint(str(tmp_path / "ckpt"), tiny(), input_size=[48, 64])
    frames = np.random.default_rng(0).integers(0, 256, (3, 60, 80, 3), dtype=np.uint8)
    inputs = model_input(list(frames), (48, 64))
    plain, _ = Segmenter(str(tmp_path / "ckpt"), None, amp="off").predict(inputs)
    fast, _ = Segmenter(str(tmp_path / "ckpt"), None, channels_last=True, amp="off").predict(inputs)
    assert plain.shape == (3, 48, 64)
    assert (plain == fast).mean() > 0.999


def test_infer_actor_takes_the_model_input_alone_and_names_the_size_it_wants(tmp_path):
    """The decode side resizes (render.model_input); the actor's masks are the model's argmax at that
    size, and a frame of any other size is refused with the size it takes."""
    from roadseg_dist.render import model_input
    from roadseg_dist.infer.segment import Segmenter
    from roadseg_dist.models.checkpoint import input_normalization, load_model, save_checkpoint

    save_checkpoint(str(tmp_path / "ckpt"), tiny(), input_size=[48, 64])
    frames = np.random.default_rng(0).integers(0, 256, (3, 60, 80, 3), dtype=np.uint8)
    seg = Segmenter(str(tmp_path / "ckpt"), (48, 64), amp="off")
    inputs = model_input(list(frames), (48, 64))
    masks, confidence = seg.predict(inputs)
    model, meta = load_model(str(tmp_path / "ckpt"))
    mean, std = input_normalization(meta)
    x = (torch.from_numpy(inputs).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.eval()(x).argmax(1).numpy()
    assert (masks == expected).mean() > 0.999 and confidence.shape == (3, 2)
    with pytest.raises(ValueError, match="48x64"):
        seg.predict(frames)
