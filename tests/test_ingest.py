"""Training ingest as plain functions: the epoch plan, augmentation, normalisation (no Ray)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from roadseg_dist.data import ingest
from roadseg_dist.labels import IGNORE_INDEX, MEAN, STD


def make_index(shard_sizes):
    rows = [{"key": f"s{s}-k{i:03d}", "shard": f"train-{s:06d}.tar"}
            for s, n in enumerate(shard_sizes) for i in range(n)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_plan_epoch_equal_disjoint_parts(world):
    index = make_index([7, 5, 9, 4])  # 25 samples
    parts = ingest.plan_epoch(index, world, seed=1, epoch=1)
    keys = [[k for t in part for k in t.keys] for part in parts]
    assert len(parts) == world
    assert {len(k) for k in keys} == {25 // world}
    flat = [k for part in keys for k in part]
    assert len(flat) == len(set(flat)) == world * (25 // world)
    assert set(flat) <= set(index.key)
    shard_of = dict(zip(index.key, index.shard))
    for part in parts:
        for task in part:
            assert all(shard_of[k] == task.shard for k in task.keys)
        # a rank reads each of its shards in one task
        assert len({t.shard for t in part}) == len(part)


def test_plan_epoch_new_order_each_epoch_and_repeatable():
    index = make_index([6, 6, 6, 6])
    order = lambda seed, epoch: [k for part in ingest.plan_epoch(index, 2, seed, epoch) for t in part for k in t.keys]
    assert order(3, 1) == order(3, 1)
    assert order(3, 1) != order(3, 2)
    assert order(3, 1) != order(4, 1)
    assert sorted(order(3, 1)) == sorted(order(3, 2)) == sorted(index.key)


def test_plan_epoch_too_few_samples():
    with pytest.raises(ValueError, match="fewer than the 4 workers"):
        ingest.plan_epoch(make_index([3]), 4, 0, 1)


def test_val_shards_cover_each_shard_once():
    index = make_index([2, 2, 2, 2, 2])
    parts = [ingest.val_shards_for_rank(index, r, 3) for r in range(3)]
    flat = [s for p in parts for s in p]
    assert sorted(flat) == sorted(index.shard.unique()) and len(flat) == len(set(flat))


def scene(h=40, w=60):
    rgb = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    label = (np.arange(h * w).reshape(h, w) % 19).astype(np.uint8)
    label[0, :] = IGNORE_INDEX
    return rgb, label


def test_augment_shapes_and_label_values():
    rgb, label = scene()
    for i in range(20):
        out_rgb, out_label = ingest.augment(rgb, label, np.random.default_rng(i), crop=(32, 48),
                                            scale_range=(0.5, 2.0), flip=True, jitter=0.3)
        assert out_rgb.shape == (32, 48, 3) and out_rgb.dtype == np.uint8
        assert out_label.shape == (32, 48) and out_label.dtype == np.uint8
        # nearest-neighbour resizing and 255 padding: no invented label values
        assert set(np.unique(out_label)) <= set(range(19)) | {IGNORE_INDEX}


def test_crop_larger_than_image_pads_with_ignore():
    rgb, label = scene(10, 12)
    out_rgb, out_label = ingest.random_crop(rgb, label, np.random.default_rng(0), (16, 20))
    assert out_label.shape == (16, 20)
    assert (out_label[10:, :] == IGNORE_INDEX).all() and (out_label[:, 12:] == IGNORE_INDEX).all()
    assert (out_rgb[10:, :] == 0).all()


def test_identity_augment_keeps_pixels_aligned():
    rgb, label = scene()
    out_rgb, out_label = ingest.augment(rgb, label, np.random.default_rng(0), crop=label.shape,
                                        scale_range=(1.0, 1.0), flip=False, jitter=0.0)
    assert (out_rgb == rgb).all() and (out_label == label).all()


def test_flip_moves_image_and_label_together():
    rgb, label = scene()
    rgb[..., 0] = label  # image channel 0 mirrors the label, so misalignment would show
    for i in range(10):
        out_rgb, out_label = ingest.augment(rgb, label, np.random.default_rng(i), crop=(20, 30),
                                            scale_range=(1.0, 1.0), flip=True, jitter=0.0)
        assert (out_rgb[..., 0] == out_label).all()


def test_sample_rng_depends_on_seed_epoch_key():
    draw = lambda *a: ingest.sample_rng(*a).random()
    assert draw(0, 1, "a") == draw(0, 1, "a")
    assert len({draw(0, 1, "a"), draw(0, 2, "a"), draw(1, 1, "a"), draw(0, 1, "b")}) == 4


def test_to_model_input_normalises():
    images = np.full((2, 4, 5, 3), 255, dtype=np.uint8)
    x = ingest.to_model_input(images)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    expected = [(1 - m) / s for m, s in zip(MEAN, STD)]
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(expected))
