"""Sharding BDD100K into WebDataset tars: planning, validation, the Ray job against real S3, faults."""
from __future__ import annotations

import os
import shutil
import sys
import tarfile

import cv2
import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner

from roadseg_dist import labels, storage
from roadseg_dist.cli import main
from roadseg_dist.data import bdd100k, shard_writer, shards, synth
from roadseg_dist.shard import job as shard_job
from roadseg_dist.data.bdd100k import DatasetError, Sample
from faulty_s3_proxy import FaultyProxy


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("bdd") / "root")
    synth.generate(root, train=10, val=3, height=40, width=64, videos=0, seed=1)
    return root


def shard_urls(data_url, split):
    """The split's shard files, in index order."""
    return [storage.join(data_url, name) for name in shards.read_index(data_url, split)["shard"].unique()]


def copy_root(small_root, tmp_path) -> str:
    root = str(tmp_path / "root")
    shutil.copytree(small_root, root)
    return root


def source_files(root, split):
    """key -> (jpg bytes, mask png bytes) straight from the BDD100K layout."""
    out = {}
    for url in storage.list_files(bdd100k.image_dir(root, split)):
        key = url.rsplit("/", 1)[-1][:-4]
        out[key] = (storage.read_bytes(url), storage.read_bytes(f"{bdd100k.label_dir(root, split)}/{key}.png"))
    return out


# --- pure logic, no Ray ---------------------------------------------------------------------------

def fake(key, nbytes):
    return Sample(key, f"/i/{key}.jpg", f"/l/{key}.png", "mask", nbytes)


def test_plan_shards_by_count_and_by_bytes():
    samples = [fake(f"k{i}", 100) for i in range(10)]
    assert [len(g) for g in shard_writer.plan_shards(samples, 4)] == [4, 4, 2]
    assert [len(g) for g in shard_writer.plan_shards(samples, 4, shard_bytes=250)] == [2, 2, 2, 2, 2]
    assert [len(g) for g in shard_writer.plan_shards(samples, 4, shard_bytes=50)] == [1] * 10  # never empty
    assert [s.key for g in shard_writer.plan_shards(samples, 3) for s in g] == [s.key for s in samples]


def test_parse_bytes():
    from roadseg_dist.shard.settings import parse_bytes

    assert parse_bytes("256MB") == 256_000_000
    assert parse_bytes("1GiB") == 2 ** 30
    assert parse_bytes("5e8") == 500_000_000 and parse_bytes(1234) == 1234
    with pytest.raises(Exception, match="not a size"):
        parse_bytes("lots")


def test_build_shard_is_deterministic_plain_tar_and_skips_itself(small_root, tmp_path):
    samples = bdd100k.find_samples(small_root, "train")[:4]
    url, staged = str(tmp_path / "out" / "train-000000.tar"), str(tmp_path / "staging" / "train-000000.tar")
    first = shard_writer.build_shard(url, samples, staged)
    assert first["changed"] and first["problems"] == [] and [r["key"] for r in first["rows"]] == [s.key for s in samples]
    assert not os.path.exists(url)  # staged only: the job publishes once every shard is good
    storage.move(staged, url)
    stat = os.stat(url)
    again = shard_writer.build_shard(url, samples, staged)
    assert not again["changed"] and not os.path.exists(staged) and again["rows"] == first["rows"]
    assert os.stat(url).st_mtime_ns == stat.st_mtime_ns
    # a plain tar reader sees <key>.jpg, <key>.png pairs with the source bytes
    src = source_files(small_root, "train")
    with tarfile.open(url) as tar:
        names = tar.getnames()
        assert names == [f"{s.key}.{ext}" for s in samples for ext in ("jpg", "png")]
        for s in samples:
            assert tar.extractfile(f"{s.key}.jpg").read() == src[s.key][0]
            assert tar.extractfile(f"{s.key}.png").read() == src[s.key][1]
    # a changed shard is staged again, the published one left alone
    changed = shard_writer.build_shard(url, samples[:3], staged)
    assert changed["changed"] and os.path.exists(staged) and os.stat(url).st_mtime_ns == stat.st_mtime_ns


def test_find_samples_names_unpaired_files(small_root, tmp_path):
    root = copy_root(small_root, tmp_path)
    keys = [s.key for s in bdd100k.find_samples(root, "train")]
    os.remove(f"{root}/labels/sem_seg/masks/train/{keys[0]}.png")
    os.remove(f"{root}/images/10k/train/{keys[1]}.jpg")
    with pytest.raises(DatasetError) as err:
        bdd100k.find_samples(root, "train")
    text = str(err.value)
    assert f"images/10k/train/{keys[0]}.jpg: image has no label" in text
    assert f"labels/sem_seg/masks/train/{keys[1]}.png: label has no image" in text
    with pytest.raises(DatasetError, match="is .* a BDD100K root"):
        bdd100k.find_samples(str(tmp_path / "nothing"), "train")


