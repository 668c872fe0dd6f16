"""The Ray side of ``roadseg infer``, kept thin: the task functions and the Ray Data graph.

    frame ranges ──decode (tasks, flat_map)──► frame rows + one end row per range
      ──Segmenter (actor pool, map_batches)──► masks ──write_outputs (tasks)──► files + result rows

Each function is plain Python over plain values (tested without Ray); ``dataset`` wires them.
"""
from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np

from roadseg_dist import labels, resources, storage
from roadseg_dist.infer import frames as frames_mod
from roadseg_dist.infer import render, rows
from roadseg_dist.infer.inputs import Source
from roadseg_dist.infer.video_out import write_overlay_video

FRAME_KINDS = ("mask", "color", "overlay", "original")
WRITE_THREADS = 4  # S3 PUTs are latency-bound; a few in flight per writer task keep them busy
TASK_CPUS = 0.25   # decode and write tasks: light, many at once, never starving the model actors


def reason(exc: BaseException) -> str:
    if isinstance(exc, frames_mod.DecodeError):
        return str(exc)
    return storage.redact(f"{type(exc).__name__}: {exc}")


@dataclasses.dataclass(frozen=True)
class Sizing:
    """How the job uses the cluster: model actors, their CPUs and torch threads."""
    actors: int
    actor_cpus: float
    threads: int
    gpu: bool


def size_actors(cluster_cpus: float, gpus: int, s, node_cpus: list[float] | None = None) -> Sizing:
    """Defaults sized to the machine. GPU: one actor per GPU (1 CPU each; decode and encode run in
    CPU tasks). CPU only: the model gets ~3/4 of the CPUs as actors of at most 8 torch threads each
    (threads = CPUs reserved), each fitting on one of the nodes (``node_cpus``), and the rest goes to
    decode and write tasks (2 cores: one actor, 1.5 CPUs, 2 threads). ``--concurrency`` /
    ``--actor-cpus`` override."""
    if s.gpu:
        actors = s.concurrency or max(1, gpus)
        cpus = s.actor_cpus or 1.0
        return Sizing(actors, cpus, max(1, math.ceil(cpus)), True)
    share = max(1.0, cluster_cpus * 0.75)
    nodes = node_cpus or [cluster_cpus]
    per_actor = min(share, 8.0, max(nodes))
    fits = sum(math.floor(n / per_actor + 1e-9) for n in nodes)  # actors the nodes can hold
    actors = s.concurrency or max(1, min(fits, math.ceil(share / per_actor - 1e-9)))
    cpus = s.actor_cpus or max(1.0, math.floor(min(per_actor, share / actors) * 4) / 4)
    return Sizing(actors, cpus, max(1, math.ceil(cpus)), False)


def resource_request(s, sizing: Sizing) -> resources.Request:
    return resources.Request(job="infer", workers=sizing.actors, cpus_per_worker=sizing.actor_cpus,
                             gpus_per_worker=1 if s.gpu else 0, task_cpus=TASK_CPUS,
                             worker_name="model actor", task_name="decode/write task",
                             workers_flag="--concurrency", cpus_flag="--actor-cpus")


