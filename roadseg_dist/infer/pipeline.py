"""``roadseg infer``: segment every frame of every video under INPUT with Ray Data.

    sources ──probe (Ray tasks: the container index)──► plans of keyframe-aligned frame ranges
      ──graph.dataset: decode tasks ─► Segmenter actors ─► writer tasks──► files + result rows
      ──ledger (driver)──► per-range parts (resume markers) ──► overlay.mp4 (task) ──► done markers
      ──► frames.parquet, report.json

Resume (``state.py``): a re-run skips done sources and finished ranges, so nothing complete is
rewritten; a range cut short by a crash is redone, its files overwritten with the same bytes. A
source whose file changed since its plan is redone from scratch; other settings need --overwrite.
A source whose ranges do not join up (``ledger.source_problem``) is decoded again as one range.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from roadseg_dist import labels, progress, resources, storage, watchdog
from roadseg_dist.infer import graph, ledger as ledger_mod, report as report_mod
from roadseg_dist.infer.inputs import Source, discover
from roadseg_dist.infer.settings import InferSettings
from roadseg_dist.infer.state import State, checkpoint_identity, file_identity, read_table, signature, write_table

log = logging.getLogger(__name__)


class InputError(Exception):
    """INPUT, CKPT or OUTPUT cannot be used as given (the CLI turns it into a usage error)."""


@dataclasses.dataclass
class Job:
    """What the driver knows during one run."""
    s: InferSettings
    state: State
    checkpoint: str                     # the resolved checkpoint directory every actor loads
    size: tuple[int, int]               # the model's input HxW (--size, else the checkpoint's)
    plans: dict[str, dict] = dataclasses.field(default_factory=dict)
    left: dict[str, set[int]] = dataclasses.field(default_factory=dict)  # id -> range starts to do
    failures: dict[str, dict] = dataclasses.field(default_factory=dict)
    videos: dict[str, Any] = dataclasses.field(default_factory=dict)     # id -> ObjectRef of assemble_video
    done_now: list[str] = dataclasses.field(default_factory=list)
    redo: list[str] = dataclasses.field(default_factory=list)            # ids to decode again as one range
    frames_now: int = 0

    def fail(self, sid: str, why: str) -> None:
        url = self.plans.get(sid, {}).get("url") or sid
        self.failures.setdefault(sid, {"id": sid, "input": storage.redact(url), "reason": why})


def stats_table(sid: str, result: ledger_mod.RangeResult):
    import pyarrow as pa

    order = sorted(result.fractions)
    cols = {"video": pa.array([sid] * len(order), pa.string()), "frame": pa.array(order, pa.int64()),
            "timestamp": pa.array([result.times[i] for i in order], pa.float64())}
    mat = np.stack([result.fractions[i] for i in order]) if order else np.zeros((0, labels.NUM_CLASSES), np.float32)
    for c, name in enumerate(labels.CLASSES):
        cols[name] = pa.array(mat[:, c], pa.float32())
    return pa.table(cols).replace_schema_metadata({"end": json.dumps(result.end)})


# --- before Ray: inputs, model, OUTPUT --------------------------------------------------------------

def check_model(s: InferSettings) -> tuple[str, dict, tuple[int, int]]:
    """Load the checkpoint once here so that a bad CKPT fails fast with its own message, not in an
    actor: (its directory, its identity, the model's input size)."""
    from roadseg_dist.models.checkpoint import load_model

    _, meta = load_model(s.checkpoint)
    if not (s.size or meta.get("input_size")):
        raise InputError(f"checkpoint {storage.redact(s.checkpoint)} records no input_size: pass --size HxW")
    identity = checkpoint_identity(s.checkpoint)
    return storage.normalize(meta["checkpoint"]), identity, tuple(s.size or meta["input_size"])


def prepare_output(s: InferSettings, state: State, sources: list[Source], model: dict) -> None:
    """Refuse a resume with other settings; on --overwrite remove what earlier runs wrote for these sources."""
    url, sig = state.signature_url(), signature(s, model)
    if s.overwrite:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(state.forget, [src.id for src in sources]))
        for name in ("frames.parquet", "report.json"):
            storage.remove(storage.join(state.output, name))
    elif storage.exists(url):
        old = state.read_json(url)
        if old != sig:
            diff = sorted(k for k in sig if old.get(k) != sig[k])
            raise InputError(f"{storage.redact(state.output)} holds a run with other settings "
                             f"({', '.join(diff)}): resume with the same settings, pass --overwrite, "
                             f"or choose another OUTPUT")
        return
    state.write_json(url, sig)


