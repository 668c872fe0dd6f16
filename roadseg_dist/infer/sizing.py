"""How ``roadseg infer`` uses the cluster: model actors (CPUs, torch threads, frames per batch) and the
tasks that run the units of work, sized to the machine (``size_actors``) or to the connected Ray
(``sizing_for``), checked against what Ray offers before any work starts."""
from __future__ import annotations

import dataclasses
import math

from roadseg_dist.ops import resources

TASK_CPUS = 0.25   # a unit's CPUs beside CPU model actors, which get most of them
MAX_CPU_ACTORS_PER_NODE = 8  # each actor holds a model: past this, an actor gets more threads instead
GPU_BATCH_FACTOR = 4  # a GPU actor merges the chunks of several units into batches this many times larger


@dataclasses.dataclass(frozen=True)
class Sizing:
    """How the job uses the cluster: model actors (CPUs, torch threads, frames per batch) and the
    tasks that do the units of work."""
    actors: int
    actor_cpus: float
    threads: int
    gpu: bool
    tasks: int = 2           # units of work in flight
    task_cpus: float = TASK_CPUS
    batch: int = 8           # frames per model batch in an actor


def _quarters(x: float) -> float:
    return math.floor(x * 4 + 1e-9) / 4


def size_actors(cluster_cpus: float, gpus: int, s, node_cpus: list[float] | None = None) -> Sizing:
    """Defaults sized to the machine. GPU: one actor per GPU with 1 CPU, batching the chunks of many
    units; every other CPU runs a unit (decode, render, encode: the CPU work a GPU waits for).
    CPU only: the model gets ~3/4 of the CPUs, split into as many actors as it has CPUs (up to 8 per
    node) with threads = CPUs reserved, because one torch thread per actor gives the most frames per
    CPU-second; units share the rest at TASK_CPUS each (on 2 cores: two actors of 0.75 CPU, two
    units). ``--concurrency`` / ``--actor-cpus`` override; every actor fits on one of the nodes."""
    nodes = node_cpus or [cluster_cpus]
    if s.gpu:
        actors = s.concurrency or max(1, gpus)
        cpus = s.actor_cpus or 1.0
        tasks = max(1, int(cluster_cpus - actors * cpus))
        return Sizing(actors, cpus, 1, True, tasks, 1.0, s.batch_size * GPU_BATCH_FACTOR)
    share = max(0.5, cluster_cpus * 0.75)
    actors = s.concurrency or min(math.ceil(share - 1e-9), MAX_CPU_ACTORS_PER_NODE * len(nodes))
    cpus = s.actor_cpus or max(0.25, min(_quarters(share / actors), max(nodes)))
    if not s.concurrency:
        actors = max(1, min(actors, sum(math.floor(n / cpus + 1e-9) for n in nodes)))
    tasks = max(2, int((cluster_cpus - actors * cpus) / TASK_CPUS + 1e-9))
    return Sizing(actors, cpus, max(1, math.ceil(cpus - 1e-9)), False, tasks, TASK_CPUS, s.batch_size)


def resource_request(s, sizing: Sizing) -> resources.Request:
    return resources.Request(job="infer", workers=sizing.actors, cpus_per_worker=sizing.actor_cpus,
                             gpus_per_worker=1 if s.gpu else 0, task_cpus=sizing.task_cpus,
                             worker_name="model actor", task_name="decode/write task",
                             workers_flag="--concurrency", cpus_flag="--actor-cpus")


def node_cpus() -> list[float]:
    """The CPUs of each live node of the connected Ray."""
    import ray

    return [float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")] or [1.0]


def sizing_for(s) -> Sizing:
    """The job sized to the connected Ray (``size_actors``); a request that cannot fit raises
    ``ResourceError`` naming the numbers and the flags, before any work starts."""
    offer = resources.offer_from_ray(resources.is_local(s.address), s.num_cpus)
    sizing = size_actors(offer.cpus or 1.0, int(offer.gpus or 0), s, node_cpus())
    resources.plan(resource_request(s, sizing), offer)
    return sizing
