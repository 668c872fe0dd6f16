"""Issue 15, must show: with fake AWS keys and a Ray token set, run shard, train and infer locally
and through `roadseg submit` to a two-node token cluster on this machine, then search every file
under those Ray sessions, the outputs, what the commands printed and GET /api/jobs/ for the secret
values: zero hits. A last job sent with --pass-credentials shows the search finds them when they
are there.

The local runs are CLI subprocesses with RAY_TMPDIR pointing into this test's folder, so their Ray
session directories are theirs alone; the cluster is tests/test_multinode.py's TwoNodeCluster, whose
nodes have the keys in their own environment (the documented way for hand-started clusters).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from test_multinode import BIN, ROOT, TwoNodeCluster, _short_temp_root

pytestmark = pytest.mark.slow

KEY_ID = "AKIDRSG" + uuid.uuid4().hex[:13].upper()
SECRET = "rsgSecret" + uuid.uuid4().hex + "x"
TINY_TRAIN = ("--model", "unet", "--base-channels", "4", "--epochs", "1", "--batch-size", "2",
              "--crop", "64x96", "--num-workers", "1", "--cpu", "--val-batch-size", "4")


def _hits(root: str, secrets: list[str]) -> list[str]:
    """Files under ``root`` (symlinks not followed) holding any of ``secrets``."""
    needles = [s.encode() for s in secrets]
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            found += [f"{path}: {n.decode()[:6]}..." for n in needles if n in data]
    return found


def _s3_hits(s3_server, url: str, secrets: list[str]) -> list[str]:
    """Objects of the bucket of ``url`` holding any of ``secrets`` (every object, read whole)."""
    client, bucket, found = s3_server.client(), url[len("s3://"):].split("/")[0], []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            data = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            found += [f"{obj['Key']}: {s[:6]}..." for s in secrets if s.encode() in data]
    return found


@pytest.fixture(scope="module")
def world(s3_server, tmp_path_factory):
    """Fake keys, a token, a bucket, a tiny BDD100K with one clip, and a short temp root."""
    from roadseg_dist.data import synth

    root, remove = _short_temp_root(tmp_path_factory)
    data = os.path.join(root, "bdd")
    synth.generate(data, train=8, val=4, height=64, width=96, videos=1, video_frames=6, seed=0)
    bucket = "s3://" + s3_server.new_bucket("secure")
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL=s3_server.endpoint, PYTHONPATH=str(ROOT))
    yield {"root": root, "data": data, "bucket": bucket, "token": token, "env": env}
    if remove:
        shutil.rmtree(root, ignore_errors=True)


def _run(world, *args, env=None, timeout=400) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "roadseg"), *args], env=env or world["env"], capture_output=True,
                          text=True, timeout=timeout, cwd=world["root"])
    assert proc.returncode == 0, f"roadseg {args[0]}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_local_runs_leave_no_secret(world, s3_server):
    """shard, train and infer on local Rays with token auth on: no secret in their sessions or outputs."""
    ray_tmp = os.path.join(world["root"], "local")
    env = {**world["env"], "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": world["token"]}
    b, out_dir = world["bucket"], os.path.join(world["root"], "segmented-local")
    printed = [_run(world, "shard", world["data"], f"{b}/shards", "--split", split, "--shard-size", "4", env=env)
               for split in ("train", "val")]
    printed.append(_run(world, "train", "--data", f"{b}/shards", "--storage", f"{b}/runs", "--name", "local",
                        *TINY_TRAIN, env=env))
    printed.append(_run(world, "infer", f"{b}/runs/local", os.path.join(world["data"], "videos"), out_dir,
                        "--cpu", env=env))
    assert json.loads(Path(out_dir, "report.json").read_text())["videos_done"] == 1
    sessions = [d for d in Path(ray_tmp, "ray").glob("session_2*") if d.is_dir()]
    assert len(sessions) == 4, sessions  # one local Ray per command, all searched below
    secrets = [KEY_ID, SECRET, world["token"]]
    assert _hits(ray_tmp, secrets) == []
    assert _hits(out_dir, secrets) == [] and _s3_hits(s3_server, b, secrets) == []
    assert not [p for p in printed for s in secrets if s in p.stdout + p.stderr]


@pytest.fixture(scope="module")
def cluster(world):
    c = TwoNodeCluster(world["root"])
    c.token = world["token"]
    # the nodes' own credentials, set before `ray start` (README: hand-started clusters)
    c.node_env.update({k: v for k, v in world["env"].items() if k.startswith("AWS_")},
                      RAY_AUTH_TOKEN=world["token"])
    c.node_env.pop("PYTHONPATH", None)  # the cluster runs the shipped code, not this checkout
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _api_text(cluster) -> tuple[list, str]:
    """GET /api/jobs/ and GET /api/jobs/<id> of each job, as the jobs and all the text."""
    jobs = cluster.api("/api/jobs/")
    return jobs, json.dumps(jobs) + "".join(json.dumps(cluster.api(f"/api/jobs/{j['submission_id']}"))
                                            for j in jobs if j.get("submission_id"))


def test_submitted_runs_leave_no_secret(world, cluster, s3_server):
    """shard, train and infer through `roadseg submit` with the keys in the submitter's environment."""
    from roadseg_dist import storage

    env = {**world["env"], "RAY_AUTH_TOKEN": world["token"]}
    b, d = world["bucket"], world["data"]
    sub = ("submit", "--address", cluster.address)
    printed = [_run(world, *sub, "shard", "--", d, f"{b}/cshards", "--split", split, "--shard-size", "4", env=env)
               for split in ("train", "val")]
    printed.append(_run(world, *sub, "train", "--", "--data", f"{b}/cshards", "--storage", f"{b}/runs",
                        "--name", "cluster", *TINY_TRAIN, env=env))
    printed.append(_run(world, *sub, "infer", "--", f"{b}/runs/cluster", f"{d}/videos", f"{b}/segmented",
                        "--cpu", env=env))
    assert "shipping" in printed[0].stderr and "roadseg_dist" in printed[0].stderr
    report = json.loads(storage.read_text(f"{b}/segmented/report.json"))
    assert report["videos_done"] == 1, report
    secrets = [KEY_ID, SECRET, world["token"]]
    jobs, api = _api_text(cluster)
    assert len(jobs) == 4 and {j["status"] for j in jobs} == {"SUCCEEDED"}
    assert [s[:6] for s in secrets if s in api] == []
    for node in cluster.nodes.values():
        assert _hits(node.temp_dir, secrets) == [], node.name
    assert _s3_hits(s3_server, b, secrets) == []
    assert not [p for p in printed for s in secrets if s in p.stdout + p.stderr]

    # positive control: with --pass-credentials the same search finds the secret where the warning says
    proc = _run(world, *sub, "--pass-credentials", "check", env=env)
    assert "WARNING --pass-credentials" in proc.stderr and SECRET not in proc.stderr
    assert SECRET in _api_text(cluster)[1]
    assert any("runtime_env_agent" in h for n in cluster.nodes.values() for h in _hits(n.temp_dir, [SECRET]))
