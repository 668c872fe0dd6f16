"""A real two-node Ray cluster on this machine, driven the way a user drives one: `roadseg submit`.

The harness runs ``ray start --head`` and ``ray start --address`` with their own ports, CPUs, custom
resources (``node_a`` / ``node_b``), temp dirs and token authentication on, and stops them by the
ids of the processes they started -- never ``ray stop``, which would stop every Ray on the machine.
The nodes get S3 access from their own environment (the AWS variables set before `ray start`, as
README documents for hand-started clusters); `roadseg submit` sends the endpoint, never keys.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import free_port

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
# Ray's unix socket paths are <temp>/session_<date>_<pid>/sockets/plasma_store: about 70 characters
# below the temp dir, and Linux allows 107 in all.
SOCKET_TAIL = 72
MAX_SOCKET_PATH = 107


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry)] = (ppid, cmd)
    return table


class RayNode:
    """One `ray start` node: its processes are those naming its own temp dir, and their children."""

    def __init__(self, name: str, temp_dir: str):
        self.name, self.temp_dir = name, temp_dir

    def pids(self) -> set[int]:
        table = _proc_table()
        found = {pid for pid, (_, cmd) in table.items() if self.temp_dir + "/" in cmd + "/"}
        grew = True
        while grew:  # add descendants: workers and agents forked by the raylet
            more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
            found |= more
            grew = bool(more)
        return found

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 20.0) -> bool:
        """Send ``sig`` to every process of this node until none is left; True when none is."""
        deadline = time.time() + timeout
        while (pids := self.pids()) and time.time() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        return not self.pids()


class TwoNodeCluster:
    def __init__(self, root: str):
        self.root = root
        self.token = uuid.uuid4().hex
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.nodes: dict[str, RayNode] = {}
        # The nodes' environment: token auth on, this venv's python, and the S3 settings and keys of
        # this environment (a node's own credentials; the tests' moto keys).
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                   PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                   RAY_agent_register_timeout_ms="120000")  # agents start slowly on a busy machine
        self.node_env = env

    def _start(self, name: str, args: list[str]) -> None:
        temp_dir = os.path.join(self.root, name)
        node = RayNode(name, temp_dir)
        self.nodes[name] = node
        ports = ["--node-manager-port", "--object-manager-port", "--metrics-export-port",
                 "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port"]
        cmd = [str(BIN / "ray"), "start", "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir,
               "--object-store-memory", str(150 * 2**20), "--disable-usage-stats", "--log-style", "record",
               *[x for p in ports for x in (p, str(free_port()))], *args]
        proc = subprocess.run(cmd, env=self.node_env, capture_output=True, text=True, timeout=400)
        if proc.returncode != 0:
            node.kill(signal.SIGKILL)
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise RuntimeError(f"ray start ({name}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

    def _start_with_retries(self, name: str, make_args, attempts: int = 3) -> None:
        """On a crowded machine a raylet can give up waiting for its agents (a fixed 15 s in Ray):
        then the node's processes are stopped and it starts again on fresh ports."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start(name, make_args())
            except RuntimeError:
                if attempt == attempts:
                    raise

    def start(self) -> None:
        # a stopped node is declared dead after ~5 missed health checks instead of Ray's ~30 s
        fast_failure_detection = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                                  "health_check_timeout_ms": 2000, "health_check_failure_threshold": 5}

        def head_args():
            self.gcs_port, self.dashboard_port = free_port(), free_port()
            self.address = f"http://127.0.0.1:{self.dashboard_port}"
            return ["--head", "--port", str(self.gcs_port), "--num-cpus", "4",
                    "--resources", json.dumps({"node_a": 1}),
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                    "--ray-client-server-port", str(free_port()),
                    "--system-config", json.dumps(fast_failure_detection)]

        self._start_with_retries("head", head_args)
        self._start_with_retries("worker", lambda: ["--address", f"127.0.0.1:{self.gcs_port}", "--num-cpus", "2",
                                                    "--resources", json.dumps({"node_b": 1})])
        self.wait_for_nodes(2)

    def api(self, path: str, token: str | None = None) -> dict:
        req = urllib.request.Request(self.address + path,
                                     headers={"Authorization": f"Bearer {token or self.token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def alive_nodes(self) -> list[dict]:
        nodes = self.api("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        return [n for n in nodes if n["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout: float = 90.0) -> list[dict]:
        deadline, last = time.time() + timeout, None
        while time.time() < deadline:
            try:
                nodes = self.alive_nodes()
                if len(nodes) == count:
                    return nodes
                last = f"{len(nodes)} alive"
            except OSError as exc:  # the dashboard is still starting
                last = repr(exc)
            time.sleep(0.5)
        raise TimeoutError(f"the cluster did not reach {count} alive nodes in {timeout}s ({last})")

    def node_ids(self) -> dict[str, str]:
        """``node_a`` / ``node_b`` -> Ray node id, from the custom resources each node was given."""
        out = {}
        for n in self.alive_nodes():
            for res in ("node_a", "node_b"):
                if res in n["resources_total"]:
                    out[res] = n["node_id"]
        return out

    def submit(self, job: str, *args: str, submission_id: str | None = None, timeout: float = 240,
               extra_env: dict | None = None):
        """`roadseg submit` as a user runs it: a separate process with the token in its environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update({"RAY_AUTH_TOKEN": self.token, **(extra_env or {})})
        ident = ["--submission-id", submission_id] if submission_id else []
        cmd = [str(BIN / "roadseg"), "submit", "--address", self.address, *ident, job, "--", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def job_actors(self, submission_id: str, class_name: str) -> list[dict]:
        """The actors (alive or dead) of class ``class_name`` that a submitted job created."""
        job_id = self.api(f"/api/jobs/{submission_id}")["job_id"]
        query = (f"/api/v0/actors?detail=true&limit=10000&filter_keys=job_id&filter_predicates=%3D"
                 f"&filter_values={job_id}")
        actors = self.api(query)["data"]["result"]["result"]
        return [a for a in actors if class_name in (a.get("class_name") or "")]

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            if not node.kill(signal.SIGTERM, timeout=10):
                assert node.kill(signal.SIGKILL), f"processes of ray node {node.name} survive SIGKILL"


def _short_temp_root(tmp_path_factory) -> tuple[str, bool]:
    """A temp root under pytest's tmp when Ray's socket paths fit below it, else a short /tmp one."""
    root = str(tmp_path_factory.mktemp("ray"))
    if len(root) + len("/worker") + SOCKET_TAIL <= MAX_SOCKET_PATH:
        return root, False
    return tempfile.mkdtemp(prefix="rsg-", dir="/tmp"), True


@pytest.fixture(scope="module")
def two_nodes(s3_server, tmp_path_factory):
    root, remove = _short_temp_root(tmp_path_factory)
    c = TwoNodeCluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        if remove:
            shutil.rmtree(root, ignore_errors=True)


def _node_lines(stdout: str) -> list[dict]:
    return [json.loads(line[len("node "):]) for line in stdout.splitlines() if line.startswith("node {")]


@pytest.mark.slow
def test_cluster_needs_the_token(two_nodes):
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as err:
        two_nodes.api("/api/v0/nodes", token="not-the-token")
    assert err.value.code in (401, 403)
    proc = two_nodes.submit("check", extra_env={"RAY_AUTH_TOKEN": "not-the-token"}, timeout=120)
    assert proc.returncode != 0
    assert two_nodes.token not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_check_job_runs_on_both_nodes_and_reaches_s3(two_nodes, s3_bucket):
    from roadseg_dist import storage

    storage.write_text(s3_bucket + "/probe/hello.txt", "hi")
    proc = two_nodes.submit("check", s3_bucket + "/probe/hello.txt")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    reports = _node_lines(proc.stdout)
    ids = two_nodes.node_ids()
    assert sorted(r["node_id"] for r in reports) == sorted(ids.values())
    by_id = {r["node_id"]: r for r in reports}
    assert "node_a" in by_id[ids["node_a"]]["resources"] and "node_b" in by_id[ids["node_b"]]["resources"]
    for r in reports:
        # the submitted checkout ran (Ray's working_dir copy), and S3 answered with the node's keys
        assert "working_dir_files" in r["roadseg_path"], r
        assert r["storage"] == {"url": s3_bucket + "/probe/hello.txt", "exists": True}, r
    # the job's status and the logs: no secret of this environment in what the user sees
    assert "SUCCEEDED" in proc.stderr
    for secret in (os.environ["AWS_SECRET_ACCESS_KEY"], two_nodes.token):
        assert secret not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_an_archive_is_decoded_and_written_on_both_nodes(two_nodes, s3_bucket, tmp_path):
    """Units of work go to every node (each decodes and writes), at the job's default sizing."""
    from roadseg_dist import storage
    from test_infer_frames import make_video
    from test_infer_pipeline import tiny_checkpoint

    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    storage.upload(os.path.join(ckpt, "model.pt"), s3_bucket + "/ckpt/model.pt")
    storage.upload(os.path.join(ckpt, "meta.json"), s3_bucket + "/ckpt/meta.json")
    make_video(str(tmp_path / "clip.mp4"), 6, w=96, h=64, bframes=2, noise=30)
    for i in range(24):
        storage.upload(str(tmp_path / "clip.mp4"), f"{s3_bucket}/fleet/clip{i:02d}.mp4")
    proc = two_nodes.submit("infer", s3_bucket + "/ckpt", s3_bucket + "/fleet", s3_bucket + "/seg", "--size",
                            "32x48", "--outputs", "mask,video,stats", "--no-view", timeout=500)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = json.loads(storage.read_text(s3_bucket + "/seg/report.json"))
    assert report["videos_done"] == 24 and report["frames_total"] == 24 * 6
    per_node = report["units_per_node"]
    assert len(per_node) == 2 and sum(per_node.values()) == 24 and min(per_node.values()) > 0, per_node
    assert {n[:12] for n in two_nodes.node_ids().values()} == set(per_node)


# --- training on both nodes, losing one, then inference --------------------------------------------

# A tiny U-Net on 64x96 crops, 1.5 CPUs per DDP worker and 0.25 per decode/augment task.
TRAIN_ARGS = ("--model", "unet", "--base-channels", "8", "--batch-size", "4", "--crop", "64x96",
              "--num-workers", "2", "--cpu", "--cpus-per-worker", "1.5", "--ingest-cpus", "0.25",
              "--val-batch-size", "8", "--seed", "0", "--max-failures", "2")

# Another tenant's actor holding 2 of the head's 4 CPUs while training starts: only one DDP worker
# fits beside it, so Ray's default PACK placement puts the other on the worker node. Submitted with
# plain `ray job submit`, which works against the same token-protected cluster.
BUSY_ACTOR = """
import os, ray
ray.init()
busy = ray.remote(num_cpus=2, resources={"node_a": 0.01})(type("Busy", (), {"pid": lambda self: os.getpid()}))
actor = busy.options(name="busy", namespace="multinode-test", lifetime="detached").remote()
print("BUSY_PID", ray.get(actor.pid.remote()))
"""


def occupy_head(cluster: TwoNodeCluster) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token)
    proc = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", cluster.address, "--",
                           "python", "-c", BUSY_ACTOR], env=env, capture_output=True, text=True, timeout=180)
    found = re.search(r"BUSY_PID (\d+)", proc.stdout)
    assert proc.returncode == 0 and found, proc.stdout[-3000:] + proc.stderr[-3000:]
    return int(found.group(1))


