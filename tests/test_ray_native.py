"""Ray-native behaviour (issue 23): Ray workers' warnings and errors reach the user on the driver's stderr,
redacted, without the notices roadseg drops on purpose (``cluster.RAY_NOTICES``), never among the results
on stdout; Ray's state is read through its public APIs."""
from __future__ import annotations

import ast
import logging
import pathlib
import time
import types
import warnings

import ray

from roadseg_dist.ops import cluster, watchdog

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "roadseg_dist"


@ray.remote(num_cpus=0)
def chatty_task(tag: str) -> None:
    logging.getLogger("roadseg_dist.somewhere").warning("%s warning from a worker, endpoint http://me:hunter2@minio:9000",
                                                        tag)
    warnings.warn(f"{tag} python warning from a worker")
    logging.getLogger("ray.data._internal.execution.streaming_executor").warning(
        "%s Dataset execution finished in 1.0 seconds", tag)  # one of RAY_NOTICES: dropped in the worker
    print(f"{tag} printed by a worker")


def forwarded(capfd, tag: str, expect: int, timeout_s: float = 30.0) -> tuple[str, str]:
    """(stdout, stderr) of this process until ``expect`` lines holding ``tag`` arrived (Ray forwards
    worker output from a thread of the driver, a little after the task returns)."""
    out = err = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        o, e = capfd.readouterr()
        out, err = out + o, err + e
        if (out + err).count(tag) >= expect:
            break
        time.sleep(0.1)
    return out, err


def test_worker_warnings_reach_the_driver_stderr_redacted_without_notices(ray_local, capfd):
    tag = f"T{time.monotonic_ns()}"
    ray.get(chatty_task.remote(tag))
    out, err = forwarded(capfd, tag, expect=3)
    assert f"{tag} warning from a worker" in err and f"{tag} python warning from a worker" in err
    assert f"{tag} printed by a worker" in err and tag not in out  # stdout is for results
    assert "hunter2" not in err and "***@minio:9000" in err
    assert "Dataset execution finished" not in err
    assert cluster.RAY_NOTICES["ray.data._internal.execution.streaming_executor"] == "execution finished in"


def test_ray_private_modules_only_where_ray_has_no_public_api():
    """watchdog.py read the actor table through ray._private.state; ray.util.state is the public way.
    The autoscaler's maximum has no public API in Ray 2.60: one function, named, holds that call."""
    users = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        owner = {id(node): fn.name for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef) for node in ast.walk(fn)}
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n.startswith("ray._private") for n in names):
                users.append(f"{path.relative_to(PACKAGE).as_posix()}:{owner.get(id(node), '<module>')}")
    assert sorted(set(users)) == ["ops/resources.py:autoscaler_maximum"]


def test_ray_data_executor_constants_exist_and_are_quickened(monkeypatch):
    """quicken_ray_data sets two module constants of Ray Data's executor: a Ray upgrade that renames
    them fails here, not silently back to epochs that start with one read task."""
    from ray.data._internal.execution import resource_manager, streaming_executor_state

    assert streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S > 0
    assert resource_manager.ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S > 0
    monkeypatch.setattr(streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S", 0.1)
    monkeypatch.setattr(resource_manager.ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", 1)
    cluster.quicken_ray_data()
    assert streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == cluster.EXECUTOR_WAIT_S
    assert resource_manager.ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == cluster.EXECUTOR_LIMITS_REFRESH_S
    with cluster.executor_wait(0.25):  # infer's units: long tasks, a slower loop, then back
        assert streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == 0.25
    assert streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == cluster.EXECUTOR_WAIT_S
    # where the code touches Ray Data's internals beyond logger names: this one module
    users = [path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
             if "from ray.data._internal" in path.read_text() or "import ray.data._internal" in path.read_text()]
    assert users == ["ops/cluster.py"]


def test_stall_diagnosis_names_pending_actors_from_the_state_api(ray_local, monkeypatch):
    import ray.util.state

    asked = []

    def list_actors(address=None, filters=None, **kwargs):
        asked.append((address, filters))
        state = filters[0][2]
        return [types.SimpleNamespace(class_name="MapWorker(MapBatches(Segmenter))")] if state == "PENDING_CREATION" else []

    monkeypatch.setattr(ray.util.state, "list_actors", list_actors)
    text = watchdog.ray_diagnosis()
    assert "Ray resources: CPU" in text and "actors not yet placed: MapWorker(MapBatches(Segmenter))" in text
    assert {a for a, _ in asked} == {ray.get_runtime_context().gcs_address}  # this cluster, by address
    monkeypatch.setattr(ray.util.state, "list_actors", lambda **k: (_ for _ in ()).throw(ConnectionError("no dashboard")))
    assert "actors not yet placed" not in watchdog.ray_diagnosis()  # the embedded Ray has no dashboard: said by demand
