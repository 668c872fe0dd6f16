"""Issue 15, the parts that need no Ray: the retry layer's bounds and clear S3 errors, what `roadseg
submit` ships and sends, the pixel cap, meta.json limits, durable markers, redacted CLI errors.

The end-to-end search for secrets in Ray's files, outputs and job API is tests/test_security_e2e.py.
"""
from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import click
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from faulty_s3_proxy import FaultyProxy
from roadseg_dist import images, storage
from roadseg_dist.ops import cluster, ship, submit

ROOT = Path(__file__).resolve().parents[1]


# --- one retry layer ------------------------------------------------------------------------------

def test_a_missing_local_file_is_not_retried(tmp_path):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "clip503.mp4"))  # "503" in a path is not a 503 reply
    assert time.monotonic() - start < 1


def test_backoff_bound_is_documented_arithmetic(monkeypatch):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    assert storage.max_attempts() == 5 and storage.backoff_bound_s() == 1 + 2 + 4 + 8
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    assert storage.max_attempts() == 3 and storage.backoff_bound_s() == 3
    assert storage.backoff_bound_s(10) == 1 + 2 + 4 + 8 + 16 + 20 * 4
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "many")
    with pytest.raises(ValueError, match="AWS_MAX_ATTEMPTS"):
        storage.max_attempts()