@pytest.fixture(scope="module")
def s3_shards(synthetic_data, s3_server) -> str:
    """The synthetic shards and clip in a bucket of the loopback S3 server; returns the bucket URL."""
    from roadseg_dist import storage

    bucket = "s3://" + s3_server.new_bucket("multinode")
    s3_server.upload_tree(synthetic_data.shards, bucket + "/shards")
    s3_server.upload_tree(os.path.join(synthetic_data.root, "videos"), bucket + "/videos")
    return bucket


def _metrics(run_dir: str) -> list[dict]:
    from roadseg_dist import storage

    url = run_dir + "/metrics.jsonl"
    if not storage.exists(url):
        return []
    return [json.loads(line) for line in storage.read_text(url).splitlines() if line.strip()]


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job ended before {what}: {proc.stdout.read()[-6000:]}")
        if time.time() > deadline:
            raise TimeoutError(f"no {what} after {timeout}s")
        time.sleep(0.5)


@pytest.mark.slow
def test_train_on_two_nodes_survives_losing_one_then_infer(two_nodes, s3_shards):
    from roadseg_dist import storage

    busy_pid = occupy_head(two_nodes)
    run_dir, sid = s3_shards + "/runs/two-nodes", f"train-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_AUTH_TOKEN"] = two_nodes.token
    cmd = [str(BIN / "roadseg"), "submit", "--address", two_nodes.address, "--submission-id", sid, "train",
           "--", "--data", s3_shards + "/shards", "--storage", s3_shards + "/runs", "--name", "two-nodes",
           "--epochs", "4", *TRAIN_ARGS]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # once Ray Train has registered the first checkpoint (its controller then writes
        # checkpoint_manager_snapshot.json), stop the worker node and the head's other tenant
        ids = two_nodes.node_ids()
        _wait_for(lambda: storage.exists(run_dir + "/checkpoint_manager_snapshot.json")
                  and len(_metrics(run_dir)) >= 1, 400, "registered checkpoint", proc)
        assert two_nodes.nodes["worker"].kill(signal.SIGKILL)  # at once: epoch 2 is under way
        os.kill(busy_pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-8000:]
    assert "SUCCEEDED" in out and "best val mIoU" in out
    records = _metrics(run_dir)
    assert [r["epoch"] for r in records if not r.get("restored_from_epoch")][:1] == [1]
    assert max(r["epoch"] for r in records) == 4
    # one worker group (placement group) per attempt; Ray keeps the dead actors listed: the first
    # group ran one DDP worker on each node, the group after the loss ran both on the head
    groups: dict[str, set] = {}
    for a in two_nodes.job_actors(sid, "RayTrainWorker"):
        groups.setdefault(a["placement_group_id"], set()).add(a["node_id"])
    assert {ids["node_a"], ids["node_b"]} in groups.values(), groups
    assert {ids["node_a"]} in groups.values(), groups
    restored = [r for r in records if r.get("restored_from_epoch")]
    assert restored and restored[0]["restored_from_epoch"] >= 1, records  # resumed, not restarted
    assert storage.exists(run_dir + "/curves.png")
    for secret in (os.environ["AWS_SECRET_ACCESS_KEY"], two_nodes.token):
        assert secret not in out

    # inference with the trained run: the synthetic clip, from S3 to S3
    videos, output = s3_shards + "/videos", s3_shards + "/segmented"
    proc = two_nodes.submit("infer", run_dir, videos, output, "--cpu", "--concurrency", "1",
                            "--actor-cpus", "1", "--batch-size", "4", timeout=400)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = json.loads(storage.read_text(output + "/report.json"))
    clip = Path(storage.list_files(videos, suffixes=(".mp4",))[0]).stem
    assert report["videos_done"] == 1 and report["videos_failed"] == 0, report
    assert report["frames_total"] == 12, report
    assert storage.exists(f"{output}/{clip}/overlay.mp4") and storage.list_files(output + "/frames")
    assert len(storage.list_files(f"{output}/{clip}/mask", suffixes=(".png",))) == 12
