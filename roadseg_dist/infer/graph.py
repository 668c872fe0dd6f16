"""The Ray side of ``roadseg infer``, kept thin: the task functions and the Ray Data graph.

    frame ranges ──decode (tasks, flat_map)──► frame rows + one end row per range
      ──Segmenter (actor pool, map_batches)──► masks ──Writer (actor pool)──► files + result rows

Writers are actors, not tasks: short write tasks at a fraction of a CPU made Ray start (and, idle,
stop) a worker process per batch, each paying ~1.5 CPU-s of imports (a third of the write work).

Each function is plain Python over plain values (tested without Ray); ``dataset`` wires them.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np

from roadseg_dist import labels, resources, storage
from roadseg_dist.infer import frames as frames_mod
from roadseg_dist.infer import render, rows, video_out
from roadseg_dist.infer.inputs import Source
from roadseg_dist.infer.state import State
from roadseg_dist.infer.video_out import write_overlay_video

log = logging.getLogger(__name__)

FRAME_KINDS = ("mask", "color", "overlay", "original")
WRITE_THREADS = 4  # S3 PUTs are latency-bound; a few in flight per writer task keep them busy
TASK_CPUS = 0.25   # decode tasks and writer actors: light, never starving the model actors
WRITE_BATCH = 32   # frames per writer call: also the length of the overlay video's H.264 pieces


def reason(exc: BaseException) -> str:
    if isinstance(exc, frames_mod.DecodeError):
        return str(exc)
    return storage.redact(f"{type(exc).__name__}: {exc}")


@dataclasses.dataclass(frozen=True)
class Sizing:
    """How the job uses the cluster: model actors, their CPUs and torch threads, and writer actors."""
    actors: int
    actor_cpus: float
    threads: int
    gpu: bool
    writers: int = 1  # the most writer actors the pool grows to (it starts with one)


MAX_CPU_ACTORS_PER_NODE = 8  # each actor holds a model: past this, an actor gets more threads instead


def _quarters(x: float) -> float:
    return math.floor(x * 4 + 1e-9) / 4


def size_actors(cluster_cpus: float, gpus: int, s, node_cpus: list[float] | None = None) -> Sizing:
    """Defaults sized to the machine. GPU: one actor per GPU (1 CPU each; decode and encode run in
    CPU tasks). CPU only: the model gets ~3/4 of the CPUs, split into as many actors as it has CPUs
    (up to 8 per node) with threads = CPUs reserved, because one torch thread per actor gives the
    most frames per CPU-second (two threads on one frame scale ~1.8x); the rest goes to decoding and
    writing. On 2 cores: two actors of 0.75 CPU, one thread each. ``--concurrency`` /
    ``--actor-cpus`` override; every actor fits on one of the nodes (``node_cpus``)."""
    nodes = node_cpus or [cluster_cpus]
    if s.gpu:
        actors = s.concurrency or max(1, gpus)
        cpus = s.actor_cpus or 1.0
    else:
        share = max(0.5, cluster_cpus * 0.75)
        actors = s.concurrency or min(math.ceil(share - 1e-9), MAX_CPU_ACTORS_PER_NODE * len(nodes))
        cpus = s.actor_cpus or max(0.25, min(_quarters(share / actors), max(nodes)))
        if not s.concurrency:
            actors = max(1, min(actors, sum(math.floor(n / cpus + 1e-9) for n in nodes)))
    left = cluster_cpus - actors * cpus
    writers = max(1, int(left // 2))  # a writer actor (4 write threads + the H.264 encoder) keeps ~2 cores busy
    return Sizing(actors, cpus, max(1, math.ceil(cpus - 1e-9)), bool(s.gpu), writers)


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
                yield rows.frame_row(sid, start, index, index / float(item["fps"] or 1.0), frame, stride)
            marks.update(first=start, count=len(images))  # an image range carries only its own images
        else:
            frange = frames_mod.FrameRange(**rng)
            for index, time, frame in frames_mod.decode_range(item["url"], frange, stride, marks, threads):
                yield rows.frame_row(sid, start, index, time, frame, stride)
        error = ""
    except Exception as exc:  # noqa: BLE001 - reported per source by the driver
        error = reason(exc)
    yield rows.end_row(sid, start, marks, error)


def write_outputs(batch: dict[str, np.ndarray], output: str, kinds: tuple[str, ...], alpha: float,
                  quality: int, pieces: bool = False) -> dict[str, np.ndarray]:
    """Encode and write the files of each frame in the batch; return one small result row per input row.
    With ``pieces``, each run of consecutive frames also becomes an H.264 piece of overlay.mp4."""
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the actors and the write threads, not inside OpenCV
    wanted, is_frame = set(kinds), rows.is_frame(batch)
    fractions = np.zeros((len(is_frame), labels.NUM_CLASSES), dtype=np.float32)
    overlays: dict[int, np.ndarray] = {}

    def one(i: int) -> None:
        frame = rows.frame_of(batch, i)
        mask = render.resize_mask(batch["mask"][i], frame.shape[0], frame.shape[1])
        fractions[i] = render.class_fractions(mask)
        files = render.render_frame(frame, mask, wanted - {"overlay"}, alpha, quality)
        if "overlay" in wanted:
            overlays[i] = render.blend_overlay(frame, mask, alpha)
            files["overlay"] = render.encode_jpeg(overlays[i], quality)
        base = storage.join(output, str(batch["video"][i]))
        for kind, data in files.items():
            storage.write_bytes(storage.join(base, render.frame_name(int(batch["index"][i]), kind)), data)

    def piece(run: list[int]) -> None:
        sid = str(batch["video"][run[0]])
        name = video_out.Piece(int(batch["index"][run[0]]), int(batch["index"][run[-1]]), len(run)).name
        try:
            data = video_out.encode_piece([overlays[i] for i in run])
            storage.write_bytes(storage.join(State(output).pieces_url(sid), name), data)
        except Exception as exc:  # noqa: BLE001 - a missing piece only means overlay.mp4 is encoded from the JPEGs
            log.warning("%s: overlay video piece %s not written (%s); the video will be encoded from the "
                        "overlay JPEGs", sid, name, reason(exc))

    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(pool.map(one, np.flatnonzero(is_frame)))
        if pieces and "overlay" in wanted:
            list(pool.map(piece, rows.runs(batch)))
    out = {k: batch[k] for k in rows.RESULT_COLUMNS if k != "fractions"}
    out["fractions"] = fractions
    return out


def assemble_video(output: str, sid: str, indices: list[int], fps: float, width: int, height: int,
                   codec: str = "h264") -> int:
    """OUT/<id>/overlay.mp4 in index order, uploaded when complete: H.264 joined from the pieces the
    writers encoded, or (pieces missing, MJPEG) from the overlay JPEGs, streamed with bounded
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
            frames = write_overlay_video(tmp, _read_ahead(urls), fps, width, height, codec)
    storage.remove(pieces_url, recursive=True)
    return frames


def _read_ahead(urls: list[str]) -> Iterator[bytes]:
    """The files' bytes in order, a few in flight, at most 32 in memory."""
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        for chunk in range(0, len(urls), 32):
            yield from pool.map(storage.read_bytes, urls[chunk:chunk + 32])


class Writer:
    """Ray Data actor around ``write_outputs``: a long-lived process, so no worker starts per batch."""

    def __init__(self, output: str, kinds: tuple[str, ...], alpha: float, quality: int, pieces: bool):
        self.args = (output, kinds, alpha, quality, pieces)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return write_outputs(batch, *self.args)


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
    pieces = "video" in s.outputs and s.video_codec == "h264"
    return ds.map_batches(Writer, fn_constructor_args=(output, kinds, s.alpha, s.jpeg_quality, pieces),
                          batch_size=max(WRITE_BATCH, s.batch_size), batch_format="numpy", num_cpus=TASK_CPUS,
                          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=sizing.writers))
