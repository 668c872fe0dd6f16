"""The Ray side of ``roadseg infer``, kept thin: its Ray calls (the sizing is ``sizing.py``).

    units of work (whole sources, frame ranges of split ones) ──Ray Data: one task per unit, spread
    over the nodes (``process.process``)──► result rows to the driver
                 each task ──model input──► Segmenter actors (GPU or CPU) ──masks──► back to it

Model actors are plain Ray actors the driver starts once (``start_models``) and every task calls
(``Models``): a task keeps its full-resolution frames, so only the model's input and the masks cross
between processes. Split sources are probed by tasks that save their plans; their pieces of
overlay.mp4 are joined by a task (``assemble_video``).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np

from roadseg_dist import retries, storage
from roadseg_dist.ops.cluster import executor_wait
from roadseg_dist.infer import plan as plan_mod, video_out
from roadseg_dist import render
from roadseg_dist.infer.sizing import Sizing
from roadseg_dist.infer.process import OutputError, Target, Work, process, reason, result_row
from roadseg_dist.infer.state import State
from roadseg_dist.infer.stats import Rows

# --- model actors -----------------------------------------------------------------------------------

def start_models(s, sizing: Sizing, checkpoint: str, size: tuple[int, int]) -> list:
    """The model actors; restarted by Ray if their process dies, their calls then sent again."""
    import ray

    from roadseg_dist.infer.segment import Segmenter

    actor = ray.remote(Segmenter).options(
        num_cpus=sizing.actor_cpus, num_gpus=1 if sizing.gpu else 0, max_restarts=-1, max_task_retries=-1,
        max_concurrency=max(8, 4 * math.ceil(sizing.tasks / sizing.actors)))
    return [actor.remote(checkpoint, tuple(size), sizing.gpu, sizing.threads, s.channels_last, s.compile, s.amp,
                         sizing.batch, s.uncertain_below if s.confidence else None) for _ in range(sizing.actors)]


def stop_models(actors: list) -> None:
    """Free the model actors' CPUs and GPUs now, not when their handles are collected."""
    import ray

    for actor in actors:
        ray.kill(actor, no_restart=True)


class Models:
    """``submit(inputs) -> collect()`` over the model actors: chunks go round the actors from a random
    start, so the units of many tasks spread evenly."""

    def __init__(self, actors: list):
        self.actors = actors
        self.turn = itertools.count(random.randrange(max(1, len(actors))))

    def __call__(self, inputs: np.ndarray):
        import ray

        ref = self.actors[next(self.turn) % len(self.actors)].predict.remote(inputs)
        return lambda: ray.get(ref)


# --- units of work ----------------------------------------------------------------------------------

def process_unit(work: Work, target: Target, submit, pauses=retries.OUTAGE_PAUSES_S, sleep=None) -> dict[str, Any]:
    """``process.process`` with what a unit's failure means: an S3 outage (unreachable, silent, busy)
    pauses and tries the unit again (``retries.through_outages``); a full disk is ``fatal`` (the run
    stops); anything else about the source's files is that source's failure."""
    try:
        return {**retries.through_outages(process, work, target, submit, pauses=pauses, sleep=sleep), "fatal": ""}
    except OutputError as exc:
        if exc.disk_full:
            return failed_row(work, str(exc), fatal=str(exc))
        return failed_row(work, reason(exc))
    except retries.StorageError as exc:
        return failed_row(work, reason(exc))


def failed_row(work: Work, why: str, fatal: str = "") -> dict[str, Any]:
    return {**result_row(work, {"error": why}, Rows(work.video, "")), "fatal": fatal}