def current_identity(src: Source) -> str:
    if src.kind == "images":
        return f"images:{len(src.images)}:" + ",".join(u.rsplit("/", 1)[-1] for u in src.images)
    return file_identity(src.url)


def drop_changed(job: Job, sources: list[Source]) -> None:
    """Sources planned earlier whose file changed since (ETag, size or mtime) start again from scratch."""
    planned = job.state.listing("plans")
    known = [src for src in sources if job.state.plan_url(src.id) in planned]

    def check(src: Source) -> None:
        plan = job.state.read_json(job.state.plan_url(src.id))
        try:
            same = plan.get("identity") == current_identity(src)
        except Exception:  # noqa: BLE001 - gone or unreadable now: its probe will report it
            same = False
        if same:
            job.plans[src.id] = plan
        else:
            log.info("%s changed since it was planned: redoing it", storage.redact(src.url or src.id))
            job.state.forget(src.id)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(check, known))


# --- with Ray ----------------------------------------------------------------------------------------

def plan(job: Job, sources: list[Source]) -> None:
    import ray

    todo = [src for src in sources if src.id not in job.plans]
    probe = ray.remote(num_cpus=graph.TASK_CPUS, max_retries=2)(graph.probe_source)
    for p in ray.get([probe.remote(src, job.s) for src in todo]):
        if "error" in p:
            job.plans[p["id"]] = p
            job.fail(p["id"], p["error"])
            continue
        try:
            job.state.write_json(job.state.plan_url(p["id"]), p)
            job.plans[p["id"]] = p
        except Exception as exc:  # noqa: BLE001 - this source's failure, not the run's
            job.fail(p["id"], "its plan could not be saved: " + graph.reason(exc))
    finished = job.state.listing("parts")
    for sid, p in job.plans.items():
        if sid not in job.failures:
            job.left[sid] = {r["start"] for r in p["ranges"] if job.state.part_url(sid, r["start"]) not in finished}


def work_items(job: Job, sids: list[str]) -> list[dict[str, Any]]:
    items = []
    for sid in sids:
        p = job.plans[sid]
        for r in p["ranges"]:
            if r["start"] in job.left[sid]:
                images = p["images"][r["start"]:r["end"]] if p["kind"] == "images" else []
                items.append({"video": sid, "kind": p["kind"], "url": p["url"], "images": images, "range": r,
                              "stride": p["stride"], "fps": p["fps"]})
    return items


def finish_range(job: Job, sid: str, start: int, result: ledger_mod.RangeResult) -> None:
    if sid in job.failures:
        return
    if result.end["error"]:
        job.fail(sid, result.end["error"])
        return
    try:  # the range's completion marker, written after all its files
        write_table(job.state.part_url(sid, start), stats_table(sid, result))
    except Exception as exc:  # noqa: BLE001
        job.fail(sid, "its progress could not be saved: " + graph.reason(exc))
        return
    job.left[sid].discard(start)
    if not job.left[sid]:
        finish_source(job, sid)


def finish_source(job: Job, sid: str) -> None:
    """All ranges in: check they join up, then assemble overlay.mp4 (or mark the source done)."""
    try:
        _finish_source(job, sid)
    except Exception as exc:  # noqa: BLE001 - storage trouble with one source is that source's failure
        job.fail(sid, "could not be finished: " + graph.reason(exc))


