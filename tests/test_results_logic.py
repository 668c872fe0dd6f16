"""issue 12 without Ray: the thumbnail chooser, the timeline, `roadseg frames` against pandas, the
results pages' links, local and on the loopback S3 server.

The run OUTPUT here is made by hand in the documented layout (report.json, frames/ parts,
<id>/overlay/NNNNNN.jpg; an older run's frames.parquet too); tests/test_results_page.py opens pages of a
real `roadseg infer` run in Chromium.
"""
from __future__ import annotations

import json
import os
import re
import time

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from roadseg_dist import labels, storage
from roadseg_dist.cli import main
from roadseg_dist.results import moments, query, timeline

# --- the thumbnail chooser -----------------------------------------------------------------------


def steps(n: int, changes: dict[int, int], classes: int = 4) -> np.ndarray:
    """n frames of one-hot class mixes; at frame f the scene switches to class changes[f]."""
    x, current = np.zeros((n, classes)), 0
    for i in range(n):
        current = changes.get(i, current)
        x[i, current] = 1.0
    return x


def test_change_moments_finds_the_switches_biggest_first():
    x = steps(100, {30: 1, 70: 2})
    x[50:, 3] += 0.1  # a small shift: found only when asked for a third moment
    assert moments.change_moments(x, 2, window=5) == [30, 70]
    assert moments.change_moments(x, 3, window=5) == [30, 50, 70]


def test_change_moments_keeps_a_gap_and_never_picks_a_still_scene():
    x = steps(100, {40: 1, 42: 2})  # two switches close together count as one moment
    picked = moments.change_moments(x, 3, window=5)
    assert len(picked) == 1 and 38 <= picked[0] <= 44
    assert moments.change_moments(np.ones((50, 3)) / 3, 4) == []
    assert moments.change_moments(np.ones((1, 3)), 4) == []


def test_strip_starts_with_the_first_frame_and_fills_a_still_scene_evenly():
    assert moments.strip_frames(steps(100, {60: 1}), 3)[:2] == [0, 60]
    still = moments.strip_frames(np.ones((100, 3)) / 3, 5)
    assert still[0] == 0 and len(still) == 5 and still == sorted(still)
    assert moments.strip_frames(np.ones((3, 3)), 6) == [0, 1, 2]


# --- the timeline --------------------------------------------------------------------------------


def test_least_confident_spreads_its_picks_and_never_picks_an_unknown_frame():
    c = np.array([0.9, 0.2, 0.21, 0.22, 0.9, 0.9, 0.5, np.nan, 0.9, 0.3])
    assert moments.least_confident(c, 1) == [1]
    assert moments.least_confident(c, 3, gap=1) == [1, 2, 3]  # no spacing asked: the three lowest
    assert moments.least_confident(c, 3, gap=3) == [1, 6, 9]  # 2 and 3 are too close to 1
    assert moments.least_confident(np.full(4, np.nan), 2) == []  # --no-confidence runs: nothing to show
    assert moments.least_confident(c, 0) == [] and moments.least_confident(np.array([]), 3) == []
    assert 7 not in moments.least_confident(c, 10, gap=1)


def test_driving_fractions_sum_traffic_light_and_sign():
    got = timeline.driving_fractions(np.tile(0.01 * np.arange(1, labels.NUM_CLASSES + 1), (4, 1)))
    assert got.shape == (4, len(timeline.TIMELINE_CLASSES))
    light, sign = labels.CLASS_ID["traffic light"], labels.CLASS_ID["traffic sign"]
    assert got[0, -1] == pytest.approx(0.01 * (light + 1) + 0.01 * (sign + 1))
    assert got[0, 0] == pytest.approx(0.01)  # road


def test_bucket_means_average_long_videos_down():
    v = np.arange(1000, dtype=float)[:, None]
    b = timeline.bucket_means(v, 10)
    assert b.shape == (10, 1) and b[0, 0] == pytest.approx(49.5) and b[-1, 0] == pytest.approx(949.5)
    assert timeline.bucket_means(v[:5], 10).shape == (5, 1)


def test_svg_has_a_strip_per_class_and_a_mark_per_thumbnail():
    ts = np.arange(50) / 10
    out = timeline.svg(ts, np.random.default_rng(0).random((50, len(timeline.TIMELINE_CLASSES))) / 10, [1.0, 2.5])
    assert out.startswith("<svg") and out.endswith("</svg>")
    assert out.count("<polygon") == len(timeline.TIMELINE_CLASSES)
    assert out.count("<line") == 2 and "traffic light/sign" in out
    assert 'fill="#804080"' in out  # road, in the official palette


# --- a hand-made run OUTPUT ----------------------------------------------------------------------

VIDEOS = {"clips/a": 24, "clips/b_mp4": 16, "c": 8}


