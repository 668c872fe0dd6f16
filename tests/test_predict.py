"""models/predict: the one normalisation and prediction every stage uses (plain torch, no Ray)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from roadseg_dist.data.ingest import to_model_input
from roadseg_dist.labels import MEAN, STD
from roadseg_dist.metrics import ConfusionMatrix
from roadseg_dist.models.predict import autocast, inference_amp, inference_autocast, normalize, predict, top_class
from roadseg_dist.models.zoo import build_model


def test_normalize_is_rgb_channels_first_with_the_given_statistics():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    x = normalize(images)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32
    want = (images[1, 3, 4, 2] / 255.0 - MEAN[2]) / STD[2]
    assert x[1, 2, 3, 4].item() == pytest.approx(want, abs=1e-6)
    assert torch.equal(to_model_input(images), x)  # training sees exactly what eval and inference see
    other = normalize(torch.from_numpy(images), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert other[0, 0, 0, 0].item() == pytest.approx(images[0, 0, 0, 0] / 127.5 - 1, abs=1e-6)


def test_predict_gives_uint8_masks_at_the_model_or_the_requested_size():
    torch.manual_seed(0)
    model = build_model("unet", base_channels=4).eval()
    x = normalize(np.random.default_rng(1).integers(0, 256, (2, 20, 30, 3), dtype=np.uint8))
    masks = predict(model, x)
    assert masks.shape == (2, 20, 30) and masks.dtype == np.uint8 and masks.max() < 19
    with torch.inference_mode():
        assert np.array_equal(masks, model(x).argmax(1).numpy())
    assert predict(model, x, out_size=(40, 60)).shape == (2, 40, 60)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_top_class_is_argmax_and_the_softmax_maximum(dtype, layout):
    logits = (torch.randn(2, 19, 9, 11, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    logits[0, :, :3] = torch.randint(0, 3, (19, 3, 11), generator=torch.Generator().manual_seed(1)).to(dtype)
    logits = logits.contiguous(memory_format=layout)  # the first three rows of frame 0: many tied maxima
    ids, prob = top_class(logits)
    assert ids.dtype == torch.uint8 and torch.equal(ids.long(), logits.argmax(1))
    assert prob.dtype == torch.float32 and prob.shape == (2, 9, 11)
    assert torch.allclose(prob, torch.softmax(logits.float(), 1).max(1).values, atol=1e-6)


def test_autocast_is_float32_on_cpu_and_refuses_unknown_modes():
    with autocast("cpu", "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="amp must be one of off, bf16, fp16"):
        autocast("cpu", "fp8")


def test_inference_precision_auto_follows_the_hardware_and_bf16_runs_on_cpu(monkeypatch):
    from roadseg_dist.models import predict as predict_mod

    monkeypatch.setattr(predict_mod, "cpu_has_native_bf16", lambda: True)
    assert inference_amp("cpu") == "bf16" and inference_amp("cuda") == "fp16" and inference_amp("cpu", "off") == "off"
    monkeypatch.setattr(predict_mod, "cpu_has_native_bf16", lambda: False)
    assert inference_amp("cpu") == "off"
    with pytest.raises(ValueError, match="amp must be auto or one of"):
        inference_amp("cpu", "fp8")
    with inference_autocast("cpu", "bf16"):  # unlike training's autocast, inference honours bf16 on a CPU
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with inference_autocast("cpu", "fp16"):  # eval and compare pass fp16: float32 on a CPU, as before
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    torch.manual_seed(0)
    model = build_model("unet", base_channels=8).eval()
    x = normalize(np.random.default_rng(2).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8))
    fp32, bf16 = predict(model, x), predict(model, x, amp="bf16")
    assert bf16.dtype == np.uint8 and (fp32 == bf16).mean() > 0.95  # the demo model agrees on 99.8% of pixels


def test_confusion_matrices_travel_flat_and_merge():
    a, b = ConfusionMatrix(), ConfusionMatrix()
    a.update(np.array([0, 1, 255]), np.array([0, 2, 0]))
    b.update(np.array([1, 18]), np.array([1, 200]))
    flat = b.mat.reshape(1, -1)[0]
    merged = ConfusionMatrix().merge(a).merge(ConfusionMatrix.from_counts(flat))
    assert (merged.mat == a.mat + b.mat).all() and merged.labelled_pixels == 4