@pytest.mark.parametrize("damage, message", [
    ("size", "label is 20x32 but its image"),
    ("values", "label values 19, 77 are outside the train ids 0-18 and 255"),
    ("bad_jpg", "not a readable image"),
    ("bad_png", "not a readable PNG"),
    ("rgb_mask", "single-channel 8-bit PNG"),
])
def test_load_sample_rejects_bad_files_by_name(small_root, tmp_path, damage, message):
    root = copy_root(small_root, tmp_path)
    sample = bdd100k.find_samples(root, "train")[2]
    damage_sample(sample, damage)
    with pytest.raises(ValueError, match=message) as err:
        shard_writer.load_sample(sample)
    assert sample.key in str(err.value)


def damage_sample(sample: Sample, damage: str) -> None:
    mask = cv2.imread(sample.label, cv2.IMREAD_UNCHANGED)
    if damage == "size":
        cv2.imwrite(sample.label, cv2.resize(mask, (32, 20), interpolation=cv2.INTER_NEAREST))
    elif damage == "values":
        mask[0, 0], mask[1, 1] = 19, 77
        cv2.imwrite(sample.label, mask)
    elif damage == "bad_jpg":
        open(sample.image, "wb").write(b"this is not a jpeg")
    elif damage == "bad_png":
        open(sample.label, "wb").write(open(sample.label, "rb").read()[:10])
    elif damage == "rgb_mask":
        cv2.imwrite(sample.label, np.dstack([mask] * 3))


def test_colormap_only_split_becomes_train_ids(small_root, tmp_path):
    root = copy_root(small_root, tmp_path)
    shutil.rmtree(f"{root}/labels/sem_seg/masks")
    samples = bdd100k.find_samples(root, "val")
    assert {s.label_kind for s in samples} == {"colormap"}
    _, png, row = shard_writer.load_sample(samples[0])
    original = cv2.imread(f"{small_root}/labels/sem_seg/masks/val/{samples[0].key}.png", cv2.IMREAD_UNCHANGED)
    assert np.array_equal(bdd100k.decode_mask(png, "converted"), original)
    assert row["class_pixels"] == bdd100k.class_pixels(original).tolist()


def test_split_stats_weights_rare_classes_up():
    import pandas as pd

    counts = [0] * labels.NUM_CLASSES
    counts[0], counts[10], counts[11] = 9000, 900, 100
    index = pd.DataFrame({"key": ["a"], "shard": ["train-000000.tar"], "class_pixels": [counts]})
    stats = shard_writer.split_stats("train", index, 1234)
    w = dict(zip(labels.CLASSES, stats["class_weights"]))
    assert len(stats["class_weights"]) == len(stats["class_frequency"]) == labels.NUM_CLASSES
    assert stats["labelled_pixels"] == 10000 and stats["class_frequency"][0] == 0.9
    assert w["person"] > w["sky"] > w["road"] > 0 and w["bus"] == 0.0
    assert abs((w["road"] + w["sky"] + w["person"]) / 3 - 1) < 1e-5


# --- the Ray job ----------------------------------------------------------------------------------

def read_with_webdataset(urls):
    # webdataset streams each shard from S3 through a pipe, as users do with `aws s3 cp - `
    cmd = f"{sys.executable} -c \"import sys; from roadseg_dist import storage; " \
          f"sys.stdout.buffer.write(storage.read_bytes(sys.argv[1]))\""
    ds = wds.WebDataset([f"pipe:{cmd} {u}" for u in urls], shardshuffle=False, empty_check=False)
    return [(s["__key__"], s["jpg"], s["png"]) for s in ds]


@pytest.mark.slow
def test_shard_to_s3_and_read_back_with_webdataset(small_root, s3_bucket, ray_local):
    dest = s3_bucket + "/shards"
    summary = shard_job.run(shard_job.ShardSettings(root=small_root, dest=dest, split="train", shard_size=4,
                                                    verify=True))
    assert (summary["samples"], summary["shards"], summary["written"], summary["verified_samples"]) == (10, 3, 3, 10)
    urls = shard_urls(dest, "train")
    assert [u.rsplit("/", 1)[-1] for u in urls] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    got = read_with_webdataset(urls)
    src = source_files(small_root, "train")
    keys = [k for k, _, _ in got]
    assert sorted(keys) == sorted(src) and len(set(keys)) == len(keys)  # every key exactly once
    for key, jpg, png in got:
        assert (jpg, png) == src[key], key
    index = shards.read_index(dest, "train")
    assert index["key"].tolist() == keys and index["shard"].tolist() == ["train-000000.tar"] * 4 + \
        ["train-000001.tar"] * 4 + ["train-000002.tar"] * 2
    for row in index.itertuples():
        jpg, png = src[row.key]
        mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        assert row.bytes == len(jpg) + len(png) and (row.height, row.width) == (40, 64)
        assert list(row.class_pixels) == np.bincount(mask.ravel(), minlength=256)[:19].tolist()
        assert row.labelled_pixels == (mask != 255).sum()
    stats = shards.read_stats(dest, "train")
    assert stats["samples"] == 10 and stats["shards"] == 3
    assert stats["class_pixels"] == np.sum(np.stack(index["class_pixels"].map(list)), 0).tolist()
    rgb, lab = shards.decode_sample(*got[0][1:])
    assert rgb.shape == (40, 64, 3) and lab.shape == (40, 64)