def make_table(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for video, n in VIDEOS.items():
        for i in range(n):
            mix = rng.dirichlet(np.full(labels.NUM_CLASSES, 0.3))
            rows.append({"video": video, "frame": 2 * i, "timestamp": 2 * i / 10,
                         **{c: np.float32(mix[k]) for k, c in enumerate(labels.CLASSES)}})
    return pd.DataFrame(rows)


def make_output(url: str, seed: int = 0, legacy: bool = False) -> pd.DataFrame:
    """report.json, the stats (two frames/ parts in the infer schema; ``legacy``: one frames.parquet with
    the class names as they were) and an overlay JPEG per frame under ``url``."""
    from roadseg_dist.infer import stats

    df = make_table(seed)
    classes = labels.CLASSES if legacy else stats.CLASS_COLUMNS
    cols = {"video": pa.array(df["video"], pa.string()), "frame": pa.array(df["frame"], pa.int64()),
            "timestamp": pa.array(df["timestamp"], pa.float64()),
            **{n: pa.array(df[c], pa.float32()) for n, c in zip(classes, labels.CLASSES)}}
    if not legacy:
        cols.update({k: pa.array([f"{v}/{k}/{f:06d}.{'png' if k == 'mask' else 'jpg'}"
                                  for v, f in zip(df["video"], df["frame"])]) for k in stats.PATH_KINDS})
        cols["model"] = pa.array(["unet@epoch3:abc"] * len(df))
    table = pa.table(cols)
    halves = {"frames.parquet": table} if legacy else {
        "frames/part-1.parquet": table.filter(pa.compute.not_equal(table["video"], "clips/b_mp4")),
        "frames/part-2.parquet": table.filter(pa.compute.equal(table["video"], "clips/b_mp4"))}
    for name, part in halves.items():
        with storage.atomic_output(storage.join(url, name), suffix=".parquet") as tmp:
            pq.write_table(part, tmp)
    for video, frame in zip(df["video"], df["frame"]):
        img = np.full((36, 64, 3), (frame * 10) % 255, np.uint8)
        storage.write_bytes(storage.join(url, video, f"overlay/{frame:06d}.jpg"), cv2.imencode(".jpg", img)[1].tobytes())
    report = {"sources": 4, "videos_done": 3, "videos_failed": 1, "frames_total": len(df), "frames_this_run": len(df),
              "seconds": 2.0, "frames_per_second": len(df) / 2.0, "precision": "bf16", "checkpoint": "/nonexistent/ckpt",
              "input": "/in", "output": url, "finished_at": "2026-01-01T00:00:00Z",
              "settings": {"outputs": ["mask", "color", "overlay", "video", "stats"]},
              "failures": [{"id": "bad", "input": "/in/bad.mp4", "reason": "not a readable <video>"}]}
    storage.write_text(storage.join(url, "report.json"), json.dumps(report))
    return df


def frames_cli(*args: str):
    return CliRunner().invoke(main, ["frames", *args], catch_exceptions=False)


# --- roadseg frames ------------------------------------------------------------------------------


def check_search(out: str, df: pd.DataFrame) -> None:
    rows = query.search(out, "person > 0.02 and road > 0.05", "person desc", limit=7)
    want = df[(df["person"] > np.float32(0.02)) & (df["road"] > np.float32(0.05))]
    want = want.sort_values(["person", "video", "frame"], ascending=[False, True, True]).head(7)
    assert [(r["video"], r["frame"]) for r in rows] == list(zip(want["video"], want["frame"]))
    assert [r["person"] for r in rows] == pytest.approx(list(want["person"]), rel=1e-6)

    rows = query.search(out, "traffic_light + traffic_sign > 0.1 and video like 'clips/%'", "timestamp", limit=1000)
    mask = (df["traffic light"] + df["traffic sign"] > 0.1) & df["video"].str.startswith("clips/")
    want = df[mask].sort_values(["timestamp", "video", "frame"])
    assert [(r["video"], r["frame"]) for r in rows] == list(zip(want["video"], want["frame"]))
    assert {"video", "frame", "timestamp", *(query.alias(c) for c in labels.CLASSES)} <= set(rows[0])


def test_frames_search_matches_pandas_locally(tmp_path):
    out = str(tmp_path / "out")
    check_search(out, make_output(out))
    check_search(str(tmp_path / "old"), make_output(str(tmp_path / "old"), legacy=True))  # an older run's layout


def test_frames_search_matches_pandas_on_s3(s3_bucket):
    out = s3_bucket + "/segmented"
    check_search(out, make_output(out))


def test_frames_cli_table_json_and_contact_sheet(s3_bucket):
    out = s3_bucket + "/segmented"
    df = make_output(out)
    res = frames_cli(out, "--where", "rider > 0.05", "--order-by", "rider desc", "--limit", "5")
    lines = res.output.splitlines()
    assert res.exit_code == 0 and lines[0].split() == ["video", "frame", "time", "s", "rider"]
    assert len(lines) == 1 + 5 + 1 and "5 frame(s)" in lines[-1]

    res = frames_cli(out, "--where", "rider > 0.05", "--limit", "1000", "--json")
    got = json.loads(res.output)
    assert len(got) == int((df["rider"] > np.float32(0.05)).sum())

    sheet = s3_bucket + "/sheets/riders.png"
    res = frames_cli(out, "--where", "rider > 0.05", "--limit", "7", "--sheet", sheet, "--sheet-columns", "3")
    assert res.exit_code == 0, res.output
    img = cv2.imdecode(np.frombuffer(storage.read_bytes(sheet), np.uint8), cv2.IMREAD_COLOR)
    tile_h = 180 + 22  # 64x36 overlays scaled to 320 wide, plus the caption bar
    assert img.shape == (3 * tile_h, 3 * 320, 3)
    assert img[tile_h * 2 + 5, 320 + 5].tolist() == [255, 255, 255]  # 7 tiles: the 8th cell is empty


def test_frames_bad_expression_exits_2_listing_the_columns(tmp_path):
    out = str(tmp_path / "out")
    make_output(out)
    for where in ("pedestrian > 0.1", "traffic light > 0.1", "person >", "1=1) union select 1 --"):
        res = frames_cli(out, "--where", where)
        assert res.exit_code == 2, (where, res.output)
        assert "columns: video, frame, timestamp, road" in res.output and "traffic_light" in res.output
    res = frames_cli(out, "--order-by", "nonsense desc")
    assert res.exit_code == 2 and "nonsense" in res.output
    res = frames_cli(str(tmp_path / "nothing"))
    assert res.exit_code == 1 and "nothing/frames does not exist" in res.output


# --- roadseg view --------------------------------------------------------------------------------


def links(page: str) -> list[str]:
    """Every href/src of a page but inline data: URLs."""
    return [u for u in re.findall(r'(?:href|src)="([^"#]+)"', page) if not u.startswith("data:")]


def test_view_pages_link_only_files_that_exist(tmp_path):
    out = str(tmp_path / "out")
    make_output(out)
    res = CliRunner().invoke(main, ["view", out], catch_exceptions=False)
    assert res.exit_code == 0 and res.output.strip() == f"results page: {out}/index.html"
    index = open(os.path.join(out, "index.html")).read()
    assert "3 done, 1 failed, of 4" in index and "not a readable &lt;video&gt;" in index
    assert "frames/s, model in bf16" in index
    assert "checkpoint meta not readable" in index  # /nonexistent/ckpt: said, not crashed
    assert "http" not in " ".join(links(index))  # nothing from a CDN
    assert "sources.js" in links(index) and 'id="q"' in index  # the search over every source id
    pages = [os.path.join(out, href) for href in links(index) if href.endswith("/index.html")]
    assert sorted(os.path.relpath(p, out) for p in pages) == sorted(f"{v}/index.html" for v in VIDEOS)
    for page in pages:
        html = open(page).read()
        targets = links(html)
        assert "overlay.mp4" in targets and sum(t.startswith("overlay/") for t in targets) == 6
        for t in targets:
            if t != "overlay.mp4":  # this hand-made OUTPUT has no videos
                assert os.path.exists(os.path.normpath(os.path.join(os.path.dirname(page), t))), (page, t)
        assert html.count("<polygon") == len(timeline.TIMELINE_CLASSES)


def test_view_on_s3_serves_pages_as_html(s3_server, s3_bucket):
    out = s3_bucket + "/segmented"
    make_output(out)
    res = CliRunner().invoke(main, ["view", out, "--thumbnails", "3"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    bucket, client = s3_bucket[len("s3://"):], s3_server.client()
    heads = {}
    for key in ("segmented/index.html", "segmented/clips/a/index.html"):
        heads[key] = client.head_object(Bucket=bucket, Key=key)
        assert heads[key]["ContentType"].startswith("text/html")  # a bucket served as a website renders it
    time.sleep(1.1)  # LastModified counts whole seconds
    CliRunner().invoke(main, ["view", out, "--thumbnails", "3"], catch_exceptions=False)
    for key, head in heads.items():  # the same pages again: not rewritten
        assert client.head_object(Bucket=bucket, Key=key)["LastModified"] == head["LastModified"]
    page = storage.read_text(out + "/clips/a/index.html")
    assert sum(t.startswith("overlay/") for t in links(page)) == 3
    # sources in name order (c, clips/a, clips/b_mp4): back to the index, previous and next
    for href in ("../../index.html", "../../c/index.html", "../../clips/b_mp4/index.html"):
        assert f'href="{href}"' in page
