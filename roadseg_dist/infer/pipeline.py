"""``roadseg infer``: segment every frame of every video under INPUT with Ray Data.

    sources ──probe (Ray tasks)──► frame ranges ──decode (tasks, flat_map)──► frame rows
      ──Segmenter (actor pool, map_batches)──► masks ──write_outputs (tasks)──► files + stats rows
      ──driver──► per-range parts (the resume markers) ──► overlay.mp4 (task) ──► frames.parquet, report.json

Resume state lives in ``OUTPUT/.roadseg/``: the plan of each source, one Parquet part per finished
frame range (written only after all of the range's files), and a done marker per source (written
after its overlay.mp4). A re-run skips done sources and finished ranges, so nothing complete is
rewritten; a range cut short by a crash is simply redone, its files overwritten with the same bytes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np

from roadseg_dist import labels, settings as settings_mod, storage
from roadseg_dist.infer import frames as frames_mod
from roadseg_dist.infer import render, report as report_mod
from roadseg_dist.infer.inputs import STATE_DIR, Source, discover
from roadseg_dist.infer.video_out import write_overlay_video
from roadseg_dist.infer.settings import InferSettings

log = logging.getLogger(__name__)
STATS_COLUMNS = ["video", "frame", "timestamp", *labels.CLASSES]
FRAME_KINDS = ("mask", "color", "overlay", "original")
WRITE_THREADS = 4  # S3 PUTs are latency-bound; a few in flight per writer task keep them busy


class InputError(Exception):
    """INPUT, CKPT or OUTPUT cannot be used as given (the CLI turns it into a usage error)."""


# --- plain helpers (tested without Ray) ----------------------------------------------------------

def run_signature(s: InferSettings) -> dict[str, Any]:
    """The settings that decide what the files contain; a resumed run must match them."""
    return {"checkpoint": storage.redact(s.checkpoint), "size": list(s.size) if s.size else None,
            "every": s.every, "fps": s.fps, "outputs": sorted(s.outputs),
            "segment_frames": s.segment_frames, "alpha": s.alpha, "jpeg_quality": s.jpeg_quality}


def check_indices(indices: list[int], stride: int) -> str:
    """'' when the frame indices of a source run 0, stride, 2*stride, ... with no gap or repeat."""
    expected = list(range(0, stride * len(indices), stride))
    if indices == expected:
        return ""
    seen: set[int] = set()
    dups = sorted({i for i in indices if i in seen or seen.add(i)})
    missing = sorted(set(expected) - set(indices))[:10]
    return f"frame indices are not contiguous (missing {missing}, repeated {dups[:10]})"


@contextlib.contextmanager
def local_copy(url: str) -> Iterator[str]:
    """A local file for OpenCV: the path itself, or an S3 object downloaded to a temp file."""
    if not storage.is_remote(url):
        yield storage.local_path(url)
        return
    suffix = os.path.splitext(url)[1]
    fd, tmp = tempfile.mkstemp(prefix="roadseg-video-", suffix=suffix)
    os.close(fd)
    try:
        storage.download(url, tmp)
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def reason(exc: BaseException) -> str:
    if isinstance(exc, frames_mod.DecodeError):
        return str(exc)
    return storage.redact(f"{type(exc).__name__}: {exc}")


class State:
    """The resume state under ``OUTPUT/.roadseg/``."""

    def __init__(self, output: str):
        self.root = storage.join(output, STATE_DIR)

    def plan_url(self, sid: str) -> str:
        return storage.join(self.root, "plans", sid + ".json")

    def part_url(self, sid: str, start: int) -> str:
        return storage.join(self.root, "parts", sid, f"{start:09d}.parquet")

    def done_url(self, sid: str) -> str:
        return storage.join(self.root, "done", sid + ".json")

    def signature_url(self) -> str:
        return storage.join(self.root, "run.json")

    def listing(self, folder: str) -> set[str]:
        """Every file under one state folder, in one listing (not a request per file)."""
        url = storage.join(self.root, folder)
        return set(storage.list_files(url)) if storage.exists(url) else set()


# --- Ray stages: thin wrappers around frames / segment / render ----------------------------------

def probe_source(source: Source, s: InferSettings) -> dict[str, Any]:
    """Source -> its plan (frame ranges), or {"error": reason}. Runs as a Ray task."""
    try:
        if source.kind == "images":
            first = next(frames_mod.decode_images(source.images, 0, 1))[1]
            count, fps, (h, w) = len(source.images), s.fps or frames_mod.DEFAULT_IMAGE_FPS, first.shape[:2]
        else:
            with local_copy(source.url) as path:
                info = frames_mod.probe(path)
            count, fps, h, w = info.frame_count, info.fps, info.height, info.width
        stride = s.stride(fps)
        return {"id": source.id, "kind": source.kind, "url": source.url, "images": list(source.images),
                "frame_count": count, "fps": fps, "height": h, "width": w, "stride": stride,
                "ranges": frames_mod.plan_ranges(count, s.segment_frames)}
    except Exception as exc:  # noqa: BLE001 - any failure is this source's, reported, not raised
        return {"id": source.id, "url": source.url or (source.images[0] if source.images else ""),
                "error": reason(exc)}


def decode_range_rows(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One frame range -> a row per decoded frame, then one end row (index -1) with the count or error."""
    base = {"video": row["video"], "start": int(row["start"]), "fps": float(row["fps"])}
    end = None if row["end"] < 0 else int(row["end"])
    count, error, marks = 0, "", {"first": "", "next": ""}
    try:
        if row["kind"] == "images":
            images = list(row["images"])
            decoded = frames_mod.decode_images(images, row["start"], end, row["stride"], offset=row["start"])
            ctx = contextlib.nullcontext()
        else:
            ctx = local_copy(row["url"])
        with ctx as path:
            if row["kind"] != "images":
                decoded = frames_mod.decode_range(path, row["start"], end, row["stride"], seek=bool(row["seek"]),
                                                  packets=int(row["packets"]) or None, marks=marks)
            for index, frame in decoded:
                yield {**base, "index": index, "height": frame.shape[0], "width": frame.shape[1],
                       "frame": frame.tobytes(), "count": 0, "error": "", "first_fp": "", "next_fp": ""}
                count += 1
    except Exception as exc:  # noqa: BLE001 - reported per source by the driver
        error = reason(exc)
    yield {**base, "index": -1, "height": 0, "width": 0, "frame": b"", "count": count, "error": error,
           "first_fp": marks["first"], "next_fp": marks["next"]}