def _finish_source(job: Job, sid: str) -> None:
    import ray

    p = job.plans[sid]
    parts = [read_table(job.state.part_url(sid, r["start"])) for r in p["ranges"]]
    ends = [json.loads(part.schema.metadata[b"end"]) for part in parts]
    problem = ledger_mod.source_problem(ends)
    if problem and len(p["ranges"]) > 1:
        log.info("%s: %s; decoding it again from the start as one range", sid, problem)
        job.redo.append(sid)
        return
    indices = [int(i) for part in parts for i in part.column("frame").to_pylist()]
    problem = problem or ledger_mod.check_indices(indices, p["stride"]) or (
        "" if indices else "no frame could be decoded")
    if problem:
        job.fail(sid, problem)
        return
    p["frames"] = len(indices)
    if "video" in job.s.outputs:
        task = ray.remote(num_cpus=graph.TASK_CPUS * 2, max_retries=2)(graph.assemble_video)
        job.videos[sid] = task.remote(job.state.output, sid, indices, p["fps"] / p["stride"], p["width"],
                                      p["height"], job.s.video_codec)
    else:
        mark_done(job, sid)


def as_one_range(job: Job, sid: str, counted: int) -> None:
    """Start ``sid`` over as a single range decoded from its first frame (its seeks were not exact)."""
    p = job.plans[sid]
    job.state.forget(sid)
    job.frames_now -= counted
    p["ranges"] = [{"start": 0, "end": None, "dts": None, "end_dts": None, "seek_ts": None,
                    "block": p["ranges"][-1].get("block", 1 << 20)}]
    p["sequential"] = True
    job.state.write_json(job.state.plan_url(sid), p)
    job.left[sid] = {0}


def mark_done(job: Job, sid: str) -> None:
    p = job.plans[sid]
    job.state.write_json(job.state.done_url(sid), {"id": sid, "frames": p.get("frames", 0),
                                                   "identity": p.get("identity", "")})
    job.done_now.append(sid)


def collect_videos(job: Job, block: bool) -> None:
    import ray

    if not job.videos:
        return
    refs = list(job.videos.values())
    ready, _ = ray.wait(refs, num_returns=len(refs) if block else 1, timeout=None if block else 0)
    for sid in [k for k, v in job.videos.items() if v in ready]:
        try:
            ray.get(job.videos.pop(sid))
        except Exception as exc:  # noqa: BLE001
            job.fail(sid, "overlay.mp4 could not be written: " + graph.reason(exc))
            continue
        try:
            mark_done(job, sid)
        except Exception as exc:  # noqa: BLE001
            job.fail(sid, "its done marker could not be written: " + graph.reason(exc))


def execute(job: Job, sids: list[str], sizing: graph.Sizing, show) -> None:
    """Run the graph over the ranges left, passes until no source needs decoding again."""
    while sids:
        book = ledger_mod.Ledger({sid: job.plans[sid]["stride"] for sid in sids})
        counted: dict[str, int] = {}
        items = work_items(job, sids)
        if items:
            for batch in graph.dataset(items, job.s, job.checkpoint, sizing, job.state.output, job.size).iter_batches(
                    batch_size=None, batch_format="numpy"):
                before = book.frames
                for sid, start, result in book.add_batch(batch):
                    counted[sid] = counted.get(sid, 0) + len(result.fractions)
                    finish_range(job, sid, start, result)
                job.frames_now += book.frames - before
                collect_videos(job, block=False)
                show(job)
        for sid, start in book.unfinished():
            job.fail(sid, f"frame range from packet {start} ended without a result")
        sids, job.redo = [], job.redo
        for sid in job.redo:
            try:
                as_one_range(job, sid, counted.get(sid, 0))
                sids.append(sid)
            except Exception as exc:  # noqa: BLE001 - this source's failure
                job.fail(sid, "could not be restarted as one range: " + graph.reason(exc))
        job.redo = []


