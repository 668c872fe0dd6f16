"""``roadseg submit``: run a job of this project on a Ray cluster through Ray's Job Submission API.

    roadseg submit --address http://HEAD:8265 train -- --data s3://b/shards --model unet ...

The flow, top to bottom:
    1. ``job_runtime_env``: ``jobs/runtime_env.yaml`` plus the non-secret S3 settings of this
       environment (``cluster.storage_settings()``: endpoint, region). Keys stay here: the nodes
       reach S3 with their own (instance profile, IRSA, a Kubernetes Secret, or the variables set
       before ``ray start``). ``--pass-credentials`` adds them, with a warning of where they end up.
    2. ``ship.stage``: the allow-listed part of the checkout (roadseg_dist/, jobs/, configs/,
       pyproject.toml, README.md) is copied to a temp folder that becomes the job's working
       directory; what goes, with sizes, and what is left out, is printed.
    3. ``entrypoint``: ``python jobs/<job>.py ARGS`` -- the same command ``ray job submit`` runs.
    4. ``submit``: submit (waiting, bounded, for the head's job agent after a fresh ``ray start``),
       follow the job's logs, return the job's exit code (0 = SUCCEEDED).

Authentication: Ray 2.60 clusters use token authentication. The client reads the token the way
every Ray process does (``RAY_AUTH_TOKEN``, the file at ``RAY_AUTH_TOKEN_PATH``, or
``~/.ray/auth_token``) and sends it as a bearer header; giving a token turns token mode on.

The ``check`` job (``jobs/check.py``) runs ``node_report`` once on every alive node: where tasks
land, what each node has installed, and whether it reaches the storage you name.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

import yaml

from roadseg_dist import storage
from roadseg_dist.ops import cluster, ship
from roadseg_dist.errors import JobError
from roadseg_dist.settings import SettingsError, at_least, field

JOBS = ("train", "infer", "shard", "eval", "compare", "check")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Job status -> exit code of `roadseg submit` when the job's own exit code is unknown (a job that
# never started, a stop): a script can tell success, failure and a stop apart.
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 2}


@dataclasses.dataclass
class SubmitSettings:
    job: str = field(argument=True, help="train, infer, shard, eval, compare or check")
    address: str | None = field(None, help="the cluster's dashboard, http://HEAD:8265 "
                                "[default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS, else " + DEFAULT_ADDRESS + "]")
    project: str | None = field(None, help="project folder shipped as the job's working directory "
                                "[default: the folder holding jobs/ and roadseg_dist/]")
    runtime_env: str | None = field(None, help="YAML runtime_env merged over jobs/runtime_env.yaml")
    wait: bool = field(True, flag="--wait/--no-wait",
                       help="follow the logs and exit with the job's status")
    submission_id: str | None = field(None, help="an id for the job (default: Ray picks one)")
    python: str = field("python", help="the interpreter on the cluster that runs jobs/<job>.py")
    pass_credentials: bool = field(False, help="also send AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
                                   "AWS_SESSION_TOKEN in the job's runtime_env: Ray then logs them on "
                                   "every node and returns them from its job API. Default: the nodes "
                                   "use their own credentials")
    agent_wait: float = field(120.0, help="seconds to wait for the head's job agent after a fresh "
                              "`ray start` (Ray answers 500 'No available agent' until it is up)")

    def validate(self) -> None:
        if self.job not in JOBS:
            raise SettingsError(f"unknown job {self.job!r}: choose one of {', '.join(JOBS)}")
        at_least(self, 0, "agent_wait")


# --- the request -----------------------------------------------------------------------------

def find_project(start: str | None = None) -> Path:
    """The project root: ``start`` if given, else the folder above this package if it holds jobs/."""
    root = Path(start).expanduser().resolve() if start else Path(__file__).resolve().parents[2]  # roadseg_dist/ops/submit.py
    if not (root / "jobs").is_dir() or not (root / "roadseg_dist").is_dir():
        where = start or "the installed package's parent folder"
        raise SettingsError(f"{where} is not a roadseg_dist checkout (no jobs/ and roadseg_dist/ "
                            "in it): pass --project PATH_TO_CHECKOUT")
    return root


def resolve_address(address: str | None, environ: dict[str, str] | None = None) -> str:
    """The Job Submission (dashboard) URL: flag, else RAY_API_SERVER_ADDRESS / RAY_ADDRESS."""
    env = os.environ if environ is None else environ
    address = address or env.get("RAY_API_SERVER_ADDRESS") or env.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    if address in ("local", "auto"):
        raise SettingsError(f"--address {address!r} names no cluster: give the dashboard URL, "
                            "e.g. http://127.0.0.1:8265 (ray dashboard cluster.yaml / kubectl port-forward)")
    if "://" not in address:
        address = "http://" + address
    return address.rstrip("/")


def entrypoint(job: str, args: tuple[str, ...] | list[str], python: str = "python") -> str:
    """The shell command the cluster runs, relative to the shipped working directory."""
    if job not in JOBS:
        raise SettingsError(f"unknown job {job!r}: choose one of {', '.join(JOBS)}")
    return shlex.join([python, f"jobs/{job}.py", *args])


def _load_runtime_env(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a runtime_env mapping (working_dir, excludes, env_vars...)")
    return data


def job_runtime_env(project: Path, extra: str | None = None, env: dict[str, str] | None = None,
                    pass_credentials: bool = False) -> dict:
    """jobs/runtime_env.yaml < ``extra`` YAML, with the project as working_dir and the S3 settings.

    ``env`` defaults to ``cluster.storage_settings()``: the endpoint and region, never keys;
    ``pass_credentials`` adds ``cluster.storage_credentials()`` (the caller warns).
    """
    runtime_env = _load_runtime_env(project / "jobs" / "runtime_env.yaml")
    if extra:
        more = _load_runtime_env(Path(extra))
        more_vars = more.pop("env_vars", {}) or {}
        runtime_env.update(more)
        runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), **more_vars}
    runtime_env["working_dir"] = str(project)
    env_vars = {str(k): str(v) for k, v in (runtime_env.get("env_vars") or {}).items()}
    env_vars.update(cluster.storage_settings() if env is None else env)
    if pass_credentials:
        env_vars.update(cluster.storage_credentials())
    runtime_env["env_vars"] = env_vars
    return runtime_env


CREDENTIALS_WARNING = (
    "--pass-credentials: {names} go into the job's runtime_env. Ray writes the runtime_env into "
    "runtime_env_agent.log on every node and returns it from GET /api/jobs/ to anyone holding the "
    "cluster token. Prefer credentials on the nodes (instance profile, IRSA, a Kubernetes Secret, or "
    "the variables exported before `ray start`).")


def describe(runtime_env: dict) -> str:
    """A one-line summary of a runtime_env safe to print: env var names, never their values."""
    names = ",".join(sorted(runtime_env.get("env_vars", {})))
    return f"working_dir={runtime_env.get('working_dir')} (allow-listed copy) env_vars=[{names}]"


def exit_code(status: str, driver_exit_code: int | None = None) -> int:
    """What `roadseg submit` exits with: the job's own exit code when Ray knows it (``JobInfo.driver_exit_code``,
    so `infer` with failed sources is 3 here as it is locally), else ``EXIT_CODES`` by status.

    A job killed by a signal exits 128 + its number, as a shell says; a FAILED job is never 0."""
    status = str(status)
    if status == "STOPPED" or driver_exit_code is None:
        return EXIT_CODES.get(status, 1)
    code = int(driver_exit_code)
    if code < 0:
        return 128 - code
    if status == "FAILED" and code == 0:
        return EXIT_CODES["FAILED"]
    return code


# --- talking to the cluster --------------------------------------------------------------------

def _enable_token_auth_if_given() -> None:
    """A token in the environment means the cluster uses token auth: tell Ray's client so."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ["RAY_AUTH_MODE"] = "token"


