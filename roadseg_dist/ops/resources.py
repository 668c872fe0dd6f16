"""What a Ray job reserves, against what the cluster offers: a plan, or an error in seconds.

Every Ray job here has the same shape: N long-lived *workers* (training workers, model actors) that
each reserve ``cpus_per_worker`` CPUs (and a GPU with ``--gpu``), plus short *tasks* (decode /
augment / read) that need at least ``task_cpus`` free CPUs to make any progress. When the workers take
every CPU the tasks never run and the job hangs: ``plan`` refuses that before anything starts, and
``cpus_per_worker="auto"`` sizes the workers so that it cannot happen:

    auto = (CPUs - room for tasks) / workers,  room for tasks = max(task_cpus, task_share x CPUs)

``plan`` and ``auto_cpus`` are pure; ``offer_from_ray`` is the only function that asks Ray.
"""
from __future__ import annotations

import dataclasses
import math

from roadseg_dist.errors import ResourceError  # noqa: F401 - raised here, listed in errors.py

AUTO = "auto"
STEP = 0.05          # auto reservations are rounded down to this, so they add up below the total
MIN_AUTO_CPUS = 0.05


@dataclasses.dataclass(frozen=True)
class Offer:
    """What the cluster offers: totals now, the largest node, and the autoscaler's maximum if known."""
    cpus: float
    gpus: float = 0.0
    largest_node_cpus: float | None = None
    max_cpus: float | None = None     # autoscaler maximum (None: unknown or not autoscaling)
    max_gpus: float | None = None
    where: str = "the cluster"        # e.g. "the local Ray (--num-cpus 2)"

    def capacity(self, kind: str) -> float:
        now, most = (self.cpus, self.max_cpus) if kind == "CPU" else (self.gpus, self.max_gpus)
        return max(now, most or 0.0)

    def describe(self, kind: str) -> str:
        now, most = (self.cpus, self.max_cpus) if kind == "CPU" else (self.gpus, self.max_gpus)
        grow = f" (up to {_num(most)} with autoscaling)" if most and most > now else ""
        return f"{self.where} has {_num(now)} {kind}{'' if now == 1 else 's'}{grow}"


@dataclasses.dataclass(frozen=True)
class Request:
    """What one job asks for, and the names of the flags that set each number."""
    job: str                              # "train"
    workers: int
    cpus_per_worker: float | str          # a number or "auto"
    gpus_per_worker: float = 0.0
    task_cpus: float = 0.0                # the smallest task that must run beside the workers
    task_share: float = 0.5               # auto: share of the CPUs left to tasks
    worker_name: str = "worker"           # "training worker", "model actor"
    task_name: str = "task"               # "decode/augment task"
    workers_flag: str = "--num-workers"
    cpus_flag: str = "--cpus-per-worker"
    task_flag: str | None = None          # "--ingest-cpus"; None: a fixed size, no flag


@dataclasses.dataclass(frozen=True)
class Plan:
    request: Request
    offer: Offer
    cpus_per_worker: float
    reserved_cpus: float                  # workers + one task
    auto: bool

    def summary(self) -> str:
        r = self.request
        how = " (auto)" if self.auto else ""
        gpu = f" + {_num(r.gpus_per_worker)} GPU" if r.gpus_per_worker else ""
        tasks = (f"; {r.task_name}s {_num(r.task_cpus)} CPU each in the other "
                 f"{_num(max(0.0, self.offer.capacity('CPU') - r.workers * self.cpus_per_worker))}"
                 if r.task_cpus else "")
        return (f"resources: {r.workers} {r.worker_name}(s) x {_num(self.cpus_per_worker)} CPU{how}{gpu}{tasks} "
                f"of {_num(self.offer.capacity('CPU'))} CPUs ({self.offer.where})")


def _num(x: float | None) -> str:
    if x is None:
        return "?"
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0")


def parse_cpus(value) -> float | str:
    """``"auto"`` or a positive number of CPUs (the type of every ``--cpus-per-worker``)."""
    if value is None or str(value).strip().lower() == AUTO:
        return AUTO
    try:
        cpus = float(value) if not isinstance(value, bool) else math.nan  # YAML's true is no count
    except (TypeError, ValueError):
        cpus = math.nan
    if not math.isfinite(cpus):
        raise ValueError(f"{value!r} is not a number of CPUs: write e.g. 1, 0.5 or auto")
    if cpus <= 0:
        raise ValueError(f"a CPU reservation must be positive (or auto), got {value!r}")
    return cpus


def auto_cpus(cpus: float, workers: int, task_cpus: float, task_share: float) -> float:
    """CPUs per worker that leave room for tasks: (cpus - max(task_cpus, share x cpus)) / workers."""
    room = max(task_cpus, task_share * cpus)
    per_worker = (cpus - room) / max(1, workers)
    return math.floor(per_worker / STEP + 1e-9) * STEP


