"""Shared test infrastructure: a real S3-compatible server on loopback and one local Ray.

The S3 server is moto's standalone server (a separate process speaking the S3 HTTP protocol), the
way s3fs's and Ray's own test suites do it. Its environment variables are set before Ray starts so
that every Ray worker reaches the same endpoint.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import typing
import uuid

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class S3Server:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def new_bucket(self, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    @staticmethod
    def upload_tree(local_dir: str, url: str) -> None:
        """Test set-up: copy every file of a local folder below ``url`` (one upload per file)."""
        from roadseg_dist import storage

        for root, _, files in os.walk(local_dir):
            for name in files:
                full = os.path.join(root, name)
                storage.upload(full, storage.join(url, os.path.relpath(full, local_dir).replace(os.sep, "/")))


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1; AWS_* variables point every client (and Ray worker) at it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in
             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing-key-id",
                      AWS_SECRET_ACCESS_KEY="testing-secret-key", AWS_DEFAULT_REGION="us-east-1")
    try:
        yield S3Server(endpoint)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket as ``s3://name``."""
    return "s3://" + s3_server.new_bucket()


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local single-node Ray for the whole session (started after the S3 variables are set)."""
    from roadseg_dist.ops.cluster import init_ray, shutdown_ray

    init_ray(num_cpus=4)
    yield
    shutdown_ray()


class SyntheticData(typing.NamedTuple):
    root: str      # a BDD100K-layout folder made by data.synth.generate
    shards: str    # a folder of train and val shards of it (shard_size 8) made by shard.job.run


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory, ray_local) -> SyntheticData:
    """A tiny synthetic BDD100K (24 train, 8 val, 64x96, one 12-frame clip) and its shards."""
    from roadseg_dist.data import synth
    from roadseg_dist.shard import job as shard_job

    base = tmp_path_factory.mktemp("synthetic")
    root, dest = str(base / "bdd100k"), str(base / "shards")
    synth.generate(root, train=24, val=8, height=64, width=96, videos=1, video_frames=12, seed=0)
    for split in ("train", "val"):
        shard_job.run(shard_job.ShardSettings(root=root, dest=dest, split=split, shard_size=8))
    return SyntheticData(root, dest)


@pytest.fixture(autouse=True)
def _cli_verbosity_stays_in_its_test():
    """``roadseg -v`` run in-process (CliRunner) sets the root logger to DEBUG and ROADSEG_VERBOSE for the
    rest of the process, as a real command should; a test must not hand that to the next one."""
    import logging

    level, verbose = logging.getLogger().level, os.environ.get("ROADSEG_VERBOSE")
    yield
    logging.getLogger().setLevel(level)
    if verbose is None:
        os.environ.pop("ROADSEG_VERBOSE", None)
    else:
        os.environ["ROADSEG_VERBOSE"] = verbose
