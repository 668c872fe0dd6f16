"""``roadseg infer``: segment every frame of every source under INPUT, on Ray.

    INPUT ──one listing──► sources (sizes, identities) ──what the batches under OUTPUT say is done──► to do
      ──plan.choose_splits──► whole sources, and split ones (probe tasks: frame ranges)
      ──graph.run_units (Ray Data, a window of units at a time; model actors shared)──► result rows
      ──whole source: commit │ split source, all ranges in: ledger check ─► assemble overlay.mp4 ─► commit
      ──commits (batches: manifest + frames/ part)──► report.json

Resume: a re-run skips committed sources and finished ranges; a source whose file changed is redone
from scratch (its batch entry dropped); other settings are refused unless --overwrite. One run at a
time holds OUTPUT (``lease.py``).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from roadseg_dist import render, storage
from roadseg_dist.ops import resources, watchdog
from roadseg_dist.errors import InputError, JobError  # noqa: F401 - InputError: raised here
from roadseg_dist.infer import graph, ledger, monitor, plan as plan_mod, report as report_mod, stats as stats_mod
from roadseg_dist.infer import sizing as sizing_mod
from roadseg_dist.infer.splits import collect_videos, finish_split, plan_splits
from roadseg_dist.infer.commits import Commits
from roadseg_dist.infer.inputs import Source, discover
from roadseg_dist.infer.lease import Lease, LeaseHeld
from roadseg_dist.infer.process import OutputError, Target
from roadseg_dist.infer.settings import InferSettings
from roadseg_dist.infer.state import State, checkpoint_identity, signature

log = logging.getLogger(__name__)
WINDOW_UNITS = 1024  # units per Ray Data dataset: the driver holds a window, not the archive


class OutputFull(JobError):
    """OUTPUT's disk is full: the run stopped; what was finished is kept, a re-run goes on."""


@dataclasses.dataclass
class DriverRun:
    """What the driver knows during one run."""
    s: InferSettings
    state: State
    checkpoint: str                     # the resolved checkpoint directory every actor loads
    target: Target
    sources: dict[str, Source]
    commits: Commits
    plans: dict[str, dict] = dataclasses.field(default_factory=dict)       # split sources
    left: dict[str, set[int]] = dataclasses.field(default_factory=dict)    # split: range starts to do
    rows: dict[str, dict[int, dict]] = dataclasses.field(default_factory=dict)  # split: results so far
    failures: dict[str, dict] = dataclasses.field(default_factory=dict)
    videos: dict[str, Any] = dataclasses.field(default_factory=dict)       # id -> (ObjectRef, entry, table)
    redo: list = dataclasses.field(default_factory=list)                   # units to run in a later window
    frames_now: int = 0
    sources_done: int = 0
    whole_bytes_done: int = 0           # bytes and frames of the whole sources finished (for the estimate)
    whole_frames_done: int = 0
    fatal: str = ""
    actors_summary: dict = dataclasses.field(default_factory=dict)  # report.json's model_actors
    nodes: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # node -> units done

    def finished(self, entry: dict, table) -> None:
        """A source is complete: it goes into the next batch."""
        self.commits.add(entry, table)
        self.sources_done += 1
        if entry["id"] not in self.plans:
            self.whole_bytes_done += self.sources[entry["id"]].size
            self.whole_frames_done += int(entry["frames"])

    def fail(self, sid: str, why: str) -> None:
        src = self.sources.get(sid)
        url = (src.url or (src.images[0].rsplit("/", 1)[0] if src.images else "")) if src else sid
        self.failures.setdefault(sid, {"id": sid, "input": storage.redact(url), "reason": why})


# --- before Ray: inputs, model, OUTPUT --------------------------------------------------------------

def check_model(s: InferSettings) -> tuple[str, dict, tuple[int, int], str]:
    """Load the checkpoint once here so that a bad CKPT fails fast with its own message, not in an
    actor: (its directory, its identity, the model's input size, the model id of the stats)."""
    from roadseg_dist.models.checkpoint import load_model

    _, meta = load_model(s.checkpoint)
    if not (s.size or meta.get("input_size")):
        raise InputError(f"checkpoint {storage.redact(s.checkpoint)} records no input_size: pass --size HxW")
    identity = checkpoint_identity(s.checkpoint)
    return (storage.normalize(meta["checkpoint"]), identity, tuple(s.size or meta["input_size"]),
            stats_mod.model_id(meta, identity))