def plan(request: Request, offer: Offer) -> Plan:
    """Resolve ``auto`` and check that the workers plus one task fit; raise ResourceError if not."""
    r = request
    total_cpus = offer.capacity("CPU")
    auto = r.cpus_per_worker == AUTO
    if auto:
        per_worker = auto_cpus(total_cpus, r.workers, r.task_cpus, r.task_share)
        if per_worker < MIN_AUTO_CPUS:
            raise ResourceError(
                f"{r.job}: {r.workers} {r.worker_name}(s) do not fit: {offer.describe('CPU')}, which leaves "
                f"less than {MIN_AUTO_CPUS} CPU per {r.worker_name} after "
                f"{_num(max(r.task_cpus, r.task_share * total_cpus))} CPU for {r.task_name}s. "
                f"Use fewer {r.workers_flag} or more CPUs.")
    else:
        per_worker = float(r.cpus_per_worker)
    reserved = r.workers * per_worker + r.task_cpus
    if reserved > total_cpus + 1e-9:
        raise ResourceError(_too_many_cpus(r, offer, per_worker, reserved))
    if offer.largest_node_cpus is not None and not offer.max_cpus and per_worker > offer.largest_node_cpus + 1e-9:
        raise ResourceError(
            f"{r.job}: one {r.worker_name} reserves {_num(per_worker)} CPUs ({r.cpus_flag}) but the largest "
            f"node of {offer.where} has {_num(offer.largest_node_cpus)}: lower {r.cpus_flag} (or use auto).")
    gpus = r.workers * r.gpus_per_worker
    if gpus > offer.capacity("GPU") + 1e-9:
        raise ResourceError(
            f"{r.job}: {r.workers} {r.worker_name}(s) x {_num(r.gpus_per_worker)} GPU = {_num(gpus)} GPUs, but "
            f"{offer.describe('GPU')}: use fewer {r.workers_flag}, or --cpu.")
    return Plan(r, offer, per_worker, reserved, auto)


def _too_many_cpus(r: Request, offer: Offer, per_worker: float, reserved: float) -> str:
    task = (f" + 1 {r.task_name} x {_num(r.task_cpus)} CPU"
            + (f" ({r.task_flag})" if r.task_flag else "")) if r.task_cpus else ""
    fixes = [f"lower {r.cpus_flag} (or leave it at auto)", f"use fewer {r.workers_flag}"]
    if r.task_flag and r.task_cpus:
        fixes.append(f"lower {r.task_flag}")
    fixes.append("--num-cpus to give the local Ray more CPUs" if "local" in offer.where else "add nodes")
    return (f"{r.job} cannot start: {r.workers} {r.worker_name}(s) x {_num(per_worker)} CPU ({r.workers_flag}, "
            f"{r.cpus_flag}){task} = {_num(reserved)} CPUs, but {offer.describe('CPU')}"
            f"{'; the ' + r.task_name + 's would never run and the job would hang' if r.task_cpus else ''}. "
            f"Change it: {'; '.join(fixes)}.")


# --- the cluster's side (Ray) --------------------------------------------------------------------

def is_local(address: str | None) -> bool:
    """Whether ``init_ray(address)`` starts an embedded local Ray (no address, no RAY_ADDRESS)."""
    import os

    address = address or os.environ.get("RAY_ADDRESS")
    return not address or address == "local"


def _local_where(num_cpus: float | None) -> str:
    return "the local Ray" + (f" (--num-cpus {_num(num_cpus)})" if num_cpus else " (all cores; --num-cpus)")


def check_before_start(request: Request, address: str | None, num_cpus: float | None) -> None:
    """Fail in seconds, before a local Ray starts: its CPUs are known already (GPUs are checked
    once it runs). Does nothing for a cluster or a Ray that is already running."""
    import os

    import ray

    if not is_local(address) or ray.is_initialized():
        return
    cpus = float(int(num_cpus or os.cpu_count() or 2))  # what cluster.init_ray gives the local Ray
    plan(dataclasses.replace(request, gpus_per_worker=0.0),
         Offer(cpus=cpus, largest_node_cpus=cpus, where=_local_where(num_cpus)))


def offer_from_ray(local: bool, num_cpus: float | None = None) -> Offer:
    """The connected Ray's CPUs/GPUs now, its largest node, and the autoscaler's maximum if known."""
    import ray

    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    largest = max((n.get("CPU", 0.0) for n in nodes), default=None)
    most = autoscaler_maximum()
    max_cpus, max_gpus = most.get("CPU") or None, most.get("GPU") or None
    where = _local_where(num_cpus) if local else "the Ray cluster"
    return Offer(cpus=float(total.get("CPU", 0.0)), gpus=float(total.get("GPU", 0.0)), largest_node_cpus=largest,
                 max_cpus=float(max_cpus) if max_cpus else None, max_gpus=float(max_gpus) if max_gpus else None,
                 where=where)


def autoscaler_maximum() -> dict[str, float]:
    """The most of each resource the autoscaler may reach ({}: no autoscaler, the current resources count).

    Ray 2.60 has no public API for it (``ray.util.state`` describes what exists, not what may be added):
    Ray Train v2's worker group and Ray Data's shuffle read this same private call. It is here alone, so
    one function changes when Ray publishes one."""
    try:
        from ray._private.state import state

        return dict(state.get_max_resources_from_cluster_config() or {})
    except Exception:  # noqa: BLE001 - no autoscaler config, or Ray moved it: the current resources are the offer
        return {}