def client(address: str):
    """A JobSubmissionClient for ``address``; connection and auth failures become clear errors."""
    _enable_token_auth_if_given()
    from ray.job_submission import JobSubmissionClient

    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # -v shows Ray's packaging chatter
        for name in ("ray.dashboard.modules.job.sdk", "ray.dashboard.modules.dashboard_sdk",
                     "ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir"):
            logging.getLogger(name).setLevel(logging.WARNING)

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError/RuntimeError/ValueError
        hint = ("set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token"
                if any(w in str(exc).lower() for w in ("401", "403", "auth", "token"))
                else "is the cluster up and the dashboard port forwarded (ray dashboard cluster.yaml, "
                     "kubectl port-forward svc/roadseg-head-svc 8265)?")
        raise JobError(f"cannot reach the Ray Job API at {address}: "
                       f"{storage.redact(str(exc))}\n  {hint}") from None


async def _follow(job_client, job_id: str, out: TextIO) -> None:
    async for lines in job_client.tail_job_logs(job_id):
        out.write(storage.redact(lines))
        out.flush()


def follow_logs(job_client, job_id: str, out: TextIO = sys.stdout, poll_s: float = 1.0) -> str:
    """Stream the job's logs to ``out`` until it ends; return its final status name."""
    try:
        asyncio.run(_follow(job_client, job_id, out))
    except RuntimeError as exc:  # the log socket dropped; the status below is what counts
        print(f"roadseg submit: log stream ended early ({storage.redact(str(exc))}); "
              "waiting for the job's status", file=sys.stderr)
    while True:
        status = job_client.get_job_status(job_id)
        if status.is_terminal():
            return str(status.value)
        time.sleep(poll_s)


