"""issue 12 in a real browser: the results page of a real `roadseg infer` run, opened in headless
Chromium (Debian's `chromium`, installed by tests/setup_system.sh) from local disk and from the
loopback S3 server serving the output prefix as static files.

Run alone: pytest -q tests/test_results_page.py   (ROADSEG_SCREENSHOTS=DIR keeps the screenshots)

test_overlay_videos_play needs overlay.mp4 in H.264 (the archive-scale issue's writer); with the
Motion-JPEG writer it fails and says so, because Chromium cannot play Motion JPEG.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from roadseg_dist import storage
from roadseg_dist.cli import main
from roadseg_dist.data import synth

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
CLIPS = {"clips/day": 13, "clips/night": 9}  # id -> frames, at FPS
FPS = 10.0


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `bash tests/setup_system.sh` (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def segmented(s3_server, ray_local, tmp_path_factory):
    """`roadseg infer` of two clips and a broken file to S3, then `roadseg view`; a local copy too.
    Returns {"file": local index URL, "s3": the index served over HTTP by the S3 server}."""
    import torch

    from roadseg_dist.models.checkpoint import save_checkpoint
    from roadseg_dist.models.zoo import build_model

    base = tmp_path_factory.mktemp("results-page")
    bucket = s3_server.new_bucket("page")
    out = f"s3://{bucket}/segmented"
    torch.manual_seed(0)
    save_checkpoint(str(base / "ckpt"), build_model("unet", base_channels=4), input_size=(32, 48))
    for i, (sid, frames) in enumerate(CLIPS.items()):
        synth.write_video(str(base / "in" / f"{sid}.mp4"), np.random.default_rng(i), 64, 96, frames, FPS)
    (base / "in" / "broken.mp4").write_bytes(b"not a video")
    res = CliRunner().invoke(main, ["infer", str(base / "ckpt"), str(base / "in"), out], catch_exceptions=False)
    assert res.exit_code == 3, res.output  # the broken file fails, the clips do not
    assert f"results page: {out}/index.html" in res.output  # written by infer itself
    res = CliRunner().invoke(main, ["view", out], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    publish(s3_server, bucket, "segmented/")
    fs, path = storage.filesystem(out)
    fs.get(path, str(base / "local"), recursive=True)
    return {"file": f"file://{base / 'local'}/index.html", "s3": f"{s3_server.endpoint}/{bucket}/segmented/index.html",
            "local": str(base / "local")}


def publish(s3_server, bucket: str, prefix: str) -> None:
    """Let anyone GET the objects under ``prefix``: the usual way to serve a prefix as a static site."""
    statement = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                 "Resource": f"arn:aws:s3:::{bucket}/{prefix}*"}
    s3_server.client().put_bucket_policy(
        Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))


def open_page(browser, url: str):
    """A page loaded from ``url`` and the console errors it logs (a list that keeps filling)."""
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} {r.failure}"))
    page.goto(url, wait_until="load")
    return page, errors


def screenshot(page, path: str) -> None:
    """A full-page PNG at ``path``, checked not to be blank (one flat colour)."""
    import cv2

    page.screenshot(path=path, full_page=True)
    img = cv2.imread(path)
    assert img is not None and img.shape[0] > 300
    assert img.std() > 10 and (img.min(axis=2) < 200).mean() > 0.01, f"{path} is blank"
    keep = os.environ.get("ROADSEG_SCREENSHOTS")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(path, os.path.join(keep, os.path.basename(path)))


def source_links(page) -> list[str]:
    return page.eval_on_selector_all("table a[href$='index.html']", "els => els.map(e => e.href)")


@pytest.mark.parametrize("where", ["file", "s3"])
def test_results_page_in_chromium(browser, segmented, where, tmp_path):
    page, errors = open_page(browser, segmented[where])
    assert "2 done, 1 failed, of 3" in page.inner_text("body")
    assert "not a readable video" in page.inner_text("body")  # the broken file's reason
    assert "testing-secret-key" not in page.content()  # the S3 fixture's secret never reaches a page
    links = source_links(page)
    assert [u.rsplit("/", 2)[-2] for u in links] == ["day", "night"]
    screenshot(page, str(tmp_path / f"index-{where}.png"))
    for url, (sid, frames) in zip(links, CLIPS.items()):
        page.goto(url, wait_until="load")
        shown = "els => els.map(e => [e.complete, e.naturalWidth])"
        images = page.eval_on_selector_all(".strip:not(.unsure) img", shown)
        assert len(images) == min(6, frames) and all(done and w > 0 for done, w in images), images
        unsure = page.eval_on_selector_all(".strip.unsure img", shown)  # the least confident frames
        assert 0 < len(unsure) <= 6 and all(done and w > 0 for done, w in unsure), unsure
        box = page.locator("svg.timeline").bounding_box()
        assert box and box["width"] > 500 and box["height"] > 200
        assert page.locator("svg.timeline polygon").count() == 11  # 10 classes + how unsure the model was
        assert "model unsure" in page.locator("svg.timeline").text_content()
        assert page.locator("video").count() == 1
        screenshot(page, str(tmp_path / f"{sid.replace('/', '-')}-{where}.png"))
    assert not errors, errors
    page.close()


def test_overlay_videos_play(browser, segmented):
    import av

    for sid in CLIPS:
        with av.open(os.path.join(segmented["local"], sid, "overlay.mp4")) as f:
            codec = f.streams.video[0].codec_context.name
        if codec != "h264":
            pytest.fail(f"{sid}/overlay.mp4 is {codec}, not H.264: Chromium plays H.264 (yuv420p) but not "
                        "Motion JPEG, so the page's <video> cannot play it. This passes once `roadseg infer` "
                        "writes H.264 overlays (the archive-scale issue).")
    for where in ("file", "s3"):
        page, errors = open_page(browser, segmented[where])
        for url, (sid, frames) in zip(source_links(page), CLIPS.items()):
            page.goto(url, wait_until="load")
            page.wait_for_function("[...document.querySelectorAll('video')].every(v => v.readyState >= 2)",
                                   timeout=30_000)
            state = page.eval_on_selector("video", "v => [v.readyState, v.duration, v.videoWidth]")
            assert state[0] >= 2 and state[2] == 96, (where, sid, state)
            assert state[1] == pytest.approx(frames / FPS, abs=1.01 / FPS), (where, sid, state)
            thumb = page.locator(".strip figure").nth(2)  # a click plays the video from that moment
            thumb.click()
            page.wait_for_function(f"document.querySelector('video').currentTime >= {thumb.get_attribute('data-t')}",
                                   timeout=10_000)
        assert not errors, errors
        page.close()


def test_infer_no_view_skips_the_page_and_view_writes_it(ray_local, tmp_path):
    from roadseg_dist.models.checkpoint import save_checkpoint
    from roadseg_dist.models.zoo import build_model

    save_checkpoint(str(tmp_path / "ckpt"), build_model("unet", base_channels=4), input_size=(32, 48))
    synth.write_video(str(tmp_path / "in" / "cam.mp4"), np.random.default_rng(0), 64, 96, 3, FPS)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["infer", str(tmp_path / "ckpt"), str(tmp_path / "in"), str(out), "--no-view"],
                             catch_exceptions=False)
    assert res.exit_code == 0 and "results page" not in res.output, res.output
    assert list((out / "frames").glob("part-*.parquet")) and not (out / "index.html").exists()
    res = CliRunner().invoke(main, ["view", str(out)], catch_exceptions=False)
    assert res.exit_code == 0 and (out / "index.html").exists() and (out / "cam" / "index.html").exists()
    assert "unet (base_channels=4), epoch 0" in (out / "index.html").read_text()  # from the checkpoint's meta



def archive_output(out, sources: int, parts: int = 5, frames: int = 3) -> list[str]:
    """A made-up OUTPUT of ``sources`` sources in ``parts`` stats parts (no image files); their ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from roadseg_dist.infer import stats

    ids = [f"fleet/day{i % 37:02d}/clip{i:05d}" for i in range(sources)]
    os.makedirs(out / "frames")
    for k in range(parts):
        mine = ids[k::parts]
        n = len(mine) * frames
        mix = np.random.default_rng(k).dirichlet(np.full(19, 0.5), size=n).astype(np.float32)
        given = {"video": np.repeat(mine, frames), "frame": np.tile(np.arange(frames), len(mine)),
                 "timestamp": np.tile(np.arange(frames) / 10.0, len(mine)),
                 **{c: mix[:, i] for i, c in enumerate(stats.CLASS_COLUMNS)}}
        schema = stats.schema()  # the rest (quality, file paths, model) left empty
        cols = [pa.array(given[f.name], f.type) if f.name in given else pa.nulls(n, f.type) for f in schema]
        pq.write_table(pa.Table.from_arrays(cols, schema=schema), str(out / "frames" / f"part-{k}.parquet"))
    report = {"sources": sources, "videos_done": sources, "videos_failed": 0, "failures": [], "frames_total": 0,
              "settings": {"outputs": ["stats"]}, "output": str(out)}
    (out / "report.json").write_text(json.dumps(report))
    return ids