def process_batch(batch: dict[str, np.ndarray], target: Target, actors: list) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data ``map_batches`` over units (JSON, one a row): their result rows."""
    import cv2

    import ray

    cv2.setNumThreads(1)  # parallelism comes from the tasks
    models = Models(actors)
    node = ray.get_runtime_context().get_node_id()
    for text in batch["work"]:
        work = Work(**json.loads(text))
        row = {**process_unit(work, target, models), "node": node}
        yield {k: np.array([v], dtype=object if isinstance(v, (bytes, str)) else None) for k, v in row.items()}


def run_units(works: list[Work], target: Target, actors: list, sizing: Sizing) -> Iterator[dict[str, Any]]:
    """The units' result rows as they finish (any order)."""
    import ray.data

    items = [{"work": json.dumps(dataclasses.asdict(w))} for w in works]
    blocks = blocks_for(len(items), sizing.tasks)
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    ds = ds.map_batches(process_batch, fn_kwargs={"target": target, "actors": actors}, batch_size=1,
                        batch_format="numpy", num_cpus=sizing.task_cpus,
                        compute=ray.data.TaskPoolStrategy(size=max(1, min(sizing.tasks, blocks))))
    with executor_wait(UNITS_WAIT_S):
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["video"])):
                yield {k: _plain(v[i]) for k, v in batch.items()}


UNITS_WAIT_S = 0.1  # a task's slot idles up to this between tasks of units that run for seconds
MAX_UNITS_PER_TASK = 16


def blocks_for(units: int, tasks: int) -> int:
    """Blocks (one task each) for ``units``: one unit a task while there are few, else up to
    MAX_UNITS_PER_TASK in a task (results still stream back one by one), so that an archive of short
    clips does not cost the driver a task per clip; at least four tasks per slot for the load to even out."""
    per_task = max(1, min(MAX_UNITS_PER_TASK, units // max(1, 4 * tasks)))
    return max(1, -(-units // per_task))


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


# --- split sources ----------------------------------------------------------------------------------

def probe_and_save(src, segment_frames: int, stride_of, image_fps, output: str) -> dict[str, Any]:
    """A split source's plan, saved under OUTPUT's state before it is returned. Runs as a Ray task."""
    p = plan_mod.probe_plan(src, segment_frames, stride_of, image_fps)
    if "error" not in p:
        try:
            retries.through_outages(State(output).write_json, State(output).plan_url(src.id), p)
        except Exception as exc:  # noqa: BLE001 - this source's failure, not the run's
            return {"id": src.id, "url": src.url, "error": "its plan could not be saved: " + reason(exc)}
    return p


def assemble_video(output: str, sid: str, indices: list[int], fps: float, width: int, height: int,
                   codec: str = "h264") -> int:
    """OUT/<id>/overlay.mp4 of a split source (see ``join_video``), through an S3 outage."""
    return retries.through_outages(join_video, output, sid, indices, fps, width, height, codec)


def join_video(output: str, sid: str, indices: list[int], fps: float, width: int, height: int,
               codec: str = "h264") -> int:
    """OUT/<id>/overlay.mp4 of a split source in index order, uploaded when complete: H.264 joined
    from its ranges' pieces, or (pieces missing, MJPEG) from the overlay JPEGs, streamed with bounded
    read-ahead. The pieces are removed once the video is in place."""
    pieces_url = State(output).pieces_url(sid)
    chosen = None
    if codec == "h264" and storage.exists(pieces_url):
        chosen = video_out.cover(filter(None, map(video_out.Piece.parse, storage.list_files(pieces_url))), indices)
    with storage.atomic_output(storage.join(output, sid, "overlay.mp4"), suffix=".mp4") as tmp:
        try:
            if chosen is None:
                raise ValueError("no pieces cover the frames")
            urls = [storage.join(pieces_url, p.name) for p in chosen]
            frames = video_out.join_pieces(tmp, _read_ahead(urls), fps)
        except ValueError:
            urls = [storage.join(output, sid, render.frame_name(i, "overlay")) for i in indices]
            frames = video_out.write_overlay_video(tmp, _read_ahead(urls), fps, width, height, codec)
    storage.remove(pieces_url, recursive=True)
    return frames


def _read_ahead(urls: list[str]) -> Iterator[bytes]:
    """The files' bytes in order, a few in flight, at most 32 in memory."""
    with ThreadPoolExecutor(4) as pool:
        for chunk in range(0, len(urls), 32):
            yield from pool.map(storage.read_bytes, urls[chunk:chunk + 32])
