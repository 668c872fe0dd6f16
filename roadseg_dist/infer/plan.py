"""Cutting the work: most sources are one unit, a long one is split into frame ranges.

An archive of many short clips already has more sources than the cluster has slots, and a unit per
source costs one open of the file and one overlay.mp4 written as it is encoded (no probe, no pieces,
no join). Only a source large enough to hold up the end of the run is split (``choose_splits``): one
bigger than SPLIT_MAX_BYTES, or than a quarter of a slot's share of all the bytes. Its plan (frame
ranges on keyframes, ``plan_ranges``) is made by a probe task, which saves it too; each range
is then a unit, and its pieces of overlay.mp4 are joined at the end.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from roadseg_dist.video import decode
from roadseg_dist.infer.inputs import Source
from roadseg_dist.infer.process import Work, reason

SPLIT_MIN_BYTES = 2 << 20    # smaller sources are never split: a few hundred frames at most
SPLIT_MAX_BYTES = 64 << 20   # larger ones always are: a unit stays minutes of work, not hours


def choose_splits(sources: list[Source], slots: int) -> set[str]:
    """Ids of the sources to split into frame ranges: those big enough to leave the other slots
    idle at the end of the run (more than a quarter of a slot's share of the bytes)."""
    share = sum(s.size for s in sources) / max(1, 4 * slots)
    return {s.id for s in sources if s.size > SPLIT_MIN_BYTES and (s.size > SPLIT_MAX_BYTES or s.size > share)}


def plan_ranges(info: decode.VideoInfo, segment_frames: int) -> list[decode.FrameRange]:
    """Keyframe-aligned ranges of about ``segment_frames`` packets; one range without an index."""
    if segment_frames < 1:
        raise ValueError(f"segment_frames must be >= 1, got {segment_frames}")
    starts = []  # positions in info.keyframes
    for k, (packet, *_) in enumerate(info.keyframes):
        if not starts or packet - info.keyframes[starts[-1]][0] >= segment_frames:
            starts.append(k)
    if len(starts) < 2:
        return [decode.FrameRange(0, block=_block(info.size))]
    ranges = []
    for r, k in enumerate(starts):
        packet, dts, pos, _ = info.keyframes[k]
        nxt = info.keyframes[starts[r + 1]] if r + 1 < len(starts) else None
        # FFmpeg seeks by presentation time (MP4: DTS + composition offset, unknown here); any
        # timestamp from our keyframe's up to the next keyframe's DTS lands on it.
        seek_ts = info.keyframes[k + 1][1] - 1 if k + 1 < len(info.keyframes) else 2 ** 62
        reach = (nxt[3] if info.open_gop else nxt[2]) if nxt else None
        ranges.append(decode.FrameRange(packet, nxt[0] if nxt else None, dts if r else None, nxt[1] if nxt else None,
                                 seek_ts if r else None, _block((nxt[2] if nxt else info.size) - pos),
                                 reach, info.open_gop))
    return ranges


def _block(span: int) -> int:
    """A read-ahead block of ~1/16 of the bytes a range reads: the overshoot past its end stays small."""
    return int(min(decode.MAX_BLOCK, max(decode.MIN_BLOCK, span // 16)))


def image_ranges(count: int, segment_frames: int) -> list[tuple[int, int | None]]:
    """[start, end) ranges over an image folder's ``count`` frames; the last one is open."""
    if segment_frames < 1:
        raise ValueError(f"segment_frames must be >= 1, got {segment_frames}")
    starts = list(range(0, max(count, 1), segment_frames))
    return [(s, starts[i + 1] if i + 1 < len(starts) else None) for i, s in enumerate(starts)]


def whole(src: Source, image_fps: float | None) -> Work:
    """A source as one unit, decoded from its first frame to its end."""
    return Work(video=src.id, url=src.url, images=src.images, fps=image_fps if src.images else None,
                identity=src.identity, size=src.size)


def probe_plan(src: Source, segment_frames: int, stride_of, image_fps: float | None) -> dict[str, Any]:
    """A split source's plan: its frame ranges, stream facts and identity, or {"error": reason}.
    ``stride_of(fps)`` is the run's stride rule. Runs as a Ray task."""
    try:
        if src.images:
            fps = float(image_fps or decode.DEFAULT_IMAGE_FPS)
            count = len(src.images)
            ranges = [{"start": a, "end": b} for a, b in image_ranges(count, segment_frames)]
            first = next(decode.decode_images(src.images, 0, 1))[1]
            height, width = first.shape[:2]
        else:
            info = decode.probe(src.url)
            count, fps, height, width = info.frame_count, info.fps, info.height, info.width
            ranges = [dataclasses.asdict(r) for r in plan_ranges(info, segment_frames)]
        return {"id": src.id, "url": src.url, "images": list(src.images), "identity": src.identity,
                "size": src.size, "frame_count": count, "fps": fps, "height": height, "width": width, "stride": stride_of(fps),
                "ranges": ranges}
    except Exception as exc:  # noqa: BLE001 - any failure is this source's, reported, not raised
        return {"id": src.id, "url": src.url or (src.images[0] if src.images else ""), "error": reason(exc)}


def range_works(plan: dict[str, Any], starts: set[int]) -> list[Work]:
    """The units of a split source's ranges that start at ``starts`` (those not finished yet)."""
    works = []
    for r in plan["ranges"]:
        if r["start"] in starts:
            images = tuple(plan["images"][r["start"]:r["end"]]) if plan["images"] else ()
            works.append(Work(video=plan["id"], url=plan["url"], images=images, range=r, stride=plan["stride"],
                              fps=plan["fps"] if images else None, identity=plan["identity"],
                              size=int(plan.get("size") or 0)))
    return works


def as_one_range(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan of a source whose ranges did not join up (its seeks were not exact): one range decoded
    from its first frame."""
    return {**plan, "sequential": True,
            "ranges": [{"start": 0, "end": None, "dts": None, "end_dts": None, "seek_ts": None,
                        "block": plan["ranges"][-1].get("block", 1 << 20)}]}