@pytest.mark.slow
def test_an_always_throttling_endpoint_gives_up_within_the_bound(s3_server, s3_bucket, monkeypatch):
    """Every request answered 503 SlowDown: one write makes at most max_attempts() PUTs and gives up
    within the back-off bound (plus request time), with an error naming the endpoint."""
    with FaultyProxy(s3_server.endpoint, every=1, faults=("slowdown",)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        start = time.monotonic()
        with pytest.raises(storage.StorageError) as err:
            storage.write_bytes(f"{s3_bucket}/runs/metrics.jsonl", b"{}\n")
        took = time.monotonic() - start
    assert proxy.methods["PUT"] == storage.max_attempts() == 5, proxy.methods
    assert took < storage.backoff_bound_s() + 10, took
    assert "kept answering SlowDown" in str(err.value) and proxy.endpoint in str(err.value)


def test_a_body_cut_mid_stream_is_read_on(s3_server, s3_bucket, monkeypatch):
    """Every 3rd request's reply is cut halfway: whole reads and streamed reads still get every byte."""
    data = os.urandom(300_000)
    url = f"{s3_bucket}/shards/train-000000.tar"
    storage.write_bytes(url, data)
    with FaultyProxy(s3_server.endpoint, every=3, faults=("cut-during",)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        for _ in range(3):
            assert storage.read_bytes(url) == data
            with storage.open_input(url) as f:
                assert b"".join(iter(lambda: f.read(65536), b"")) == data
    assert proxy.faults["cut-during"] >= 3, proxy.faults


@pytest.mark.slow
def test_a_refused_endpoint_is_a_clear_error_within_30s(monkeypatch):
    from conftest import free_port

    port = free_port()  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes("s3://data/shards/train-index.parquet")
    assert time.monotonic() - start < 30
    assert f"127.0.0.1:{port}" in str(err.value) and "AWS_ENDPOINT_URL" in str(err.value)


def test_a_silent_endpoint_is_waited_for_a_documented_bound(monkeypatch):
    for name in ("AWS_MAX_ATTEMPTS", "ROADSEG_S3_READ_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    assert storage.read_timeout_s() == 8 and storage.silent_bound_s() == 5 * 8 + 15  # README says 55 s
    monkeypatch.setenv("ROADSEG_S3_READ_TIMEOUT", "0")
    with pytest.raises(ValueError, match="ROADSEG_S3_READ_TIMEOUT"):
        storage.read_timeout_s()


@pytest.mark.parametrize("hang, call", [("no-continue", "upload"), ("silent", "read_bytes")])
def test_a_silent_endpoint_is_a_clear_error_within_the_bound(s3_server, s3_bucket, monkeypatch, tmp_path, hang, call):
    """A PUT to an endpoint that never sends `100 Continue` waited forever (`roadseg infer` hung at its
    first PUT); a GET that got no answer gave up after 317 s, as an "unexpected" error."""
    url = f"{s3_bucket}/out/000001.png"
    storage.write_bytes(url, b"png")
    (tmp_path / "mask.png").write_bytes(b"m" * 5000)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("ROADSEG_S3_READ_TIMEOUT", "1.5")  # the default 8 s x 5 tries would take 55 s here
    outcome: list[BaseException] = []

    def attempt():
        try:
            storage.upload(str(tmp_path / "mask.png"), url) if call == "upload" else storage.read_bytes(url)
        except BaseException as exc:  # noqa: BLE001 - judged below
            outcome.append(exc)

    with FaultyProxy(s3_server.endpoint, hang=hang) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        worker = threading.Thread(target=attempt, daemon=True)  # a hang fails the test, not the suite
        start = time.monotonic()
        worker.start()
        bound = 2 * 1.5 + 1  # tries x seconds without progress + back-off (retries.silent_bound_s)
        worker.join(bound + 3)
        took = time.monotonic() - start
    assert not worker.is_alive() and took < bound + 3, f"still waiting after {took:.0f} s"
    assert proxy.hung == 2  # every try waited for an answer, and gave up
    assert isinstance(outcome[0], storage.StorageError), outcome
    assert f"S3 at {proxy.endpoint} did not answer {url}: 2 tries of 1.5 s without progress" in str(outcome[0])


def test_a_missing_bucket_names_the_bucket(s3_server):
    with pytest.raises(storage.BucketMissing, match="'no-such-bucket-here'") as err:
        storage.read_bytes("s3://no-such-bucket-here/a/b.json")
    assert isinstance(err.value, FileNotFoundError)  # callers that handle "missing" still do
    assert s3_server.endpoint in str(err.value)


def test_refused_credentials_are_named_by_error_code_not_text(monkeypatch):
    from botocore.exceptions import ClientError

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://user:pw@127.0.0.1:9")
    denied = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "no"}}, "GetObject")
    wrapped = PermissionError("Forbidden")
    wrapped.__cause__ = denied  # how s3fs hands a botocore error on
    err = storage.storage_error(wrapped, "s3://bkt/key")
    assert isinstance(err, storage.StorageError) and "InvalidAccessKeyId" in str(err)
    assert "'bkt'" in str(err) and "pw" not in str(err)  # the endpoint is redacted
    throttled = ClientError({"Error": {"Code": "SlowDown", "Message": "InvalidAccessKeyId"}}, "PutObject")
    assert "kept answering SlowDown" in str(storage.storage_error(throttled, "s3://bkt/key"))  # by code
    other = ClientError({"Error": {"Code": "NoSuchKey", "Message": "SlowDown 503 InvalidAccessKeyId"}}, "Get")
    assert storage.storage_error(other, "s3://bkt/key") is other  # message text decides nothing


# --- what travels with a job ----------------------------------------------------------------------