@pytest.mark.slow
def test_faulty_s3_still_gives_identical_shards_and_a_rerun_writes_nothing(
        small_root, s3_server, s3_bucket, ray_local, tmp_path, monkeypatch):
    clean = str(tmp_path / "clean")
    shard_job.run(shard_job.ShardSettings(root=small_root, dest=clean, split="train", shard_size=3))
    root, dest = s3_bucket + "/bdd", s3_bucket + "/shards"
    s3_server.upload_tree(small_root, root)
    with FaultyProxy(s3_server.endpoint, every=5) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        first = shard_job.run(shard_job.ShardSettings(root=root, dest=dest, split="train", shard_size=3))
        assert first["written"] == 4
        assert proxy.faults["slowdown"] >= 2 and proxy.faults["cut-before"] + proxy.faults["cut-during"] >= 2
        writes = proxy.writes()
        again = shard_job.run(shard_job.ShardSettings(root=root, dest=dest, split="train", shard_size=3))
        assert (again["written"], again["skipped"]) == (0, 4)
        assert proxy.writes() == writes  # the re-run put and deleted nothing
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    for name in [f"train-00000{i}.tar" for i in range(4)] + ["train-index.parquet", "train-stats.json"]:
        assert storage.read_bytes(f"{dest}/{name}") == open(f"{clean}/{name}", "rb").read(), name


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["no_label", "no_image", "size", "values", "bad_jpg"])
def test_cli_refuses_bad_input_and_writes_no_index(small_root, tmp_path, ray_local, damage):
    root = copy_root(small_root, tmp_path)
    sample = bdd100k.find_samples(root, "train")[5]
    if damage == "no_label":
        os.remove(sample.label)
    elif damage == "no_image":
        os.remove(sample.image)
    else:
        damage_sample(sample, damage)
    dest = str(tmp_path / "shards")
    result = CliRunner().invoke(main, ["shard", root, dest, "--split", "train", "--shard-size", "4"])
    assert result.exit_code != 0
    named = sample.label if damage in ("no_image", "size", "values") else sample.image
    assert named in result.output, result.output
    assert not os.path.exists(f"{dest}/train-index.parquet")


def test_a_rerun_with_a_bad_sample_leaves_the_dataset_as_it_was(small_root, tmp_path, ray_local):
    """A re-run once withdrew the index and replaced a shard before it knew of the bad samples in
    others: it exited 1 and the dataset could no longer be trained on. Validate, then publish."""
    root, dest = copy_root(small_root, tmp_path), str(tmp_path / "shards")
    args = ["shard", root, dest, "--split", "train", "--shard-size", "4"]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = {p: open(os.path.join(dest, p), "rb").read() for p in sorted(os.listdir(dest))}
    samples = bdd100k.find_samples(root, "train")
    first, last = samples[0], samples[9]           # in shards 0 and 2
    damage_sample(first, "values")
    damage_sample(last, "bad_jpg")
    # shard 1 changes for good: its new bytes would replace the published ones
    img = cv2.imread(samples[5].image)
    cv2.imwrite(samples[5].image, 255 - img)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert {p: open(os.path.join(dest, p), "rb").read() for p in sorted(os.listdir(dest))} == before
    assert len(shards.read_index(dest, "train")) == 10  # still a dataset to train on
    assert first.label in result.output and last.image in result.output
    assert f"nothing under {dest} was changed" in result.output