def _no_agent_yet(exc: Exception) -> bool:
    """Ray's reply while the head's dashboard agent is still registering (HTTP 500)."""
    return "No available agent" in str(exc)


def submit_when_ready(job_client, wait_s: float, log: Callable[[str], None], poll_s: float = 2.0,
                      **request) -> str:
    """``submit_job(**request)``, retried while the head's job agent is not up yet, for ``wait_s``."""
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            return job_client.submit_job(**request)
        except Exception as exc:  # noqa: BLE001 - Ray raises RuntimeError with the HTTP reply
            if not _no_agent_yet(exc) or time.monotonic() + poll_s > deadline:
                if _no_agent_yet(exc):
                    raise RuntimeError(
                        f"the head's job agent was not up after {wait_s:.0f} s (--agent-wait): {exc}\n  see "
                        "dashboard_agent.log in the head's session logs: 'address already in use' means "
                        "another Ray on that machine holds its port (give --dashboard-agent-listen-port)"
                    ) from None
                raise
            if not said:
                log(f"roadseg submit: the cluster's job agent is not up yet; waiting for it "
                    f"(up to {wait_s:.0f} s, --agent-wait)")
                said = True
            time.sleep(poll_s)


def submit(s: SubmitSettings, args: tuple[str, ...] | list[str],
           log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> int:
    """Submit ``jobs/<job>.py ARGS``; with ``wait``, follow the logs and return the exit code."""
    project = find_project(s.project)
    address = resolve_address(s.address)
    runtime_env = job_runtime_env(project, s.runtime_env, pass_credentials=s.pass_credentials)
    if s.pass_credentials:
        names = ", ".join(cluster.storage_credentials()) or "no credentials (none are set here)"
        log("roadseg submit: WARNING " + CREDENTIALS_WARNING.format(names=names))
    command = entrypoint(s.job, args, s.python)
    job_client = client(address)
    try:
        with ship.stage(project, runtime_env.get("excludes", [])) as (staged, manifest):
            for line in ship.describe(manifest):
                log(f"roadseg submit: {line}")
            job_id = submit_when_ready(job_client, s.agent_wait, log, entrypoint=command,
                                       runtime_env={**runtime_env, "working_dir": staged},
                                       submission_id=s.submission_id)
    except Exception as exc:  # noqa: BLE001
        raise JobError(f"the cluster at {address} refused the job: "
                       f"{storage.redact(str(exc))}") from None
    log(f"roadseg submit: job {job_id} on {address}: {storage.redact(command)}")
    log(f"roadseg submit: {describe(runtime_env)}")
    if not s.wait:
        log(f"roadseg submit: not waiting; follow it with: ray job logs -f {job_id} --address {address}")
        return 0
    try:
        status = follow_logs(job_client, job_id)
    except KeyboardInterrupt:
        log(f"roadseg submit: stopped following; the job keeps running. "
            f"Stop it with: ray job stop {job_id} --address {address}")
        return 130
    info = job_client.get_job_info(job_id)
    detail = f": {storage.redact(info.message)}" if status != "SUCCEEDED" and info.message else ""
    code = exit_code(status, getattr(info, "driver_exit_code", None))
    log(f"roadseg submit: job {job_id} {status}{detail}" + (f" (exit code {code})" if code else ""))
    return code


# --- the `check` job: runs on the cluster --------------------------------------------------------

def node_report(url: str | None = None) -> dict:
    """What this node is and has: run as a task pinned to each node by ``check_cluster``."""
    import ray
    import torch

    import roadseg_dist

    report = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
              "pid": os.getpid(), "roadseg_version": roadseg_dist.__version__,
              "roadseg_path": str(Path(roadseg_dist.__file__).parent), "torch": torch.__version__,
              "cuda_devices": torch.cuda.device_count()}
    if url:
        try:
            report["storage"] = {"url": url, "exists": storage.exists(url)}
        except Exception as exc:  # noqa: BLE001 - reported, not raised: the point is to see it
            report["storage"] = {"url": url, "error": storage.redact(f"{type(exc).__name__}: {exc}")}
    return report


def check_cluster(url: str | None = None) -> list[dict]:
    """Run ``node_report`` once on every alive node (hard node affinity) and return the reports."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster.init_ray()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    remote = ray.remote(num_cpus=0)(node_report)
    refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(url) for n in nodes]
    reports = ray.get(refs)
    for node, report in zip(nodes, reports):
        report["resources"] = {k: v for k, v in node.get("Resources", {}).items()
                               if not k.startswith("node:")}
    return reports


def print_reports(reports: list[dict], out: TextIO = sys.stdout) -> None:
    for r in reports:
        out.write("node " + json.dumps(r, sort_keys=True) + "\n")
    out.write(f"{len(reports)} node(s) alive\n")
    out.flush()