def test_runtime_env_carries_where_but_never_who(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFAKE0123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-0123456789")
    env = submit.job_runtime_env(ROOT)["env_vars"]
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert not set(env) & set(cluster.STORAGE_SECRETS)
    passed = submit.job_runtime_env(ROOT, pass_credentials=True)["env_vars"]
    assert passed["AWS_SECRET_ACCESS_KEY"] == "fake-secret-0123456789"
    assert "runtime_env_agent.log" in submit.CREDENTIALS_WARNING


def _checkout(tmp_path: Path) -> tuple[Path, Path]:
    """A small checkout with what must not travel: .env, a key, data, an export, outside symlinks."""
    project, outside = tmp_path / "checkout", tmp_path / "outside"
    for rel, text in {"roadseg_dist/__init__.py": "", "roadseg_dist/core.py": "x = 1\n",
                      "roadseg_dist/.env": "AWS_SECRET_ACCESS_KEY=inner\n", "jobs/train.py": "print()\n",
                      "jobs/runtime_env.yaml": "env_vars: {}\n", "configs/a.yaml": "model: unet\n",
                      "pyproject.toml": "[project]\n", ".env": "AWS_SECRET_ACCESS_KEY=top\n",
                      "id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\n", "data/big.bin": "0" * 5000,
                      "exports/model.onnx": "onnx", "roadseg_dist/__pycache__/core.pyc": "c"}.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    outside.mkdir()
    (outside / "secret.txt").write_text("outside secret\n")
    (project / "configs" / "leak.yaml").symlink_to(outside / "secret.txt")
    (project / "roadseg_dist" / "home").symlink_to(outside, target_is_directory=True)
    (project / "configs" / "same.yaml").symlink_to(project / "configs" / "a.yaml")  # inside: fine
    return project, outside


def test_submit_ships_an_allow_list_and_never_follows_symlinks_out(tmp_path):
    project, _ = _checkout(tmp_path)
    with ship.stage(project, ["*.tar"]) as (staged, manifest):
        shipped = sorted(str(p.relative_to(staged)) for p in Path(staged).rglob("*") if p.is_file())
        contents = "".join(p.read_text() for p in Path(staged).rglob("*") if p.is_file())
    assert shipped == ["configs/a.yaml", "configs/same.yaml", "jobs/runtime_env.yaml", "jobs/train.py",
                       "pyproject.toml", "roadseg_dist/__init__.py", "roadseg_dist/core.py"]
    assert "secret" not in contents.lower() and "PRIVATE KEY" not in contents
    assert set(manifest.skipped) == {"configs/leak.yaml", "roadseg_dist/home", "roadseg_dist/.env"}
    assert all("outside the checkout" in why for rel, why in manifest.skipped.items() if rel != "roadseg_dist/.env")
    lines = ship.describe(manifest)
    assert lines[0].startswith("shipping 7 file(s)") and "roadseg_dist (2 file(s)" in lines[0]
    assert any("configs/leak.yaml" in line for line in lines[1:])
    assert not Path(staged).exists()


def test_submit_leaves_out_secrets_in_the_allowed_folders_and_links_to_them(tmp_path):
    """Secret-looking files inside configs/ and jobs/ once shipped, and so did the hidden .env behind
    an in-checkout symlink (the hidden-file rule looked at the link's name, not its target)."""
    project, _ = _checkout(tmp_path)
    secrets = {"configs/prod.env": "DB_PASSWORD=s3cr3t-env\n", "configs/id_rsa": "s3cr3t-rsa\n",
               "configs/id_ed25519.pub": "s3cr3t-pub\n", "jobs/credentials": "[default]\ns3cr3t-creds\n",
               "configs/gcp-service-account.json": '{"private_key_id": "s3cr3t-gcp"}',
               "configs/tls/server.PEM": "s3cr3t-pem\n", "configs/.netrc": "machine h password s3cr3t\n",
               "configs/deploy": "-----BEGIN OPENSSH PRIVATE KEY-----\ns3cr3t-key\n"}
    for rel, text in secrets.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    (project / ".env").write_text("AWS_SECRET_ACCESS_KEY=s3cr3t-dotenv\n")
    (project / "configs" / "settings.yaml").symlink_to("../.env")
    (project / "configs" / "data.yaml").symlink_to("../data/big.bin")
    (project / "configs" / "key.yaml").symlink_to("id_rsa")
    with ship.stage(project, []) as (staged, manifest):
        contents = "".join(p.read_text() for p in Path(staged).rglob("*") if p.is_file())
        shipped = sorted(str(p.relative_to(staged)) for p in Path(staged).rglob("*") if p.is_file())
    assert "s3cr3t" not in contents and "PRIVATE KEY" not in contents
    assert "configs/a.yaml" in shipped and "configs/same.yaml" in shipped
    why = manifest.skipped
    assert "secret-looking name (*.env)" == why["configs/prod.env"]
    assert "id_rsa*" in why["configs/id_rsa"] and "id_ed25519*" in why["configs/id_ed25519.pub"]
    assert "credentials*" in why["jobs/credentials"] and "service-account" in why["configs/gcp-service-account.json"]
    assert "*.pem" in why["configs/tls/server.PEM"] and ".netrc" in why["configs/.netrc"]
    assert why["configs/deploy"] == "holds a private key"
    assert why["configs/settings.yaml"] == "symlink to the hidden .env"
    assert "symlink to data/big.bin, which is not shipped" in why["configs/data.yaml"]
    assert "symlink to configs/id_rsa, a secret-looking name" in why["configs/key.yaml"]
    lines = ship.describe(manifest, limit=50)
    assert "not shipped: configs/settings.yaml (symlink to the hidden .env)" in lines


def test_submit_waits_for_the_job_agent_then_submits():
    class Head:  # the dashboard's answers after a fresh `ray start`: 500 until the agent registers
        def __init__(self, refusals: int):
            self.refusals, self.calls = refusals, 0

        def submit_job(self, **request):
            self.calls += 1
            if self.calls <= self.refusals:
                raise RuntimeError("Request failed with status code 500: No available agent to submit "
                                   "job, please try again later.")
            return "raysubmit_1"

    said = []
    assert submit.submit_when_ready(Head(2), 10, said.append, poll_s=0.01, entrypoint="x") == "raysubmit_1"
    assert len(said) == 1 and "up to 10 s" in said[0]
    with pytest.raises(RuntimeError, match="--agent-wait"):
        submit.submit_when_ready(Head(10**6), 0.05, said.append, poll_s=0.01, entrypoint="x")
    head = Head(0)
    head.submit_job = lambda **r: (_ for _ in ()).throw(RuntimeError("500: runtime_env invalid"))
    with pytest.raises(RuntimeError, match="runtime_env invalid"):  # other refusals are not waited on
        submit.submit_when_ready(head, 10, said.append, poll_s=0.01)


def test_eval_and_compare_can_be_submitted():
    for job in ("eval", "compare"):
        assert job in submit.JOBS and (ROOT / "jobs" / f"{job}.py").is_file()
        assert submit.entrypoint(job, ["--data", "s3://b/s"]) == f"python jobs/{job}.py --data s3://b/s"


# --- decoding untrusted bytes ---------------------------------------------------------------------

def test_pixel_cap_refuses_a_decompression_bomb_from_its_header(monkeypatch):
    from roadseg_dist.data.shards import decode_sample

    ok, bomb = cv2.imencode(".png", np.zeros((16000, 16000), np.uint8))  # ~250 KB, 256 MP
    ok, jpg = cv2.imencode(".jpg", np.zeros((40, 64, 3), np.uint8))
    ok, png = cv2.imencode(".png", np.zeros((40, 64), np.uint8))
    start = time.monotonic()
    with pytest.raises(images.ImageTooLarge, match="256 MP is over the 100 MP cap"):
        decode_sample(jpg.tobytes(), bomb.tobytes())
    assert time.monotonic() - start < 0.5  # refused from the header, nothing decoded
    rgb, label = decode_sample(jpg.tobytes(), png.tobytes())
    assert rgb.shape == (40, 64, 3) and label.shape == (40, 64)
    assert images.image_size(jpg.tobytes()) == (64, 40)
    with pytest.raises(images.ImageTooLarge, match="clip.mp4"):
        images.check_size(15360, 8640, "clip.mp4")  # 16K video
    images.check_size(7680, 4320, "clip.mp4")  # 8K video passes
    monkeypatch.setenv("ROADSEG_MAX_PIXELS", "2000")  # configurable: 40x64 = 2560 pixels
    with pytest.raises(images.ImageTooLarge, match="ROADSEG_MAX_PIXELS"):
        decode_sample(jpg.tobytes(), png.tobytes())


@pytest.mark.parametrize("change,match", [
    ({"arch_kwargs": {"base_channels": 4096}}, "base_channels=4096"),
    ({"input_size": [100000, 100000]}, "input_size=100000"),
    ({"num_classes": 10**6}, "num_classes"),
    ({"arch_kwargs": {"decoder_channels": [10**5] * 5}}, "decoder_channels"),
    ({"arch_kwargs": "rm -rf"}, "arch_kwargs"),
])
def test_hostile_meta_json_is_refused_before_building(tmp_path, change, match):
    import torch

    from roadseg_dist.models import build_model
    from roadseg_dist.models.checkpoint import CheckpointError, load_model, save_checkpoint

    ckpt = str(tmp_path / "ckpt")
    save_checkpoint(ckpt, build_model("unet", base_channels=4), input_size=(64, 96))
    meta = json.loads((tmp_path / "ckpt" / "meta.json").read_text())
    load_model(ckpt)  # sound as written
    meta.update(change)
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=match):
        load_model(ckpt, torch.device("cpu"))


