"""Connecting to Ray: a cluster when an address is given, else an embedded single-node Ray.

``address="local"`` is passed explicitly for the embedded case so that a stale cluster file left
by a stopped ``ray start`` cannot hijack a local run.

What Ray workers log reaches the user: Ray forwards their output to this process (``log_to_driver``),
where it goes to stderr. Each worker process first runs ``setup_worker`` (Ray's
``worker_process_setup_hook``): its log records are redacted, the notices of ``RAY_NOTICES`` dropped, and
its stdout joins its stderr, so nothing a worker prints lands among a command's results on stdout.

Credentials never go into a Ray ``runtime_env``: Ray writes a runtime_env into its logs on every
node and serves it from the job API. A local Ray inherits this process's environment (its raylet
and workers are our children); the nodes of a cluster get S3 access from their own environment
(instance profile, IRSA, a Kubernetes Secret, or the variables set before ``ray start``). Only the
non-secret settings (endpoint, region, retry budget) may travel with a job.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

# S3 settings that say where, not who: safe in a runtime_env, a log line or job metadata.
STORAGE_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                    "AWS_MAX_ATTEMPTS", "ROADSEG_S3_READ_TIMEOUT")
# ... and the secrets, which travel only with `roadseg submit --pass-credentials`.
STORAGE_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Ray's notices that say nothing to our users: the bars we turn off on purpose, the line Ray Data logs
# when a dataset finishes (our progress says it), and the token auth Ray turns on for the embedded Ray
# we start and stop. Their warnings and errors about anything else still show.
RAY_NOTICES = {"ray.data._internal.progress": "Progress bars",
               "ray.data._internal.execution.streaming_executor": "execution finished in",
               "ray._private.authentication.authentication_token_setup": "Token authentication is enabled",
               # Ray Train's placement-group cleaner asks the state API every few seconds; the embedded Ray
               # runs no dashboard to answer it (a cluster does), and the run is not affected
               "ray.train.v2._internal.execution.controller.placement_group_cleaner":
                   "Failed to query Ray Train Controller actor state"}
# The libraries that log every S3 request, its headers (a session token, the access key id) included, at
# DEBUG: `-v` is for our own debug lines, and these would bury them (~200 lines a command).
WIRE_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "s3fs", "fsspec", "urllib3", "aiohttp", "asyncio")
# Where Ray Data logs the traceback of a task that raised (before the driver sees the exception). When
# that exception is one of ours, its message already says what is wrong and what to do, and the CLI
# prints it as one line: Ray's copy of the traceback (~150 lines) only buries it.
RAY_TASK_TRACEBACKS = ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions",
                       "ray.data._internal.execution.streaming_executor")


def storage_settings() -> dict[str, str]:
    """The non-secret S3 settings of this process (endpoint, region, retry budget)."""
    return {k: os.environ[k] for k in STORAGE_SETTINGS if os.environ.get(k)}


def storage_credentials() -> dict[str, str]:
    """The S3 keys of this process: only for an explicit ``--pass-credentials``."""
    return {k: os.environ[k] for k in STORAGE_SECRETS if os.environ.get(k)}


WORKER_SETUP = "roadseg_dist.ops.cluster.setup_worker"  # Ray imports it by name in every worker process


def init_ray(address: str | None = None, num_cpus: float | None = None, quiet: bool = True) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), or start a local Ray with ``num_cpus`` CPUs.

    ``quiet``: Ray's own driver-side logs at WARNING (else INFO); workers' warnings and errors always show."""
    import ray

    if ray.is_initialized():
        return
    drop_ray_notices()
    if not sys.stderr.isatty():  # worker lines in a log file or a pipe: no colour codes around their prefix
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = dict(logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=True,
                  ignore_reinit_error=True, runtime_env={"worker_process_setup_hook": WORKER_SETUP})
    if address and address != "local":
        ray.init(address=address, **common)
    else:
        _start_local(num_cpus, common)
    quiet_ray_data()
    quicken_ray_data()


def _start_local(num_cpus: float | None, common: dict, attempts: int = 3) -> None:
    """Start the embedded Ray; a busy machine can make its raylet miss its start-up deadline, so retry."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", num_cpus=int(num_cpus or os.cpu_count() or 2),
                     include_dashboard=False, **common)  # the raylet inherits our environment
            return
        except Exception as exc:  # noqa: BLE001 - only start-up time-outs are retried
            if attempt == attempts or "timed out" not in str(exc).lower():
                raise
            logging.getLogger(__name__).warning("local Ray did not start in time (%s); retrying", exc)
            ray.shutdown()


def setup_worker() -> None:
    """Run by Ray in each worker process before any task: redacted log records without Ray's notices,
    warnings and errors only (all with -v: ``ROADSEG_VERBOSE``), and stdout into stderr, whose lines Ray
    forwards to the driver's stderr."""
    import ray

    drop_ray_notices()
    if not os.environ.get("ROADSEG_VERBOSE"):
        logging.disable(logging.INFO)  # Ray Train logs every report at INFO in each worker; the driver says it once
    # Ray's own state-API calls in this worker (Ray Train's) ask this cluster, not whichever the machine runs
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    sys.stdout = sys.stderr