def write_stats(job: Job, done_ids: list[str]) -> None:
    import pyarrow as pa

    url = storage.join(job.state.output, "frames.parquet")
    if "stats" not in job.s.outputs or (not job.done_now and storage.exists(url)):
        return  # nothing new: leave the finished table alone
    parts = []
    for sid in sorted(done_ids):
        p = job.plans.get(sid) or job.state.read_json(job.state.plan_url(sid))
        parts += [read_table(job.state.part_url(sid, r["start"])) for r in p["ranges"]]
    parts = [t.replace_schema_metadata(None) for t in parts]
    table = pa.concat_tables(parts) if parts else stats_table("", ledger_mod.RangeResult()).slice(0, 0)
    write_table(url, table.replace_schema_metadata(None))


def frame_total(job: Job, sid: str) -> int:
    if sid in job.done_now:
        return int(job.plans[sid].get("frames", 0))
    return int(job.state.read_json(job.state.done_url(sid)).get("frames", 0))


def run(s: InferSettings, show_progress: bool = True) -> dict[str, Any]:
    """Segment everything under ``s.input``; returns the report (also written to OUTPUT/report.json)."""
    from roadseg_dist.cluster import init_ray

    t0 = time.time()
    try:
        sources = discover(s.input)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(storage.redact(str(exc))) from None
    if not sources:
        raise InputError(f"no videos or images under {storage.redact(s.input)} "
                         f"(looked for video and image file extensions)")
    checkpoint, model, size = check_model(s)
    job = Job(s, State(s.output), checkpoint, size)
    prepare_output(s, job.state, sources, model)
    drop_changed(job, sources)
    done_markers = job.state.listing("done")
    already = [src.id for src in sources if job.state.done_url(src.id) in done_markers and src.id in job.plans]
    pending = [src for src in sources if src.id not in set(already)]
    local_cpus = float(int(s.num_cpus or os.cpu_count() or 2))  # what init_ray gives a local Ray
    resources.check_before_start(graph.resource_request(s, graph.size_actors(local_cpus, 0, s)), s.address, s.num_cpus)
    init_ray(s.address, s.num_cpus)
    plan(job, pending)
    sizing = graph.sizing_for(s)
    expected = sum(max(p.get("frame_count", 0), 1) // p["stride"] for sid, p in job.plans.items()
                   if sid not in job.failures and sid not in already)
    quiet = {} if show_progress else {"echo": lambda line: None, "terminal": False}
    dog = watchdog.Watchdog("infer", s.stall_timeout, pending=lambda: (
        f"segmented frames from {sizing.actors} model actor(s) x {sizing.actor_cpus:g} CPU: "
        f"{job.frames_now}/{expected} frames done"))
    with progress.Progress("infer", expected, "frames", **quiet) as bar:
        def show(j: Job) -> None:
            dog.beat(f"{j.frames_now} frames segmented")
            bar.update(j.frames_now, total=max(expected, j.frames_now), failures=len(j.failures),
                       note=f"videos {len(j.done_now)}/{len(pending)}")

        for sid in [sid for sid, left in job.left.items() if not left and sid not in already]:
            finish_source(job, sid)  # every range finished before a crash; only the video was missing
        with watchdog.watch(dog):
            execute(job, [sid for sid in job.left if job.left[sid] and sid not in job.failures], sizing, show)
        collect_videos(job, block=True)
        show(job)
    done_ids = already + job.done_now
    write_stats(job, done_ids)
    report = report_mod.build(s, sources=len(sources), skipped=len(already), done=job.done_now,
                              failures=list(job.failures.values()), frames=job.frames_now,
                              seconds=time.time() - t0, frames_total=sum(frame_total(job, i) for i in done_ids))
    report_mod.write(job.state.output, report)
    return report
