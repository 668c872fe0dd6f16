"""Split sources in the driver: their plans, their ranges' results, joining their overlay.mp4.

A split source (``plan.choose_splits``) has a plan of frame ranges, made once by a probe task and kept
across runs while its file is the same; each range is a unit. When all its ranges are in, they must
join up (``ledger``); then a task joins the ranges' pieces into overlay.mp4, and the source is
committed. Ranges that do not join up (an index that lies) are redone as one range from the start.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

from roadseg_dist.infer.sizing import TASK_CPUS
from roadseg_dist.infer import graph, ledger, plan as plan_mod, stats as stats_mod
from roadseg_dist.infer.inputs import Source
from roadseg_dist.infer.process import reason
from roadseg_dist.infer.state import read_table

log = logging.getLogger(__name__)


def plan_splits(job, pending: list[Source], slots: int) -> None:
    """Plans for the sources to split: kept from an earlier run when the file is the same, else made
    by probe tasks (which save them). Which ranges are left comes from one listing of the parts."""
    import ray

    planned = job.state.listing("plans")
    if job.s.split == "auto":
        chosen = plan_mod.choose_splits(pending, slots)
    else:
        chosen = {src.id for src in pending} if job.s.split == "always" else set()
    ids = chosen | {src.id for src in pending if job.state.plan_url(src.id) in planned}
    ordered = sorted(ids)
    with ThreadPoolExecutor(16) as pool:
        old = dict(zip(ordered, pool.map(lambda sid: job.state.read_json(job.state.plan_url(sid))
                                         if job.state.plan_url(sid) in planned else None, ordered)))
    probe = ray.remote(num_cpus=TASK_CPUS, max_retries=2)(graph.probe_and_save)
    todo = []
    for sid in ordered:
        if old[sid] and old[sid].get("identity") == job.sources[sid].identity:
            job.plans[sid] = old[sid]
        else:
            job.state.forget(sid)
            todo.append(probe.remote(job.sources[sid], job.s.segment_frames, job.target.stride, job.s.fps,
                                     job.state.output))
    for p in ray.get(todo):
        if "error" in p:
            job.fail(p["id"], p["error"])
        else:
            job.plans[p["id"]] = p
    finished = job.state.listing("parts")
    for sid, p in job.plans.items():
        job.left[sid] = {r["start"] for r in p["ranges"] if job.state.part_url(sid, r["start"]) not in finished}
        job.rows[sid] = {}


def finish_split(job, sid: str) -> None:
    """All ranges of a split source are in: check they join up, then assemble overlay.mp4 (or commit)."""
    import ray

    p = job.plans[sid]
    rows = [job.rows[sid].get(r["start"]) or _saved_range(job, sid, r["start"]) for r in p["ranges"]]
    problem = ledger.source_problem(rows)
    if problem and len(p["ranges"]) > 1:
        log.info("%s: %s; decoding it again from the start as one range", sid, problem)
        job.frames_now -= sum(r["frames"] for r in rows)
        job.state.forget(sid)
        job.plans[sid] = plan_mod.as_one_range(p)
        job.state.write_json(job.state.plan_url(sid), job.plans[sid])
        job.left[sid], job.rows[sid] = {0}, {}
        job.redo += plan_mod.range_works(job.plans[sid], {0})
        return
    import pyarrow as pa

    table = pa.concat_tables([stats_mod.from_bytes(r["stats"]) for r in rows])
    indices = table.column("frame").to_pylist()
    problem = problem or ledger.check_indices(indices, p["stride"]) or ("" if indices else "no frame could be decoded")
    if problem:
        job.fail(sid, problem)
        return
    entry = {"id": sid, "identity": p["identity"], "frames": len(indices), "fps": p["fps"]}
    if job.target.video:
        task = ray.remote(num_cpus=TASK_CPUS * 2, max_retries=2)(graph.assemble_video)
        ref = task.remote(job.state.output, sid, indices, p["fps"] / p["stride"], p["width"], p["height"],
                          job.target.video)
        job.videos[sid] = (ref, entry, table)
    else:
        job.finished(entry, table)


def _saved_range(job, sid: str, start: int) -> dict:
    """A range finished by an earlier run, from its part: its stats rows and end record."""
    table = read_table(job.state.part_url(sid, start))
    end = json.loads(table.schema.metadata[b"end"])
    return {**end, "frames": len(table), "stats": stats_mod.to_bytes(table.replace_schema_metadata(None))}


def collect_videos(job, block: bool) -> None:
    import ray

    if not job.videos:
        return
    refs = [v[0] for v in job.videos.values()]
    ready, _ = ray.wait(refs, num_returns=len(refs) if block else 1, timeout=None if block else 0)
    for sid in [k for k, v in job.videos.items() if v[0] in ready]:
        ref, entry, table = job.videos.pop(sid)
        try:
            ray.get(ref)
        except Exception as exc:  # noqa: BLE001
            job.fail(sid, "overlay.mp4 could not be written: " + reason(exc))
            continue
        job.finished(entry, table)