def node_cpus() -> list[float]:
    """The CPUs of each live node of the connected Ray."""
    import ray

    return [float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")] or [1.0]


def sizing_for(s) -> Sizing:
    """The actor pool sized to the connected Ray (``graph.size_actors``); a request that cannot fit
    raises ``ResourceError`` naming the numbers and the flags, before any work starts."""
    offer = resources.offer_from_ray(resources.is_local(s.address), s.num_cpus)
    sizing = size_actors(offer.cpus or 1.0, int(offer.gpus or 0), s, node_cpus())
    resources.plan(resource_request(s, sizing), offer)
    return sizing


def probe_source(source: Source, s) -> dict[str, Any]:
    """Source -> its plan (frame ranges), or {"error": reason}. Runs as a Ray task."""
    from roadseg_dist.infer.state import file_identity

    try:
        if source.kind == "images":
            first = next(frames_mod.decode_images(source.images, 0, 1))[1]
            count, fps, (h, w) = len(source.images), s.fps or frames_mod.DEFAULT_IMAGE_FPS, first.shape[:2]
            ranges = [{"start": a, "end": b} for a, b in frames_mod.image_ranges(count, s.segment_frames)]
            identity = f"images:{len(source.images)}:" + ",".join(u.rsplit("/", 1)[-1] for u in source.images)
        else:
            info = frames_mod.probe(source.url)
            count, fps, h, w = info.frame_count, info.fps, info.height, info.width
            ranges = [dataclasses.asdict(r) for r in frames_mod.plan_ranges(info, s.segment_frames)]
            identity = file_identity(source.url)
        return {"id": source.id, "kind": source.kind, "url": source.url, "images": list(source.images),
                "identity": identity, "frame_count": count, "fps": fps, "height": h, "width": w,
                "stride": s.stride(fps), "ranges": ranges}
    except Exception as exc:  # noqa: BLE001 - any failure is this source's, reported, not raised
        return {"id": source.id, "url": source.url or (source.images[0] if source.images else ""),
                "error": reason(exc)}


def decode_range_rows(item: dict[str, Any], threads: int = 1) -> Iterator[dict[str, Any]]:
    """One frame range -> a frame row per decoded frame it keeps, then its end row."""
    sid, rng, stride = item["video"], item["range"], int(item["stride"])
    start, marks = int(rng["start"]), {}
    try:
        if item["kind"] == "images":
            images = item["images"]
            for index, frame in frames_mod.decode_images(images, start, rng["end"], stride, offset=start):
                yield rows.frame_row(sid, start, index, index / float(item["fps"] or 1.0), frame)
            marks.update(first=start, count=len(images))  # an image range carries only its own images
        else:
            frange = frames_mod.FrameRange(**rng)
            for index, time, frame in frames_mod.decode_range(item["url"], frange, stride, marks, threads):
                yield rows.frame_row(sid, start, index, time, frame)
        error = ""
    except Exception as exc:  # noqa: BLE001 - reported per source by the driver
        error = reason(exc)
    yield rows.end_row(sid, start, marks, error)


def write_outputs(batch: dict[str, np.ndarray], output: str, kinds: tuple[str, ...], alpha: float,
                  quality: int) -> dict[str, np.ndarray]:
    """Encode and write the files of each frame in the batch; return one small result row per input row."""
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from tasks and the write threads, not inside OpenCV
    wanted, is_frame = set(kinds), rows.is_frame(batch)
    fractions = np.zeros((len(is_frame), labels.NUM_CLASSES), dtype=np.float32)

    def one(i: int) -> None:
        frame = rows.frame_of(batch, i)
        mask = render.resize_mask(batch["mask"][i], frame.shape[0], frame.shape[1])
        fractions[i] = render.class_fractions(mask)
        base = storage.join(output, str(batch["video"][i]))
        for kind, data in render.render_frame(frame, mask, wanted, alpha, quality).items():
            storage.write_bytes(storage.join(base, render.frame_name(int(batch["index"][i]), kind)), data)

    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(pool.map(one, np.flatnonzero(is_frame)))
    out = {k: batch[k] for k in rows.RESULT_COLUMNS if k != "fractions"}
    out["fractions"] = fractions
    return out


def assemble_video(output: str, sid: str, indices: list[int], fps: float, width: int, height: int,
                   codec: str = "h264") -> int:
    """OUT/<id>/overlay/*.jpg -> OUT/<id>/overlay.mp4 in index order (H.264, or the JPEGs muxed as they
    are); streamed with bounded read-ahead, uploaded when complete."""
    def jpegs() -> Iterator[bytes]:
        with ThreadPoolExecutor(WRITE_THREADS) as pool:
            for chunk in range(0, len(indices), 32):  # at most 32 frames in memory
                urls = [storage.join(output, sid, render.frame_name(i, "overlay")) for i in indices[chunk:chunk + 32]]
                yield from pool.map(storage.read_bytes, urls)

    with storage.atomic_output(storage.join(output, sid, "overlay.mp4"), suffix=".mp4") as tmp:
        return write_overlay_video(tmp, jpegs(), fps, width, height, codec)


def dataset(items: list[dict[str, Any]], s, checkpoint: str, sizing: Sizing, output: str):
    """The Ray Data graph over frame-range work items (see the module docstring)."""
    import ray.data

    from roadseg_dist.infer.segment import Segmenter

    ds = ray.data.from_items(items, override_num_blocks=len(items))  # one decode task per range
    ds = ds.flat_map(decode_range_rows, fn_kwargs={"threads": 1}, num_cpus=TASK_CPUS)
    ds = ds.map_batches(Segmenter, fn_constructor_args=(checkpoint, s.size, s.gpu, sizing.threads, s.channels_last, s.compile),
                        batch_size=s.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=sizing.actors),
                        num_cpus=sizing.actor_cpus, num_gpus=1 if s.gpu else 0)
    kinds = tuple(k for k in FRAME_KINDS if s.writes(k))
    return ds.map_batches(write_outputs, fn_args=(output, kinds, s.alpha, s.jpeg_quality),
                          batch_size=s.batch_size, batch_format="numpy", num_cpus=TASK_CPUS)