# --- durable markers, names, redacted errors ------------------------------------------------------

def test_write_durable_writes_whole_files_under_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        storage.write_durable(str(tmp_path / "done" / "clip.json"), b'{"frames": 12}')
    finally:
        os.umask(old)
    path = tmp_path / "done" / "clip.json"
    assert path.read_bytes() == b'{"frames": 12}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path / "done") == ["clip.json"]  # no temp file left behind


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "a\\b", "x" * 256])
def test_run_name_is_one_path_component(tmp_path, name):
    from roadseg_dist.cli import main

    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--storage", str(tmp_path),
                                       "--name", name])
    assert result.exit_code == 2 and "one plain folder name" in result.output


def test_unexpected_errors_leave_redacted(monkeypatch):
    from roadseg_dist.cli import Group

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY")

    @click.group(cls=Group)
    def app():
        pass

    @app.command()
    def boom():
        raise RuntimeError("cannot open s3://AKIDEXAMPLE:wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY@bucket/k")

    result = CliRunner().invoke(app, ["boom"])
    assert result.exit_code == 1 and "RuntimeError: cannot open s3://***@bucket/k" in result.output
    assert "wJalrXUtnFEMI" not in result.output and "Traceback" not in result.output


# --- -v never prints a credential ---------------------------------------------------------------