def test_an_index_of_ten_thousand_sources_pages_finds_and_writes_pages_once(browser, tmp_path):
    from roadseg_dist.results.page import PAGE_ROWS, write_site

    out = tmp_path / "out"
    ids = archive_output(out, 10_000)
    write_site(str(out))
    assert sorted(p.name for p in out.glob("index*.html")) == sorted(
        ["index.html"] + [f"index-{i}.html" for i in range(2, 10_000 // PAGE_ROWS + 1)])
    page, errors = open_page(browser, f"file://{out}/index.html")
    assert len(source_links(page)) == PAGE_ROWS and "sources 1-1,000 of 10,000" in page.inner_text("body")
    page.fill("#q", "clip07311")
    page.wait_for_selector("#hits a")
    assert page.eval_on_selector_all("#hits a", "els => els.map(e => e.textContent)") == ["fleet/day22/clip07311"]
    page.click("#hits a")
    page.wait_for_load_state("load")
    assert page.url.endswith("/fleet/day22/clip07311/index.html") and "fleet/day22/clip07311" in page.inner_text("h1")
    page.goto(f"file://{out}/index-10.html", wait_until="load")
    assert source_links(page)[-1].endswith(f"/{sorted(ids)[-1]}/index.html")
    assert not errors, errors
    page.close()
    # a second view writes no source page again; a new part gets its pages, and the index shows it
    from roadseg_dist.results import page as page_mod

    written = []
    real = page_mod.write_html
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(page_mod, "write_html", lambda url, text: written.append(url) or real(url, text))
        write_site(str(out))
        assert not [u for u in written if u.count("/") > str(out).count("/") + 1]  # the index pages alone
        written.clear()
        (out / "frames" / "part-0.parquet").rename(out / "frames" / "part-9.parquet")  # part-0 "rewritten"
        write_site(str(out))
    pages = {u for u in written if u.endswith("/index.html") and u.count("/") > str(out).count("/") + 1}
    assert pages == {f"{out}/{sid}/index.html" for sid in ids[0::5]}
    assert len(list((out / ".roadseg" / "pages").iterdir())) == 5  # part-0's summary went with it
