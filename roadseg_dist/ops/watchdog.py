"""Stall detection: a job that stops making progress fails with a diagnosis instead of hanging.

A job calls ``dog.beat(what)`` on every sign of progress (a batch, an epoch, a result). ``watch``
runs the job's body with a checker thread: after ``timeout_s`` without a beat it builds a diagnosis
(what the job was waiting for, what Ray reports as pending or unschedulable, the resource demand)
and interrupts the main thread, which leaves the body as ``StallError(diagnosis)``. Loops that poll
anyway (the training driver) call ``dog.check()`` instead and need no interruption.

``Watchdog`` is pure (an injectable clock); ``ray_diagnosis`` is the only part that asks Ray, through its
public APIs (``ray.util.state``, the autoscaler's ``get_cluster_status``).
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Callable, Iterator

from roadseg_dist.errors import StallError  # noqa: F401 - raised here, listed in errors.py

DEFAULT_STALL_TIMEOUT = 300.0  # seconds; a settings field (--stall-timeout) in every Ray job


class Watchdog:
    """The time of the last sign of progress, and whether it is too long ago (timeout 0: never)."""

    def __init__(self, job: str, timeout_s: float, clock: Callable[[], float] = time.monotonic,
                 pending: Callable[[], str] | None = None):
        self.job, self.timeout_s, self.clock, self.pending = job, float(timeout_s or 0), clock, pending
        self.last_beat = clock()
        self.last_what = "the job started"
        self.diagnosis: str | None = None

    def beat(self, what: str = "progress") -> None:
        self.last_beat, self.last_what = self.clock(), what

    def idle_s(self) -> float:
        return self.clock() - self.last_beat

    def stalled(self) -> bool:
        return self.timeout_s > 0 and self.idle_s() > self.timeout_s

    def check(self) -> None:
        """Raise StallError with the diagnosis if there was no beat for ``timeout_s``."""
        if self.stalled():
            raise StallError(self.diagnose())

    def diagnose(self) -> str:
        if self.diagnosis is None:
            waiting = _safe(self.pending) if self.pending else ""
            self.diagnosis = (
                f"{self.job} stalled: no progress for {self.idle_s():.0f} s (--stall-timeout "
                f"{self.timeout_s:g}); last progress: {self.last_what}."
                + (f"\nwaiting for: {waiting}" if waiting else "")
                + f"\n{_bounded(ray_diagnosis)}")
        return self.diagnosis


def _safe(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a diagnosis must never hide the stall itself
        return f"(could not ask: {exc})"


def _bounded(fn: Callable[[], str], timeout_s: float = 10.0) -> str:
    """``_safe(fn)``, but a Ray that does not answer cannot hold the stall error back."""
    answer = [f"(Ray did not answer within {timeout_s:g} s)"]

    def ask() -> None:
        answer[0] = _safe(fn)

    helper = threading.Thread(target=ask, name="roadseg-watchdog-diagnosis", daemon=True)
    helper.start()
    helper.join(timeout_s)
    return answer[0]


@contextlib.contextmanager
def watch(dog: Watchdog, poll_s: float = 1.0) -> Iterator[Watchdog]:
    """Run the body; when ``dog`` reports a stall, interrupt the main thread -> ``StallError``.

    The interruption is a SIGINT to the main thread (it wakes a blocking wait, as Ctrl-C does); it is
    turned into ``StallError`` here, so the caller never sees a KeyboardInterrupt for a stall. While
    watching, the SIGINT handler is ours: Ray Train's ``fit()`` on the main thread leaves its own behind
    (it asks a finished run's controller to abort, and the stall's SIGINT never reached the wait); a
    Ctrl-C from the user still goes to whatever handler was there before.
    """
    stop, fired, lock = threading.Event(), threading.Event(), threading.Lock()
    main = threading.main_thread()
    interruptible = threading.current_thread() is main and dog.timeout_s > 0
    previous = signal.getsignal(signal.SIGINT) if interruptible else None

    def on_sigint(signum, frame):
        if fired.is_set() or previous in (None, signal.SIG_DFL):
            raise KeyboardInterrupt
        if callable(previous):
            return previous(signum, frame)
        # SIG_IGN: the user's Ctrl-C stays ignored

    if interruptible:
        signal.signal(signal.SIGINT, on_sigint)

    def checker():
        while not stop.wait(poll_s):
            if dog.stalled():
                dog.diagnose()
                with lock:
                    if not stop.is_set():
                        fired.set()
                        if interruptible:
                            signal.pthread_kill(main.ident, signal.SIGINT)
                return

    threading.Thread(target=checker, name=f"roadseg-watchdog-{dog.job}", daemon=True).start()
    try:
        yield dog
    except BaseException:
        if not fired.is_set():
            raise
    finally:
        try:
            with lock:
                stop.set()
            if fired.is_set() and interruptible:
                time.sleep(0.05)  # let a SIGINT that is still on its way arrive here
        except KeyboardInterrupt:
            pass
        finally:
            if interruptible:
                signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if fired.is_set():
        raise StallError(dog.diagnose())


def ray_diagnosis() -> str:
    """What Ray says now: resources in use, unschedulable demand, actors waiting to be created."""
    import ray

    lines = []
    total, free = ray.cluster_resources(), ray.available_resources()
    lines.append("Ray resources: " + ", ".join(
        f"{k} {free.get(k, 0):g} free of {total[k]:g}" for k in ("CPU", "GPU") if k in total))
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        demand = [f"{req.count} x {dict(req.bundle)}" for d in status.resource_demands.ray_task_actor_demand
                  for req in d.bundles_by_count]
        demand += [f"placement group {d.details}" for d in status.resource_demands.placement_group_demand]
        lines.append("waiting for resources (Ray's pending demand): " + ("; ".join(demand) if demand else
                     "none: the tasks and actors that exist are running but produce nothing "
                     "(a read that never returns? a full object store?)"))
    except Exception as exc:  # noqa: BLE001 - older/odd clusters: say so and go on
        lines.append(f"(no autoscaler status: {exc})")
    lines.append(pending_actors())
    return "\n".join(line for line in lines if line)


def pending_actors(timeout_s: float = 3.0) -> str:
    """The actors waiting to be placed, by class, from Ray's public state API (served by the dashboard:
    a cluster, ``ray start``; the embedded local Ray runs without one, and the pending demand above says it)."""
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # this cluster, not whichever else the machine runs
    try:
        actors = [a for state in ("PENDING_CREATION", "DEPENDENCIES_UNREADY")
                  for a in list_actors(address=address, filters=[("state", "=", state)], timeout=timeout_s,
                                       raise_on_missing_output=False)]
    except Exception:  # noqa: BLE001 - no dashboard, or it is slow: the actor list is a nicety of the diagnosis
        return ""
    names = sorted({a.class_name or "?" for a in actors})
    return "actors not yet placed: " + ", ".join(names) if names else ""
