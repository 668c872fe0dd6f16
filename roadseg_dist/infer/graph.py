"""The Ray side of ``roadseg infer``, kept thin: the task functions and the Ray Data graph.

    frame ranges ──decode + resize to the model's size (tasks, map_batches)──► frame rows + one end
      row per range ──Segmenter (actor pool, map_batches)──► masks ──Writer (actor pool)──► files +
      result rows

Writers are actors, not tasks: short write tasks at a fraction of a CPU made Ray start (and, idle,
stop) a worker process per batch, each paying ~1.5 CPU-s of imports (a third of the write work).

Each function is plain Python over plain values (tested without Ray); ``dataset`` wires them.
"""
from __future__ import annotations

import dataclasses
import json
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
DECODE_CHUNK_BYTES = 32 << 20  # pixels per batch a decode task yields: ~11 frames of 720p


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


def decode_range_batches(item: dict[str, Any], threads: int = 1,
                         size: tuple[int, int] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One frame range -> column batches of the frames it keeps (``rows.frame_batch``, each at most
    ``DECODE_CHUNK_BYTES`` of pixels, one frame size each), then its end row (``rows.end_batch``).
    With ``size`` (the model's HxW) the batches also carry the frames resized to it (``rows.INPUT``)."""
    sid, rng, stride = item["video"], item["range"], int(item["stride"])
    start, marks = int(rng["start"]), {}
    chunk: list[tuple[int, float, np.ndarray]] = []
    shape = rows.NO_FRAME

    def flush() -> dict[str, np.ndarray]:
        indices, times, pixels = map(list, zip(*chunk))
        chunk.clear()
        return rows.frame_batch(sid, start, indices, times, pixels, stride,
                                render.model_input(pixels, size) if size else None)

    try:
        if item["kind"] == "images":
            fps = float(item["fps"] or 1.0)
            decoded = ((i, i / fps, f) for i, f in frames_mod.decode_images(item["images"], start, rng["end"], stride,
                                                                          offset=start))
            marks.update(first=start, count=len(item["images"]))  # an image range carries only its own images
        else:
            decoded = frames_mod.decode_range(item["url"], frames_mod.FrameRange(**rng), stride, marks, threads)
        for index, time, frame in decoded:
            if chunk and (frame.shape != shape or len(chunk) * frame.nbytes >= DECODE_CHUNK_BYTES):
                yield flush()
            shape = frame.shape
            chunk.append((index, time, frame))
        error = ""
    except Exception as exc:  # noqa: BLE001 - reported per source by the driver
        error = reason(exc)
    if chunk:
        yield flush()
    yield rows.end_batch(sid, start, marks, error, shape, size)


def decode_items(batch: dict[str, np.ndarray], threads: int = 1,
                 size: tuple[int, int] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data ``map_batches`` over work items (JSON, one per range): their frame batches."""
    import cv2

    cv2.setNumThreads(1)  # the resize to the model's size: parallelism comes from the tasks
    for text in batch["item"]:
        yield from decode_range_batches(json.loads(text), threads, size)


def write_outputs(batch: dict[str, np.ndarray], output: str, kinds: tuple[str, ...], alpha: float,
                  quality: int, pieces: bool = False) -> dict[str, np.ndarray]:
    """Encode and write the files of each frame in the batch; return one small result row per input row.
    With ``pieces``, each run of consecutive frames also becomes an H.264 piece of overlay.mp4.

    Encoding runs in this thread, one frame after another: it is CPU work, and threads contending
    for the GIL and the cores cost more than they overlap (~25% more CPU per frame measured with four).
    Only uploads to object storage, which wait on the network, go to a few threads."""
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the actors, not inside OpenCV
    wanted, is_frame = set(kinds), rows.is_frame(batch)
    fractions = np.zeros((len(is_frame), labels.NUM_CLASSES), dtype=np.float32)
    overlays: dict[int, np.ndarray] = {}
    with _Uploads(storage.is_remote(output)) as put:
        for i in np.flatnonzero(is_frame):
            frame = rows.frame_of(batch, i)
            mask = render.resize_mask(batch["mask"][i], frame.shape[0], frame.shape[1])
            fractions[i] = render.class_fractions(mask)
            files = render.render_frame(frame, mask, wanted - {"overlay"}, alpha, quality)
            if "overlay" in wanted:
                overlays[i] = render.blend_overlay(frame, mask, alpha)
                files["overlay"] = render.encode_jpeg(overlays[i], quality)
            base = storage.join(output, str(batch["video"][i]))
            for kind, data in files.items():
                put(storage.join(base, render.frame_name(int(batch["index"][i]), kind)), data)
        for run in rows.runs(batch) if pieces and "overlay" in wanted else []:
            sid = str(batch["video"][run[0]])
            name = video_out.Piece(int(batch["index"][run[0]]), int(batch["index"][run[-1]]), len(run)).name
            try:
                data = video_out.encode_piece([overlays[i] for i in run])
            except Exception as exc:  # noqa: BLE001 - a missing piece only means overlay.mp4 is encoded from the JPEGs
                log.warning("%s: overlay video piece %s not encoded (%s); the video will be encoded from the "
                            "overlay JPEGs", sid, name, reason(exc))
                continue
            put(storage.join(State(output).pieces_url(sid), name), data, best_effort=True)
    out = {k: batch[k] for k in rows.RESULT_COLUMNS if k != "fractions"}
    out["fractions"] = fractions
    return out


class _Uploads:
    """``put(url, data)``: inline for local files, on ``WRITE_THREADS`` threads for object storage
    (latency-bound PUTs). Leaving the block waits for every put and raises the first error; a
    ``best_effort`` put that fails is logged instead."""

    def __init__(self, threaded: bool):
        self.pool = ThreadPoolExecutor(WRITE_THREADS) if threaded else None
        self.pending: list = []

    def __enter__(self):
        return self.put

    def put(self, url: str, data: bytes, best_effort: bool = False) -> None:
        if self.pool is None:
            self._write(url, data, best_effort)
        else:
            self.pending.append(self.pool.submit(self._write, url, data, best_effort))

    @staticmethod
    def _write(url: str, data: bytes, best_effort: bool) -> None:
        try:
            storage.write_bytes(url, data)
        except Exception as exc:
            if not best_effort:
                raise
            log.warning("%s not written (%s); the overlay video will be encoded from the overlay JPEGs",
                        storage.redact(url), reason(exc))

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            try:
                for f in self.pending:
                    f.result()
            finally:
                self.pool.shutdown(wait=True, cancel_futures=True)


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


def dataset(items: list[dict[str, Any]], s, checkpoint: str, sizing: Sizing, output: str,
            size: tuple[int, int]):
    """The Ray Data graph over frame-range work items (see the module docstring); ``size`` is the
    model's input HxW, which the decode tasks resize to."""
    import ray.data

    from roadseg_dist.infer.segment import Segmenter

    # one decode task per range; items travel as JSON so that their nested fields stay plain Python
    ds = ray.data.from_items([{"item": json.dumps(i)} for i in items], override_num_blocks=len(items))
    ds = ds.map_batches(decode_items, fn_kwargs={"threads": 1, "size": tuple(size)}, batch_size=1,
                        batch_format="numpy", num_cpus=TASK_CPUS)
    ds = ds.map_batches(Segmenter, fn_constructor_args=(checkpoint, tuple(size), s.gpu, sizing.threads, s.channels_last,
                                                        s.compile, s.amp),
                        batch_size=s.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=sizing.actors),
                        num_cpus=sizing.actor_cpus, num_gpus=1 if s.gpu else 0)
    kinds = tuple(k for k in FRAME_KINDS if s.writes(k))
    pieces = "video" in s.outputs and s.video_codec == "h264"
    return ds.map_batches(Writer, fn_constructor_args=(output, kinds, s.alpha, s.jpeg_quality, pieces),
                          batch_size=max(WRITE_BATCH, s.batch_size), batch_format="numpy", num_cpus=TASK_CPUS,
                          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=sizing.writers))