def prepare_output(s: InferSettings, state: State, sources: list[Source], model: dict) -> list:
    """Refuse a resume with other settings; on --overwrite remove what earlier runs wrote for these
    sources. Returns the committed batches."""
    url, sig = state.signature_url(), signature(s, model)
    batches = state.batches()
    if s.overwrite:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(state.forget, [src.id for src in sources]))
        batches = state.drop(batches, {src.id for src in sources})
        storage.remove(storage.join(state.output, "report.json"))
    elif storage.exists(url):
        old = state.read_json(url)
        if old != sig:
            diff = sorted(k for k in sig if old.get(k) != sig[k])
            raise InputError(f"{storage.redact(state.output)} holds a run with other settings "
                             f"({', '.join(diff)}): resume with the same settings, pass --overwrite, "
                             f"or choose another OUTPUT")
        return batches
    state.write_json(url, sig)
    return batches


def drop_changed(job: DriverRun, batches: list) -> tuple[list, dict[str, dict]]:
    """Committed sources whose file changed since (ETag, size or mtime) are redone from scratch.
    Returns the batches left and what they say is done (id -> entry)."""
    done = {e["id"]: e for b in batches for e in b.sources}
    changed = {sid for sid, e in done.items() if sid in job.sources and e.get("identity") != job.sources[sid].identity}
    for sid in sorted(changed):
        log.info("%s changed since it was segmented: redoing it", storage.redact(job.sources[sid].url or sid))
        job.state.forget(sid)
    if changed:
        batches = job.state.drop(batches, changed)
        done = {e["id"]: e for b in batches for e in b.sources}
    return batches, done


# --- results ----------------------------------------------------------------------------------------

def take(job: DriverRun, row: dict[str, Any]) -> None:
    """One unit's result row."""
    sid = row["video"]
    job.nodes[str(row.get("node", ""))[:12]] += 1
    if row.get("fatal"):
        job.fatal = job.fatal or row["fatal"]
    job.frames_now += int(row["frames"])
    if sid in job.failures:
        return
    if row["error"]:
        job.fail(sid, row["error"])
    elif row["whole"]:
        table = stats_mod.from_bytes(row["stats"])
        problem = ledger.check_indices(table.column("frame").to_pylist(), row["stride"]) or (
            "" if len(table) else "no frame could be decoded")
        if problem:
            job.fail(sid, problem)
        else:
            job.finished({"id": sid, "identity": row["identity"], "frames": len(table), "fps": row["fps"]}, table)
    else:
        job.rows[sid][row["start"]] = row
        job.left[sid].discard(row["start"])
        if not job.left[sid]:
            finish_split(job, sid)


def execute(job: DriverRun, works: list, actors: list, sizing: sizing_mod.Sizing) -> None:
    """Run the units a window at a time, then whatever had to be redone, until nothing is left."""
    while works and not job.fatal:
        window, works = works[:WINDOW_UNITS], works[WINDOW_UNITS:]
        for row in graph.run_units(window, job.target, actors, sizing):
            take(job, row)
            collect_videos(job, block=False)
            commit(job, final=False)
            if job.fatal:
                break
        works, job.redo = works + job.redo, []
    for sid, left in job.left.items():
        if left and sid not in job.failures and not job.fatal:
            job.fail(sid, f"frame range(s) from packet {min(left)} ended without a result")


def run(s: InferSettings, show_progress: bool = True) -> dict[str, Any]:
    """Segment everything under ``s.input``; returns the report (also written to OUTPUT/report.json)."""
    t0 = time.time()
    try:
        sources = discover(s.input)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(storage.redact(str(exc))) from None
    if not sources:
        raise InputError(f"no videos or images under {storage.redact(s.input)} "
                         f"(looked for video and image file extensions)")
    checkpoint, model, size, model_id = check_model(s)
    state = State(s.output)
    try:
        lease = Lease(state.output, state.root).acquire()
    except LeaseHeld as exc:
        raise InputError(str(exc)) from None
    try:
        return _run(s, sources, state, checkpoint, model, size, model_id, t0, show_progress)
    finally:
        lease.release()