@pytest.mark.slow
def test_cli_synth_shard_verify_then_rerun_rewrites_nothing(tmp_path, ray_local):
    root, dest = str(tmp_path / "bdd"), str(tmp_path / "shards")
    runner = CliRunner()
    result = runner.invoke(main, ["synth", root, "--train", "5", "--val", "2", "--height", "40", "--width", "64",
                                  "--videos", "0"])
    assert result.exit_code == 0, result.output
    args = ["shard", root, dest, "--split", "val", "--shard-bytes", "1", "--verify"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 samples in 2 shard(s)" in result.output and "verified 2 shard(s)" in result.output
    before = {p: os.stat(f"{dest}/{p}").st_mtime_ns for p in os.listdir(dest)}
    assert sorted(before) == ["val-000000.tar", "val-000001.tar", "val-index.parquet", "val-stats.json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0 and "0 written, 2 already complete" in result.output, result.output
    assert {p: os.stat(f"{dest}/{p}").st_mtime_ns for p in os.listdir(dest)} == before
    # re-sharding into fewer shards drops the stale one
    result = runner.invoke(main, ["shard", root, dest, "--split", "val", "--shard-size", "8"])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(dest)) == ["val-000000.tar", "val-index.parquet", "val-stats.json"]


def test_verify_reports_a_tampered_shard(synthetic_data, tmp_path):
    dest = str(tmp_path / "copy")
    shutil.copytree(synthetic_data.shards, dest)
    assert shard_job.verify(dest, "val")["verified_samples"] == 8
    # swap one sample's label for another's: same keys, different class counts
    url = shard_urls(dest, "val")[0]
    samples = list(shards.iter_shard(url))
    with open(url, "wb") as f, shard_writer.tar_writer(f) as tar:
        for i, (key, jpg, png) in enumerate(samples):
            tar.write({"__key__": key, "jpg": jpg, "png": samples[1][2] if i == 0 else png})
    with pytest.raises(DatasetError, match=f"sample {samples[0][0]}"):
        shard_job.verify(dest, "val")


def test_synthetic_data_fixture_is_sharded(synthetic_data):
    assert len(shard_urls(synthetic_data.shards, "train")) == 3
    assert len(shard_urls(synthetic_data.shards, "val")) == 1
    assert shards.read_stats(synthetic_data.shards, "train")["samples"] == 24
    assert len(storage.list_files(synthetic_data.root + "/videos", (".mp4",))) == 1


def test_tar_writer_gives_the_fixed_header_gnu_tar_of_earlier_releases(tmp_path):
    # shards written before webdataset wrote them were plain GNU tars with fixed headers; a re-run
    # must see the same bytes, or it would republish every shard of every existing dataset
    import io

    members = [("a.jpg", b"\xff\xd8jpeg"), ("a.png", b"\x89PNGa"), ("b.jpg", b"\xff\xd8j2"), ("b.png", b"\x89PNGb")]
    old = io.BytesIO()
    with tarfile.open(fileobj=old, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = \
                len(data), 0, 0o644, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data))
    new = io.BytesIO()
    with shard_writer.tar_writer(new) as tar:
        for key in ("a", "b"):
            tar.write({"__key__": key, "jpg": dict(members)[f"{key}.jpg"], "png": dict(members)[f"{key}.png"]})
    assert new.getvalue() == old.getvalue()


def test_iter_shard_reads_webdataset_samples_and_names_a_missing_member(tmp_path):
    url = str(tmp_path / "train-000000.tar")
    with open(url, "wb") as f, shard_writer.tar_writer(f) as tar:
        tar.write({"__key__": "a", "jpg": b"J1", "png": b"P1"})
        tar.write({"__key__": "b", "jpg": b"J2"})
    got = shards.iter_shard(url)
    assert next(got) == ("a", b"J1", b"P1")
    with pytest.raises(ValueError, match="sample 'b' lacks its png member"):
        next(got)
    assert list(shards.read_samples(url, ["a"])) == [("a", b"J1", b"P1")]  # stops before the broken one
    whole = str(tmp_path / "train-000001.tar")
    with open(whole, "wb") as f, shard_writer.tar_writer(f) as tar:
        tar.write({"__key__": "a", "jpg": b"J1", "png": b"P1"})
    with pytest.raises(ValueError, match="lacks 1 sample.*'c'.*re-run `roadseg shard`"):
        list(shards.read_samples(whole, ["a", "c"]))


def test_a_truncated_shard_is_a_dataset_error_naming_it_and_the_fix(tmp_path):
    """A shard cut short once surfaced as a bare tarfile.ReadError, the shard not named."""
    import pickle

    url = str(tmp_path / "val-000003.tar")
    with open(url, "wb") as f, shard_writer.tar_writer(f) as tar:
        tar.write({"__key__": "a", "jpg": b"J" * 3000, "png": b"P" * 3000})
    data = open(url, "rb").read()
    open(url, "wb").write(data[:2000])
    with pytest.raises(DatasetError) as err:
        list(shards.iter_shard(url))
    text = str(err.value)
    assert text == (f"shard {url} is damaged (unexpected end of data: cut short, or not a tar written by "
                    f"`roadseg shard`); re-run `roadseg shard ROOT {tmp_path} --split val` to rewrite it")
    assert str(pickle.loads(pickle.dumps(err.value))) == text  # as it comes back from a Ray task
    assert shards.check_shard(url, [{"key": "a"}]) == [text]   # --verify says the same
