"""Synthetic BDD100K-like data: scenes that look like streets, labels that match them, the real layout."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from roadseg_dist import labels, storage
from roadseg_dist.data import synth

C = labels.CLASS_ID


def scenes(n=6, h=64, w=96, seed=0):
    return [synth.render_scene(np.random.default_rng([seed, i]), h, w) for i in range(n)]


def test_render_scene_is_deterministic_per_seed():
    a_rgb, a_lab = synth.render_scene(np.random.default_rng(7), 72, 128)
    b_rgb, b_lab = synth.render_scene(np.random.default_rng(7), 72, 128)
    c_rgb, _ = synth.render_scene(np.random.default_rng(8), 72, 128)
    assert a_rgb.shape == (72, 128, 3) and a_rgb.dtype == np.uint8
    assert a_lab.shape == (72, 128) and a_lab.dtype == np.uint8
    assert np.array_equal(a_rgb, b_rgb) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_rgb, c_rgb)


def test_scenes_are_laid_out_like_streets():
    for rgb, lab in scenes():
        assert labels.invalid_label_values(lab) == []
        assert (lab != labels.IGNORE_INDEX).all()  # every pixel is drawn, so every pixel is labelled
        h, w = lab.shape
        top, bottom = lab[: h // 8], lab[-h // 8:, w // 3: 2 * w // 3]
        # sky (or tall buildings/trees) up top; road (or a vehicle on it) at the bottom centre
        assert np.isin(top, [C["sky"], C["building"], C["vegetation"], C["pole"], C["traffic light"]]).mean() > 0.9
        assert np.isin(bottom, [C["road"], C["car"], C["truck"], C["rider"], C["bicycle"]]).mean() > 0.9
        assert (bottom == C["road"]).mean() > 0.3
        assert (lab[: h // 4] == C["road"]).sum() == 0  # the road lies below the horizon


def test_scenes_cover_the_street_classes():
    seen = np.zeros(labels.NUM_CLASSES, bool)
    for _, lab in scenes(16, 90, 160):
        seen |= synth_classes(lab)
    wanted = ["road", "sidewalk", "building", "fence", "pole", "traffic light", "traffic sign", "vegetation",
              "terrain", "sky", "person", "rider", "car", "truck", "bicycle"]
    assert [n for n in wanted if not seen[C[n]]] == []


def synth_classes(lab):
    return np.bincount(lab.reshape(-1), minlength=256)[: labels.NUM_CLASSES] > 0


def test_labels_follow_the_drawn_edges():
    """Where the label changes the image changes: edges in the mask are edges in the picture."""
    ratios = []
    for rgb, lab in scenes(6, 90, 160):
        grad = np.abs(np.diff(rgb.astype(np.float32), axis=1)).sum(-1)
        change = lab[:, 1:] != lab[:, :-1]
        ratios.append(grad[change].mean() / grad[~change].mean())
    assert min(ratios) > 2.0, ratios


def test_generate_writes_the_bdd100k_layout(tmp_path):
    root = str(tmp_path / "bdd")
    synth.generate(root, train=3, val=2, height=48, width=80, videos=1, video_frames=6, fps=5, seed=3)
    for split, n in (("train", 3), ("val", 2)):
        images = storage.list_files(f"{root}/images/10k/{split}")
        masks = storage.list_files(f"{root}/labels/sem_seg/masks/{split}")
        colormaps = storage.list_files(f"{root}/labels/sem_seg/colormaps/{split}")
        stems = [u.rsplit("/", 1)[-1][:-4] for u in images]
        assert len(images) == n and all(u.endswith(".jpg") for u in images)
        assert [u.rsplit("/", 1)[-1][:-4] for u in masks] == stems == [u.rsplit("/", 1)[-1][:-4] for u in colormaps]
        for image, mask, colormap in zip(images, masks, colormaps):
            rgb = cv2.imread(image)
            m = cv2.imread(mask, cv2.IMREAD_UNCHANGED)
            cm = cv2.cvtColor(cv2.imread(colormap), cv2.COLOR_BGR2RGB)
            assert rgb.shape == (48, 80, 3) and m.shape == (48, 80) and m.dtype == np.uint8
            assert labels.invalid_label_values(m) == []
            assert np.array_equal(labels.colormap_to_train_ids(cm), m)
    videos = storage.list_files(f"{root}/videos")
    assert len(videos) == 1 and videos[0].endswith(".mp4")
    cap = cv2.VideoCapture(videos[0])
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame.astype(np.float32))
    assert len(frames) == 6 and frames[0].shape == (48, 80, 3)
    # the camera moves: frames change, but far less than from one street to another
    steps = [np.abs(b - a).mean() for a, b in zip(frames, frames[1:])]
    other = cv2.cvtColor(synth.render_scene(np.random.default_rng(99), 48, 80)[0], cv2.COLOR_RGB2BGR)
    assert min(steps) > 0.5 and max(steps) < np.abs(frames[0] - other.astype(np.float32)).mean()


def test_generate_is_deterministic_and_writes_to_s3(tmp_path, s3_bucket):
    local = str(tmp_path / "a")
    remote = s3_bucket + "/bdd100k"
    for root in (local, remote):
        synth.generate(root, train=2, val=1, height=40, width=64, videos=0, seed=11)
    rel = [u[len(local):] for u in storage.list_files(local)]
    assert rel == [u[len(remote):] for u in storage.list_files(remote)]
    for r in rel:
        assert storage.read_bytes(local + r) == storage.read_bytes(remote + r), r


def test_clip_objects_move_and_labels_stay_valid():
    frames = list(synth.render_clip(np.random.default_rng(5), 64, 96, frames=5, fps=10))
    labs = [lab for _, lab in frames]
    assert all(labels.invalid_label_values(lab) == [] for lab in labs)
    assert any(not np.array_equal(a, b) for a, b in zip(labs, labs[1:]))


def test_generate_rejects_tiny_images(tmp_path):
    with pytest.raises(ValueError, match="at least 32"):
        synth.generate(str(tmp_path), height=16, width=16)