# Ray Data's executor (2.60) notices a finished task only when its ray.wait over all running tasks times
# out (0.1 s), and refreshes the CPUs it may use once a second, from none at each execution. So every
# training epoch began with one read task for a second, and a task's slot then idled ~0.2 s before the
# next (2 cores, tasks of 32 720p samples: 0.4 s of work): ingest 92 -> 112-123 samples/s with these.
EXECUTOR_WAIT_S = 0.01
EXECUTOR_LIMITS_REFRESH_S = 0.1


@contextlib.contextmanager
def executor_wait(seconds: float) -> Iterator[None]:
    """While the block runs, Ray Data's executor in this process notices finished tasks within
    ``seconds``. For work of long tasks (infer's units run for seconds): at EXECUTOR_WAIT_S its loop
    wakes 100 times a second and costs the driver ~0.1 CPU throughout (2 cores, near-free model: 0.83
    CPU-ms a frame, 0.40 at 0.1 s, Ray's own default)."""
    from ray.data._internal.execution import streaming_executor_state

    before = streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S
    streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = seconds
    try:
        yield
    finally:
        streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = before


def quicken_ray_data() -> None:
    """Ray Data's executor loop in this process (the driver's, from ``init_ray``; Ray Train's split
    coordinator's, from ``feed.EpochSamples``, which plans each epoch there): finished tasks noticed
    within EXECUTOR_WAIT_S, CPU limits refreshed every EXECUTOR_LIMITS_REFRESH_S. Module constants of Ray Data's, pinned with Ray (<2.61); a test checks them."""
    from ray.data._internal.execution import resource_manager, streaming_executor_state

    streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = EXECUTOR_WAIT_S
    resource_manager.ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = EXECUTOR_LIMITS_REFRESH_S


def quiet_ray_data() -> None:
    """Ray Data prints an operator table per dataset; our own progress lines replace it."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    drop_ray_notices()


def redact_log_records() -> None:
    """Every log record this process creates from now on is redacted (``storage.redact``: keys, tokens,
    request headers, passwords in URLs), whatever logger or handler it goes to; idempotent.

    A record factory rather than a handler filter: a filter on a logger misses its children's records,
    and handlers come and go (Ray's, basicConfig's)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        from roadseg_dist.storage import redact

        record = previous(*args, **kwargs)
        try:
            record.msg, record.args = redact(record.getMessage()), ()
            if record.exc_info and not record.exc_text:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted stays as it is: logging reports it
            pass
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def drop_ray_notices() -> None:
    """Filter ``RAY_NOTICES`` out of Ray's loggers in this process (before ``ray.init``, which logs one),
    and Ray Data's reports of a task that raised one of our errors (``RAY_TASK_TRACEBACKS``); redact
    every log record (here on the driver, and in the Ray workers that call ``quiet_ray_data``)."""
    redact_log_records()
    for name, text in RAY_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(text))
    for name in RAY_TASK_TRACEBACKS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropOurTaskErrors) for f in logger.filters):
            logger.addFilter(_DropOurTaskErrors())


def our_error(exc: BaseException | None) -> BaseException | None:
    """The roadseg_dist exception in ``exc``: itself, or what a Ray task raised inside Ray's wrappers
    (``RayTaskError.cause``, Ray Data's ``UserCodeException`` and its ``__cause__``); else None.

    Every error a user reads is a class of ours (``errors.py``), so "defined in roadseg_dist" is the test."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e).__module__.startswith("roadseg_dist."):
            return e
        todo += [getattr(e, "cause", None), e.__cause__]  # not __context__: an error while handling one
    return None


class _DropOurTaskErrors(logging.Filter):
    """Drops a record about an exception of ours (the record's, or the one being handled as it is logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return our_error(exc) is None


class _Drop(logging.Filter):
    """Drops the records whose message contains ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def on_this_node() -> dict:
    """Actor options that keep a driver-owned helper (the epoch clock, the progress board) on the driver's
    node: Ray would otherwise place a zero-CPU actor on any node, and losing that node would fail a job
    that Ray Train itself survives."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