def write_outputs(batch: dict[str, np.ndarray], output: str, kinds: tuple[str, ...], alpha: float,
                  quality: int) -> dict[str, np.ndarray]:
    """Encode and write the files of each frame in the batch; return one small stats row per input row."""
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from tasks and the write threads, not inside OpenCV
    wanted = set(kinds)
    n = len(batch["index"])
    fractions = np.zeros((n, labels.NUM_CLASSES), dtype=np.float32)

    def one(i: int) -> None:
        if batch["index"][i] < 0:
            return
        frame = np.frombuffer(batch["frame"][i], dtype=np.uint8).reshape(
            int(batch["height"][i]), int(batch["width"][i]), 3)
        mask = render.resize_mask(batch["mask"][i], frame.shape[0], frame.shape[1])
        fractions[i] = render.class_fractions(mask)
        base = storage.join(output, str(batch["video"][i]))
        for kind, data in render.render_frame(frame, mask, wanted, alpha, quality).items():
            storage.write_bytes(storage.join(base, render.frame_name(int(batch["index"][i]), kind)), data)

    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(pool.map(one, range(n)))
    fps = batch["fps"].astype(np.float64)
    timestamps = np.where(fps > 0, batch["index"] / np.where(fps > 0, fps, 1.0), 0.0)
    return {"video": batch["video"], "start": batch["start"], "index": batch["index"],
            "timestamp": timestamps, "fractions": fractions, "count": batch["count"], "error": batch["error"],
            "first_fp": batch["first_fp"], "next_fp": batch["next_fp"]}


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


# --- the driver ----------------------------------------------------------------------------------

@dataclasses.dataclass
class RangeProgress:
    rows: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # frame index -> fractions
    timestamps: dict[int, float] = dataclasses.field(default_factory=dict)
    count: int | None = None  # known once the end row arrives
    error: str = ""
    first_fp: str = ""  # fingerprints of the range's first frame and of the frame after its end
    next_fp: str = ""

    @property
    def complete(self) -> bool:
        return self.count is not None and (self.error != "" or len(self.rows) >= self.count)


def stats_table(sid: str, rng: RangeProgress):
    import pyarrow as pa

    order = sorted(rng.rows)
    cols = {"video": pa.array([sid] * len(order), pa.string()),
            "frame": pa.array(order, pa.int64()),
            "timestamp": pa.array([rng.timestamps[i] for i in order], pa.float64())}
    mat = np.stack([rng.rows[i] for i in order]) if order else np.zeros((0, labels.NUM_CLASSES), np.float32)
    for c, name in enumerate(labels.CLASSES):
        cols[name] = pa.array(mat[:, c], pa.float32())
    return pa.table(cols).replace_schema_metadata({"first_fp": rng.first_fp, "next_fp": rng.next_fp})


