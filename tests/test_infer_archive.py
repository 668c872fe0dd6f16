"""An archive of many short clips: hundreds of sources on the loopback S3 server, a run killed after
some commits and run again (nothing committed is redone, nothing is lost), and the stats folder read
by the tools users have (pyarrow.dataset, pandas, DuckDB) as the masks say."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from roadseg_dist import storage
from roadseg_dist.cli import main
from roadseg_dist.infer import stats
from roadseg_dist import render
from test_infer_frames import make_video
from test_infer_pipeline import SIZE, objects, tiny_checkpoint

CLIPS, FRAMES = 300, 3


@pytest.mark.slow
def test_hundreds_of_clips_on_s3_a_kill_and_a_rerun_every_frame_once(s3_server, s3_bucket, ray_local, tmp_path):
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    make_video(str(tmp_path / "clip.mp4"), FRAMES, w=48, h=32, bframes=0)
    data = open(tmp_path / "clip.mp4", "rb").read()
    inp, out = s3_bucket + "/fleet", s3_bucket + "/out"
    names = [f"day{i % 7}/clip{i:04d}" for i in range(CLIPS)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: storage.write_bytes(f"{inp}/{n}.mp4", data), names))
    args = [ckpt, inp, out, "--size", SIZE, "--outputs", "mask,stats", "--no-view"]

    import ray

    env = {**os.environ, "ROADSEG_COMMIT_SECONDS": "1"}  # commits every second: a kill lands between them
    proc = subprocess.Popen([sys.executable, "-m", "roadseg_dist.cli", "infer", *args, "--address",
                             ray.get_runtime_context().gcs_address], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if len([k for k in objects(s3_server, s3_bucket, "out/.roadseg/done/")]) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    time.sleep(2)  # the killed job's units are reaped by Ray; let any in flight finish writing
    at_kill = objects(s3_server, s3_bucket, "out/")
    # a batch is committed when its manifest and its frames part are both there: a kill between the
    # two writes leaves a manifest alone, and its sources are redone (state.py)
    manifests = [json.loads(storage.read_text(f"{s3_bucket}/{k}")) for k in at_kill
                 if k.startswith("out/.roadseg/done/")]
    committed = [e["id"] for m in manifests if m["part"] is None or f"out/{m['part']}" in at_kill
                 for e in m["sources"]]
    assert 0 < len(committed) < CLIPS, "the run was not killed between its commits"

    result = CliRunner().invoke(main, ["infer", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(storage.read_text(out + "/report.json"))
    assert report["videos_done"] == CLIPS and report["videos_skipped"] == len(committed)
    assert report["frames_this_run"] == (CLIPS - len(committed)) * FRAMES
    final = objects(s3_server, s3_bucket, "out/")
    for sid in committed:  # committed before the kill: not one of its files written again
        for i in range(FRAMES):
            key = f"out/{sid}/mask/{i:06d}.png"
            assert final[key] == at_kill[key], key
    table = read_frames(out)
    assert len(table) == CLIPS * FRAMES  # every frame once: no duplicate rows from the redone sources
    assert sorted(zip(table.video, table.frame)) == sorted((n, i) for n in names for i in range(FRAMES))
    assert all(sum(k.startswith(f"out/{n}/mask/") for k in final) == FRAMES for n in names)
    state_objects = [k for k in final if "/.roadseg/" in k or k.startswith("out/frames/")]
    assert len(state_objects) < 0.2 * CLIPS, state_objects  # batches of sources, not a marker per source


def read_frames(output: str):
    import io

    import pandas as pd
    import pyarrow.parquet as pq

    parts = storage.list_files(storage.join(output, "frames"))
    return pd.concat([pq.read_table(io.BytesIO(storage.read_bytes(p))).to_pandas() for p in parts])


@pytest.mark.slow
def test_the_frames_folder_is_one_table_to_pyarrow_pandas_and_duckdb(ray_local, tmp_path):
    import duckdb
    import pandas as pd
    import pyarrow.dataset as ds

    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    counts = {f"cam{i}/clip": 3 + i % 4 for i in range(12)}
    for sid, n in counts.items():
        (tmp_path / "in" / sid).parent.mkdir(parents=True, exist_ok=True)
        make_video(str(tmp_path / "in" / (sid + ".mp4")), n, w=48, h=32, bframes=2, noise=20)
    out = tmp_path / "out"
    env = {"ROADSEG_COMMIT_SECONDS": "0"}  # a commit per source: several parts
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        result = CliRunner().invoke(main, ["infer", ckpt, str(tmp_path / "in"), str(out), "--size", SIZE, "--no-view"],
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(list((out / "frames").iterdir())) > 1
    key = ["video", "frame"]
    by_arrow = ds.dataset(str(out / "frames"), format="parquet").to_table().to_pandas().sort_values(key)
    by_pandas = pd.read_parquet(out / "frames").sort_values(key)
    by_duckdb = duckdb.sql(f"select * from read_parquet('{out}/frames/*.parquet')").df().sort_values(key)
    for other in (by_pandas, by_duckdb):
        pd.testing.assert_frame_equal(by_arrow.reset_index(drop=True), other.reset_index(drop=True),
                                      check_dtype=False, check_categorical=False)
    assert sorted(zip(by_arrow.video, by_arrow.frame)) == sorted((s, i) for s, n in counts.items() for i in range(n))
    for row in by_arrow.itertuples():
        mask = cv2.imread(str(out / row.mask), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(np.array([getattr(row, c) for c in stats.CLASS_COLUMNS], np.float32),
                              render.class_fractions(mask))
        assert os.path.exists(out / row.overlay) and row.model.startswith("unet@epoch0:")
        assert not np.isnan(row.timestamp)
