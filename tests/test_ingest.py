"""Training ingest as plain functions: the epoch plan, augmentation, normalisation (no Ray)."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from roadseg_dist.data import augment, ingest
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


def test_sets_mix_by_their_weights_each_epoch():
    a, b = make_index([6, 4]), make_index([4])
    index = ingest.train_sets([("s3://x/bdd", a), ("/data/labelled", b)])
    assert index["shard"].iloc[0] == "s3://x/bdd/train-000000.tar" and set(index["set"]) == {0, 1}
    weights = (0.5, 2.5)
    assert ingest.epoch_size(index, weights) == 5 + 10
    order = ingest.epoch_order(index, seed=1, epoch=1, weights=weights)
    from_a = [k for shard, k in order if shard.startswith("s3://x/bdd/")]
    from_b = [k for shard, k in order if shard.startswith("/data/labelled")]
    assert len(from_a) == len(set(from_a)) == 5  # a random half, each once
    assert len(from_b) == 10 and len(set(from_b)) == 10  # each of b's 4 at least twice, as distinct keys
    assert sorted({k.split(ingest.COPY)[0] for k in from_b}) == sorted(b["key"])
    assert all(sum(k.split(ingest.COPY)[0] == base for k in from_b) >= 2 for base in b["key"])
    again = [k for shard, k in ingest.epoch_order(index, seed=1, epoch=2, weights=weights) if "bdd" in shard]
    assert set(again) != set(from_a)  # another half of a next epoch
    parts = ingest.plan_epoch(index, 2, seed=1, epoch=1, weights=weights)
    assert [sum(len(t.keys) for t in p) for p in parts] == [7, 7]


def test_a_copy_is_read_once_and_augmented_as_its_own_sample(tmp_path):
    import webdataset as wds

    rgb, label = scene(48, 64)
    folder = tmp_path / "shards"
    folder.mkdir()
    (tmp_path / "k1.jpg").write_bytes(cv2.imencode(".jpg", rgb[..., ::-1])[1].tobytes())
    (tmp_path / "k1.png").write_bytes(cv2.imencode(".png", label)[1].tobytes())
    with wds.TarWriter(str(folder / "train-000000.tar")) as tar:
        tar.write({"__key__": "k1", "jpg": (tmp_path / "k1.jpg").read_bytes(), "png": (tmp_path / "k1.png").read_bytes()})
    kw = dict(seed=3, epoch=2, crop=(32, 48), scale_range=(0.5, 1.5), jitter=0.2, rows=8)
    [block] = ingest.read_blocks(str(folder / "train-000000.tar"), ["k1", "k1#copy1"], **kw)
    assert list(block["key"]) == ["k1", "k1#copy1"]
    assert not (block["image"][0] == block["image"][1]).all()  # two samples, two augmentations


def test_val_shards_cover_each_shard_once():
    index = make_index([2, 2, 2, 2, 2])
    parts = [ingest.val_shards_for_rank(index, r, 3) for r in range(3)]
    flat = [s for p in parts for s in p]
    assert sorted(flat) == sorted(index.shard.unique()) and len(flat) == len(set(flat))


def test_epoch_reads_are_the_union_of_the_plan_one_task_per_shard():
    index = make_index([7, 5, 9, 4])
    for world in (1, 2, 3):
        reads = ingest.epoch_reads(index, world, seed=2, epoch=3)
        planned = [k for part in ingest.plan_epoch(index, world, 2, 3) for t in part for k in t.keys]
        assert sorted(k for t in reads for k in t.keys) == sorted(planned)
        assert len({t.shard for t in reads}) == len(reads)
    assert ingest.epoch_reads(index, 2, 2, 3) != ingest.epoch_reads(index, 2, 2, 4)  # a new tail, a new order


def scene(h=40, w=60):
    rgb = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    label = (np.arange(h * w).reshape(h, w) % 19).astype(np.uint8)
    label[0, :] = IGNORE_INDEX
    return rgb, label


def run_augment(rgb, label, rng, crop, **kw):
    """augment on RGB input, as the old function was called (the new one takes decoded BGR)."""
    d = augment.draw(rng, label.shape, crop, **kw)
    return augment.augment(np.ascontiguousarray(rgb[..., ::-1]), label, d)


def test_augment_shapes_and_label_values():
    rgb, label = scene()
    for i in range(20):
        out_rgb, out_label = run_augment(rgb, label, np.random.default_rng(i), (32, 48), scale_range=(0.5, 2.0),
                                         flip=True, jitter=0.3)
        assert out_rgb.shape == (32, 48, 3) and out_rgb.dtype == np.uint8
        assert out_label.shape == (32, 48) and out_label.dtype == np.uint8
        # nearest-neighbour warping and 255 padding: no invented label values
        assert set(np.unique(out_label)) <= set(range(19)) | {IGNORE_INDEX}


def test_crop_larger_than_image_pads_with_ignore():
    rgb, label = scene(10, 12)
    for flip in (False, True):
        d = augment.Draw(scaled=(10, 12), crop=(16, 20), top=0, left=0, flip=flip, factors=None)
        out_rgb, out_label = augment.augment(np.ascontiguousarray(rgb[..., ::-1]), label, d)
        cols = slice(0, 8) if flip else slice(12, None)
        assert (out_label[10:, :] == IGNORE_INDEX).all() and (out_label[:, cols] == IGNORE_INDEX).all()
        assert (out_rgb[10:, :] == 0).all() and (out_rgb[:, cols] == 0).all()
        inside = out_label[:10, 8:] if flip else out_label[:10, :12]
        assert (inside == (label[:, ::-1] if flip else label)).all()


def test_identity_augment_keeps_pixels_aligned():
    rgb, label = scene()
    out_rgb, out_label = run_augment(rgb, label, np.random.default_rng(0), label.shape, scale_range=(1.0, 1.0),
                                     flip=False, jitter=0.0)
    assert (out_rgb == rgb).all() and (out_label == label).all()


def test_flip_moves_image_and_label_together():
    rgb, label = scene()
    rgb[..., 0] = label  # image channel 0 mirrors the label, so misalignment would show
    for i in range(10):
        out_rgb, out_label = run_augment(rgb, label, np.random.default_rng(i), (20, 30), scale_range=(1.0, 1.0),
                                         flip=True, jitter=0.0)
        assert (out_rgb[..., 0] == out_label).all()


def old_augment(rgb, label, d: augment.Draw):
    """The float path the warp replaced: resize the whole image, pad, crop, flip, jitter in float32."""
    if d.scaled != label.shape:
        size = (d.scaled[1], d.scaled[0])
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    (ch, cw), (h, w) = d.crop, label.shape
    rgb = np.pad(rgb, ((0, max(ch - h, 0)), (0, max(cw - w, 0)), (0, 0)))
    label = np.pad(label, ((0, max(ch - h, 0)), (0, max(cw - w, 0))), constant_values=IGNORE_INDEX)
    rgb, label = rgb[d.top:d.top + ch, d.left:d.left + cw], label[d.top:d.top + ch, d.left:d.left + cw]
    if d.flip:
        rgb, label = rgb[:, ::-1], label[:, ::-1]
    b, c, s = d.factors
    x = rgb.astype(np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    gray = x.mean(axis=2, keepdims=True)
    return np.clip((x - gray) * s + gray, 0, 255), label


def test_one_warp_and_one_colour_transform_match_the_old_float_path():
    """Same draws, same image within a grey level; labels now sit on their pixels (the warp samples
    both at pixel centres, where cv2.resize's nearest sampled labels at pixel corners)."""
    yy, xx = np.mgrid[0:90, 0:160]
    smooth = np.stack([xx * 1.5, yy * 2.5, (xx + yy) * 0.9], axis=2).astype(np.uint8)
    label = ((xx // 20 + yy // 15) % 19).astype(np.uint8)
    blocks = np.repeat((label * 12)[..., None], 3, axis=2).astype(np.uint8)  # the image shows the label
    for i in range(8):
        d = augment.draw(np.random.default_rng(i), label.shape, (64, 96), (0.5, 2.0), True, 0.3)
        new_rgb, _ = augment.augment(np.ascontiguousarray(smooth[..., ::-1]), label, d)
        assert np.abs(new_rgb.astype(np.float32) - old_augment(smooth, label, d)[0]).mean() < 1.0
        plain = dataclasses.replace(d, factors=None)
        new_rgb, new_label = augment.augment(blocks, label, plain)
        old_rgb, old_label = old_augment(blocks, label, dataclasses.replace(d, factors=(1.0, 1.0, 1.0)))
        on_pixels = lambda rgb, lab: (np.abs(rgb[..., 0].astype(int) - lab.astype(int) * 12) <= 6)[lab != 255].mean()
        assert on_pixels(new_rgb, new_label) > 0.995
        assert on_pixels(new_rgb, new_label) >= on_pixels(old_rgb, old_label)


def test_decode_augment_blocks_are_the_same_wherever_and_however_grouped():
    rgb, label = scene(48, 64)
    jpg = cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()  # lossless, so decodes are identical
    png = cv2.imencode(".png", label)[1].tobytes()
    samples = [(f"k{i}", jpg, png) for i in range(5)]
    kw = dict(seed=3, epoch=2, crop=(32, 48), scale_range=(0.5, 1.5), jitter=0.2)
    blocks = list(augment.decode_augment(samples, rows=2, **kw))
    assert [len(b["key"]) for b in blocks] == [2, 2, 1]
    assert blocks[0]["image"].shape == (2, 32, 48, 3) and blocks[2]["label"].shape == (1, 32, 48)
    [one] = augment.decode_augment(samples[::-1], rows=8, **kw)
    for b in blocks:
        for key, image, lab in zip(b["key"], b["image"], b["label"]):
            j = list(one["key"]).index(key)
            assert (one["image"][j] == image).all() and (one["label"][j] == lab).all()
    assert not (blocks[0]["image"][0] == blocks[0]["image"][1]).all()  # per-key randomness


def test_sample_rng_depends_on_seed_epoch_key():
    draw = lambda *a: augment.sample_rng(*a).random()
    assert draw(0, 1, "a") == draw(0, 1, "a")
    assert len({draw(0, 1, "a"), draw(0, 2, "a"), draw(1, 1, "a"), draw(0, 1, "b")}) == 4


def test_to_model_input_normalises():
    images = np.full((2, 4, 5, 3), 255, dtype=np.uint8)
    x = ingest.to_model_input(images)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    expected = [(1 - m) / s for m, s in zip(MEAN, STD)]
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(expected))


def test_feed_defaults_leave_room_for_both_on_two_cores_and_feed_gpus():
    # 2 cores, 2 CPU workers of 0.5 (auto): 0.5 CPU of decode each, one task of 1 CPU, two batches ahead
    assert ingest.worker_share(2, 2, gpu=False) == 0.5
    feed = ingest.size_feed(2, 2, 0.5, gpu=False)
    assert (feed.ingest_cpus, feed.task_cpus, feed.prefetch_batches, feed.pin_memory) == (0.5, 1.0, 2, False)
    assert 2 * 0.5 + 2 * feed.ingest_cpus <= 2
    # a node of 8 GPUs and 96 CPUs: 2 CPUs per GPU worker, the other 80 decode (10 per GPU)
    share = ingest.worker_share(96, 8, gpu=True)
    assert share == pytest.approx(1 - 16 / 96)
    feed = ingest.size_feed(96, 8, 2.0, gpu=True)
    assert (feed.ingest_cpus, feed.task_cpus, feed.prefetch_batches, feed.pin_memory) == (10.0, 1.0, 4, True)
    # prefetch bounded by memory; explicit values win
    assert ingest.size_feed(96, 8, 2.0, gpu=True, batch_bytes=300 * 2**20).prefetch_batches == 1
    feed = ingest.size_feed(8, 1, 2.0, gpu=True, ingest_cpus=0.25, prefetch=6)
    assert (feed.ingest_cpus, feed.task_cpus, feed.prefetch_batches) == (0.25, 0.25, 6)


def test_batch_keys_survive_the_tensor_collate():
    from roadseg_dist.data import feed

    batch = {"key": np.array(["a", "0a0b-ü", "xyz"]), "image": np.zeros((3, 2, 2, 3), np.uint8),
             "label": np.zeros((3, 2, 2), np.uint8)}
    out = feed.Tensors()(batch)
    assert feed.batch_keys(out) == ["a", "0a0b-ü", "xyz"]
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 2, 2, 3)