def write_table(url: str, table) -> None:
    import pyarrow.parquet as pq

    with storage.atomic_output(url, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def read_table(url: str):
    import io

    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(url)))


class Driver:
    def __init__(self, s: InferSettings, show_progress: bool = True):
        self.s = s
        self.output = storage.normalize(s.output)
        self.state = State(self.output)
        self.show_progress = show_progress
        self.failures: dict[str, dict[str, str]] = {}
        self.plans: dict[str, dict[str, Any]] = {}
        self.ranges_left: dict[str, set[int]] = {}
        self.progress: dict[tuple[str, int], RangeProgress] = {}
        self.videos_pending: dict[str, Any] = {}  # id -> ObjectRef of assemble_video
        self.done_now: list[str] = []
        self.redo_rows: list[dict[str, Any]] = []  # ranges whose seek proved inexact, for a second pass
        self.frames_now = 0
        self.finished_now: set[tuple[str, int]] = set()

    # -- phases --
    def check_model(self) -> None:
        """Load the checkpoint once here so that a bad CKPT fails fast with its own message, not in an actor."""
        from roadseg_dist.models.checkpoint import load_model

        _, meta = load_model(self.s.checkpoint)
        if not (self.s.size or meta.get("input_size")):
            raise InputError(f"checkpoint {storage.redact(self.s.checkpoint)} records no input_size: pass --size HxW")

    def check_output(self) -> None:
        url = self.state.signature_url()
        sig = run_signature(self.s)
        if self.s.overwrite:
            storage.remove(self.state.root, recursive=True)
        elif storage.exists(url):
            old = json.loads(storage.read_text(url))
            if old != sig:
                diff = sorted(k for k in sig if old.get(k) != sig[k])
                raise InputError(f"{storage.redact(self.output)} holds a run with other settings "
                                 f"({', '.join(diff)}): resume with the same settings, pass --overwrite, "
                                 f"or choose another OUTPUT")
            return
        storage.write_text(url, json.dumps(sig, indent=1))

    def plan(self, sources: list[Source]) -> None:
        import ray

        todo, planned = [], self.state.listing("plans")
        for src in sources:
            if self.state.plan_url(src.id) in planned:
                self.plans[src.id] = json.loads(storage.read_text(self.state.plan_url(src.id)))
            else:
                todo.append(src)
        probe = ray.remote(num_cpus=0.25, max_retries=2)(probe_source)
        for plan in ray.get([probe.remote(src, self.s) for src in todo]):
            if "error" in plan:
                self.failures[plan["id"]] = {"id": plan["id"], "input": storage.redact(plan["url"]),
                                             "reason": plan["error"]}
                continue
            storage.write_text(self.state.plan_url(plan["id"]), json.dumps(plan))
            self.plans[plan["id"]] = plan

    def range_rows(self) -> list[dict[str, Any]]:
        rows, finished = [], self.state.listing("parts")
        for sid, plan in self.plans.items():
            self.ranges_left[sid] = {s for s, _ in plan["ranges"] if self.state.part_url(sid, s) not in finished}
            rows += self.rows_for(sid)
        return rows

    def rows_for(self, sid: str) -> list[dict[str, Any]]:
        """Work items of the frame ranges of ``sid`` still left to do."""
        plan, rows = self.plans[sid], []
        for start, end in plan["ranges"]:
            if start in self.ranges_left[sid]:
                # an image range carries only its own file names (frame `start` first)
                images = plan["images"][start:end] if plan["kind"] == "images" else []
                rows.append({"video": sid, "kind": plan["kind"], "url": plan["url"], "images": images,
                             "start": start, "end": -1 if end is None else end,
                             "stride": plan["stride"], "fps": plan["fps"], "packets": plan["frame_count"],
                             "seek": start not in plan.get("no_seek", [])})
        return rows

    def dataset(self, rows: list[dict[str, Any]]):
        import ray.data

        from roadseg_dist.infer.segment import Segmenter

        s = self.s
        actor_cpus = s.actor_cpus
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # one decode task per range
        ds = ds.flat_map(decode_range_rows, num_cpus=0.5)
        ds = ds.map_batches(Segmenter, fn_constructor_args=(s.checkpoint, s.size, s.gpu, actor_cpus),
                            batch_size=s.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=s.concurrency),
                            num_cpus=actor_cpus, num_gpus=1 if s.gpu else 0)
        kinds = tuple(k for k in FRAME_KINDS if s.writes(k))
        return ds.map_batches(write_outputs, fn_args=(self.output, kinds, s.alpha, s.jpeg_quality),
                              batch_size=s.batch_size, batch_format="numpy", num_cpus=0.5)

    def consume(self, batch: dict[str, np.ndarray], bar) -> None:
        for i in range(len(batch["index"])):
            sid, start, index = str(batch["video"][i]), int(batch["start"][i]), int(batch["index"][i])
            rng = self.progress.setdefault((sid, start), RangeProgress())
            if index < 0:
                rng.count, rng.error = int(batch["count"][i]), str(batch["error"][i])
                rng.first_fp, rng.next_fp = str(batch["first_fp"][i]), str(batch["next_fp"][i])
            elif index not in rng.rows:  # a retried decode task may send a frame twice: count it once
                rng.rows[index] = batch["fractions"][i]
                rng.timestamps[index] = float(batch["timestamp"][i])
                self.frames_now += 1
                bar.advance()
            if rng.complete:
                self.finish_range(sid, start, self.progress.pop((sid, start)))

    def finish_range(self, sid: str, start: int, rng: RangeProgress) -> None:
        if rng.error:
            self.fail(sid, rng.error)
            return
        write_table(self.state.part_url(sid, start), stats_table(sid, rng))  # the range's completion marker
        self.finished_now.add((sid, start))
        self.ranges_left[sid].discard(start)
        if not self.ranges_left[sid] and sid not in self.failures:
            self.finish_source(sid)

    def finish_source(self, sid: str) -> None:
        import ray

        plan = self.plans[sid]
        parts = [read_table(self.state.part_url(sid, s)) for s, _ in plan["ranges"]]
        if plan["kind"] == "video" and self.redo_inexact(sid, parts):
            return
        indices = [int(i) for part in parts for i in part.column("frame").to_pylist()]
        problem = check_indices(indices, plan["stride"]) or ("" if indices else "no frame could be decoded")
        if problem:
            self.fail(sid, problem)
            return
        plan["frames"] = len(indices)
        if "video" in self.s.outputs:
            task = ray.remote(num_cpus=0.5, max_retries=2)(assemble_video)
            self.videos_pending[sid] = task.remote(self.output, sid, indices, plan["fps"] / plan["stride"],
                                                   plan["width"], plan["height"], self.s.video_codec)
        else:
            self.mark_done(sid)

    def redo_inexact(self, sid: str, parts: list) -> bool:
        """Check the fingerprint chain of a source's ranges; queue the ranges from the first inexact
        seek on for decoding from the start (their files and parts removed first). True if queued."""
        plan = self.plans[sid]
        meta = [part.schema.metadata or {} for part in parts]
        bad = frames_mod.first_inexact_range([(m.get(b"first_fp", b"").decode(), m.get(b"next_fp", b"").decode())
                                              for m in meta])
        if bad is None:
            return False
        starts = [s for s, _ in plan["ranges"][bad:]]
        if set(starts) <= set(plan.get("no_seek", [])):
            self.fail(sid, f"frame ranges from frame {starts[0]} disagree even when decoded from the start")
            return True
        for start, part in zip(starts, parts[bad:]):
            if (sid, start) in self.finished_now:  # its frames were counted this run: they are redone
                self.frames_now -= part.num_rows
            for index in part.column("frame").to_pylist():
                for kind in FRAME_KINDS:
                    storage.remove(storage.join(self.output, sid, render.frame_name(int(index), kind)))
            storage.remove(self.state.part_url(sid, start))
        plan["no_seek"] = sorted(set(plan.get("no_seek", [])) | set(starts))
        storage.write_text(self.state.plan_url(sid), json.dumps(plan))
        self.ranges_left[sid] = set(starts)
        self.redo_rows += [r for r in self.rows_for(sid) if r["start"] in starts]
        return True

    def mark_done(self, sid: str) -> None:
        plan = self.plans[sid]
        storage.write_text(self.state.done_url(sid), json.dumps({"id": sid, "frames": plan.get("frames", 0)}))
        self.done_now.append(sid)

    def fail(self, sid: str, why: str) -> None:
        plan = self.plans.get(sid, {})
        self.failures.setdefault(sid, {"id": sid, "input": storage.redact(plan.get("url") or sid),
                                       "reason": why})

    def collect_videos(self, block: bool) -> None:
        import ray

        if not self.videos_pending:
            return
        refs = list(self.videos_pending.values())
        ready, _ = ray.wait(refs, num_returns=len(refs) if block else 1, timeout=None if block else 0)
        for sid in [k for k, v in self.videos_pending.items() if v in ready]:
            ref = self.videos_pending.pop(sid)
            try:
                ray.get(ref)
                self.mark_done(sid)
            except Exception as exc:  # noqa: BLE001
                self.fail(sid, "overlay.mp4 could not be written: " + reason(exc))

    def write_stats(self, done_ids: list[str]) -> None:
        import pyarrow as pa

        url = storage.join(self.output, "frames.parquet")
        if "stats" not in self.s.outputs or (not self.done_now and storage.exists(url)):
            return  # nothing new: leave the finished table alone
        parts = [read_table(self.state.part_url(sid, s))
                 for sid in sorted(done_ids) for s, _ in self.plans_for(sid)["ranges"]]
        table = pa.concat_tables(parts) if parts else stats_table("", RangeProgress()).slice(0, 0)
        write_table(url, table)

    def plans_for(self, sid: str) -> dict[str, Any]:
        if sid not in self.plans:
            self.plans[sid] = json.loads(storage.read_text(self.state.plan_url(sid)))
        return self.plans[sid]

    def run(self) -> dict[str, Any]:
        from roadseg_dist.cluster import init_ray

        t0 = time.time()
        try:
            sources = discover(self.s.input)
        except (FileNotFoundError, ValueError) as exc:
            raise InputError(str(exc)) from None
        if not sources:
            raise InputError(f"no videos or images under {storage.redact(self.s.input)} "
                             f"(looked for video and image file extensions)")
        self.check_model()
        self.check_output()
        done_markers = self.state.listing("done")
        already = [src.id for src in sources if self.state.done_url(src.id) in done_markers]
        pending = [src for src in sources if src.id not in set(already)]
        init_ray(self.s.address, self.s.num_cpus)
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # our progress line replaces its notices
        log.debug("%d source(s), %d already done; ray up after %.1fs", len(sources), len(already), time.time() - t0)
        self.plan(pending)
        rows = self.range_rows()
        log.debug("planned %d frame range(s) to do after %.1fs", len(rows), time.time() - t0)
        expected = sum(max(p["frame_count"], 1) // p["stride"] for sid, p in self.plans.items())
        for sid in [sid for sid, left in self.ranges_left.items() if not left]:
            self.finish_source(sid)  # every range finished before a crash; only the video was missing
        rows, self.redo_rows = rows + self.redo_rows, []
        with report_mod.ProgressBar(len(pending), expected, enabled=self.show_progress) as bar:
            while rows:  # a second pass only redoes ranges whose seek proved inexact, from the start
                for batch in self.dataset(rows).iter_batches(batch_size=None, batch_format="numpy"):
                    if not self.frames_now:
                        log.debug("first results after %.1fs", time.time() - t0)
                    self.consume(batch, bar)
                    self.collect_videos(block=False)
                    bar.update(videos_done=len(self.done_now), failed=len(self.failures))
                rows, self.redo_rows = self.redo_rows, []
            for key, rng in list(self.progress.items()):  # ranges whose end row never came back
                self.fail(key[0], f"frame range from {key[1]} ended without a result")
            log.debug("all frames after %.1fs", time.time() - t0)
            self.collect_videos(block=True)
            log.debug("all videos after %.1fs", time.time() - t0)
            bar.update(videos_done=len(self.done_now), failed=len(self.failures))
        done_ids = already + self.done_now
        self.write_stats(done_ids)
        report = report_mod.build(self.s, sources=len(sources), skipped=len(already), done=self.done_now,
                                  failures=list(self.failures.values()), frames=self.frames_now,
                                  seconds=time.time() - t0,
                                  frames_total=sum(self.frame_count(sid) for sid in done_ids))
        report_mod.write(self.output, report)
        return report

    def frame_count(self, sid: str) -> int:
        if sid in self.done_now:
            return int(self.plans[sid].get("frames", 0))
        return int(json.loads(storage.read_text(self.state.done_url(sid))).get("frames", 0))


def run(s: InferSettings, show_progress: bool = True) -> dict[str, Any]:
    """Segment everything under ``s.input``; returns the report (also written to OUTPUT/report.json)."""
    return Driver(s, show_progress).run()


def settings_from(**kwargs) -> InferSettings:
    return settings_mod.build(InferSettings, **kwargs)