def test_verbose_cli_prints_no_credential_while_talking_to_s3(s3_server, s3_bucket):
    """`roadseg -v` printed botocore's request headers: X-Amz-Security-Token, and the access key id in
    Authorization, hundreds of times a run."""
    import subprocess
    import sys

    secrets = {"AWS_ACCESS_KEY_ID": "AKIDV3RB0SE0001", "AWS_SECRET_ACCESS_KEY": "v3rbose-secret-key-0001",
               "AWS_SESSION_TOKEN": "v3rbose-session-token-0001"}
    env = {**os.environ, **secrets}
    out = ""
    for args in (["synth", f"{s3_bucket}/bdd", "--train", "1", "--val", "1", "--videos", "0",
                  "--height", "32", "--width", "32"], ["runs", f"{s3_bucket}/bdd"]):
        done = subprocess.run([sys.executable, "-m", "roadseg_dist.cli", "-v", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        out += done.stdout + done.stderr
    assert "Found credentials in environment variables" in out  # -v did talk, and S3 took the keys
    for name, value in secrets.items():
        assert value not in out, name
    assert "X-Amz-Security-Token" not in out and "Credential=" not in out


def test_log_records_are_redacted_whatever_logger_sends_them(monkeypatch, caplog):
    """Also when the token is not in this process's environment (a profile, an instance role)."""
    import logging

    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    cluster.redact_log_records()
    with caplog.at_level(logging.DEBUG, logger="botocore.endpoint"):
        logging.getLogger("botocore.endpoint").debug(
            "Sending http request: %s", "<AWSPreparedRequest headers={'X-Amz-Security-Token': b'FQoGZXIvYXdzEJr/tok', "
            "'Authorization': b'AWS4-HMAC-SHA256 Credential=ASIAABCDEFGHIJKLMNOP/20260101/us-east-1/s3/aws4_request, "
            "SignedHeaders=host, Signature=5ee1'}>")
        try:
            raise ValueError("s3://user:hunter2@bucket/x")
        except ValueError:
            logging.getLogger("botocore.endpoint").debug("failed", exc_info=True)
    text = caplog.text
    assert "FQoGZXIvYXdzEJr" not in text and "ASIAABCDEFGHIJKLMNOP" not in text and "hunter2" not in text
    assert "'X-Amz-Security-Token': b'***'" in text and "s3://***@bucket/x" in text