def _run(s, sources, state, checkpoint, model, size, model_id, t0, show_progress) -> dict[str, Any]:
    from roadseg_dist.ops.cluster import init_ray

    target = Target(state.output, tuple(k for k in render.FRAME_KINDS if s.writes(k)),
                    s.video_codec if "video" in s.outputs else "", "stats" in s.outputs, tuple(size), s.every,
                    s.fps, s.batch_size, s.alpha, s.jpeg_quality, model_id)
    job = DriverRun(s, state, checkpoint, target, {src.id: src for src in sources}, Commits(state, target.stats))
    _, done = drop_changed(job, prepare_output(s, state, sources, model))
    already = [src.id for src in sources if src.id in done]
    pending = [src for src in sources if src.id not in done]
    local_cpus = float(int(s.num_cpus or os.cpu_count() or 2))  # what init_ray gives a local Ray
    resources.check_before_start(sizing_mod.resource_request(s, sizing_mod.size_actors(local_cpus, 0, s)), s.address, s.num_cpus)
    init_ray(s.address, s.num_cpus)
    sizing = sizing_mod.sizing_for(s)
    actors = graph.start_models(s, sizing, checkpoint, size)  # they load while the splits are planned
    try:
        _execute(job, pending, actors, sizing, show_progress)
    finally:
        graph.stop_models(actors)
    commit(job, final=True)
    report = report_mod.build(s, sources=len(sources), skipped=len(already), done=job.commits.committed,
                              failures=list(job.failures.values()), frames=job.frames_now,
                              seconds=time.time() - t0,
                              frames_total=job.commits.frames + sum(int(done[i].get("frames", 0)) for i in already))
    report["model_actors"] = job.actors_summary
    report["units_per_node"] = dict(sorted(job.nodes.items()))
    try:
        report_mod.write(state.output, report)
    except OSError as exc:  # the disk that stopped the run may have no room for the report either
        job.fatal = job.fatal or str(OutputError(storage.join(state.output, "report.json"), exc))
    if job.fatal:
        raise OutputFull(f"{job.fatal}. The run stopped; the {job.commits.committed} source(s) "
                         "it finished are kept: free some space and run the same command again to finish the rest")
    return report


def commit(job: DriverRun, final: bool) -> None:
    """Write the finished sources' batch when due (``final``: now); a commit that cannot be written
    (a full disk) stops the run like a unit that cannot write its files."""
    try:
        if final:
            job.commits.flush()
        else:
            job.commits.tick()
    except OutputError as exc:
        job.fatal = job.fatal or str(exc)


def _execute(job: DriverRun, pending: list[Source], actors: list, sizing: sizing_mod.Sizing, show_progress: bool) -> None:
    s = job.s
    plan_splits(job, pending, sizing.tasks)
    works = [w for sid in sorted(job.plans) if sid not in job.failures for w in
             plan_mod.range_works(job.plans[sid], job.left[sid])]
    works += [plan_mod.whole(src, s.fps) for src in pending if src.id not in job.plans and src.id not in job.failures]
    for sid in [sid for sid, left in job.left.items() if not left and sid not in job.failures]:
        finish_split(job, sid)  # every range finished before a crash; only the video was missing
    dog = watchdog.Watchdog("infer", s.stall_timeout, pending=lambda: (
        f"{sizing.actors} model actor(s) x {sizing.actor_cpus:g} CPU, {sizing.tasks} unit(s) in flight: "
        f"{job.frames_now} frames written"))
    with monitor.Monitor(job, actors, dog, pending, show_progress) as mon, watchdog.watch(dog):
        execute(job, works, actors, sizing)
        collect_videos(job, block=True)
        job.actors_summary = mon.actors_summary()
