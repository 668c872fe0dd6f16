"""``roadseg frames OUTPUT --where ... --export DIR``: chosen frames, with the model's masks as
pre-labels, ready to label and to train on.

    DIR/bdd100k/images/10k/train/<name>.jpg              the source frame itself
    DIR/bdd100k/labels/sem_seg/masks/train/<name>.png    the model's mask (train ids): the pre-label
    DIR/bdd100k/labels/sem_seg/colormaps/train/<name>.png   the same in the official palette
    DIR/css/{images,masks}/<name>.*, DIR/css/dataset_meta.json   the same pairs as a "Common Semantic
                                                         Segmentation" dataset: what CVAT and Datumaro import
    DIR/manifest.jsonl                                   where each frame came from: source, frame, time,
                                                         video id, model, confidence, uncertain, flicker

The first layout is what ``roadseg shard`` reads, so corrected labels go straight into training.
The frame is OUTPUT's ``original/`` JPEG when the run wrote one, else decoded again from its source
by index (frame N of one sequential decode, as infer counts them). ``spread`` keeps the choice from
bunching up: at most N frames a source, at least T seconds apart, taken in the query's order.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np

from roadseg_dist import labels, storage

IMAGE_SUFFIXES = (".jpg", ".jpeg")


class ExportError(ValueError):
    """The frames cannot be exported as asked; the message says why and what to do."""


def spread(rows: Iterable[dict[str, Any]], per_source: int | None = None, min_gap: float = 0.0,
           limit: int | None = None) -> list[dict[str, Any]]:
    """Rows in their order, skipping one whose source already has ``per_source`` rows or one taken
    less than ``min_gap`` seconds from it, until ``limit`` are taken."""
    taken: list[dict[str, Any]] = []
    times: dict[str, list[float]] = {}
    for row in rows:
        seen = times.setdefault(row["video"], [])
        if per_source is not None and len(seen) >= per_source:
            continue
        if any(abs(row["timestamp"] - t) < min_gap for t in seen):
            continue
        seen.append(row["timestamp"])
        taken.append(row)
        if limit is not None and len(taken) >= limit:
            break
    return taken


def name_of(row: dict[str, Any]) -> str:
    """A file stem unique per frame, safe on any file system: ``cam1__clip__000042``."""
    return f"{row['video'].replace('/', '__')}__{int(row['frame']):06d}"


def frame_jpegs(output: str, rows: list[dict[str, Any]]) -> dict[str, bytes]:
    """name -> JPEG bytes of each row's source frame: OUTPUT's original/ file, an image source's own
    file, or the video decoded again up to its last wanted frame (once per source)."""
    import cv2

    out, decode = {}, {}
    for row in rows:
        original = storage.join(output, row["video"], f"original/{int(row['frame']):06d}.jpg")
        source = row.get("source") or ""
        if storage.exists(original):
            out[name_of(row)] = storage.read_bytes(original)
        elif source.lower().endswith(IMAGE_SUFFIXES):
            out[name_of(row)] = storage.read_bytes(source)
        elif source.lower().endswith((".png", ".bmp", ".webp")):
            image = cv2.imdecode(np.frombuffer(storage.read_bytes(source), np.uint8), cv2.IMREAD_COLOR)
            out[name_of(row)] = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        elif source:
            decode.setdefault(source, {})[int(row["frame"])] = name_of(row)
        else:
            raise ExportError(f"{row['video']} frame {row['frame']}: the stats name no source file and OUTPUT "
                              "has no original/ frame (a run before the source column): re-run infer with "
                              "--outputs adding original")
    for source, wanted in decode.items():
        out.update(_decoded(source, wanted))
    return out


def _decoded(source: str, wanted: dict[int, str]) -> dict[str, bytes]:
    import cv2

    from roadseg_dist.video import decode  # the decoder infer counted frames with

    out, last = {}, max(wanted)
    for index, _, frame in decode.decode_range(source, decode.FrameRange(0, block=decode.MAX_BLOCK)):
        if index in wanted:
            out[wanted[index]] = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        if index >= last:
            break
    missing = sorted(set(wanted.values()) - set(out))
    if missing:
        raise ExportError(f"{storage.redact(source)} no longer has frames {missing[:5]} (changed since it was "
                          "segmented?): re-run infer on it, then export again")
    return out


def export(output: str, rows: list[dict[str, Any]], dest: str) -> dict[str, Any]:
    """Write the frames of ``rows`` with their masks to ``dest`` (see the module docstring)."""
    from roadseg_dist.render import palettize_png

    jpegs = frame_jpegs(output, rows)
    bdd, css = storage.join(dest, "bdd100k"), storage.join(dest, "css")
    lines = []
    for row in rows:
        name = name_of(row)
        mask_url = storage.join(output, row["video"], f"mask/{int(row['frame']):06d}.png")
        try:
            mask = storage.read_bytes(mask_url)
        except FileNotFoundError:
            raise ExportError(f"{storage.redact(mask_url)} does not exist: the pre-labels are the run's masks, "
                              "so export needs a run with mask in --outputs (the default)") from None
        storage.write_bytes(storage.join(bdd, "images/10k/train", name + ".jpg"), jpegs[name])
        storage.write_bytes(storage.join(bdd, "labels/sem_seg/masks/train", name + ".png"), mask)
        colours = palettize_png(mask)
        storage.write_bytes(storage.join(bdd, "labels/sem_seg/colormaps/train", name + ".png"), colours)
        storage.write_bytes(storage.join(css, "images", name + ".jpg"), jpegs[name])
        storage.write_bytes(storage.join(css, "masks", name + ".png"), colours)  # CSS masks are colours
        lines.append(json.dumps({"name": name, **{k: _plain(v) for k, v in row.items()}}))
    storage.write_text(storage.join(css, "dataset_meta.json"), json.dumps(dataset_meta(), indent=1))
    storage.write_text(storage.join(dest, "manifest.jsonl"), "\n".join(lines) + ("\n" if lines else ""))
    return {"frames": len(rows), "sources": len({r["video"] for r in rows}), "dest": storage.redact(dest)}


def dataset_meta() -> dict[str, Any]:
    """The classes and their colours as Datumaro's dataset_meta.json has them (CSS masks are colour
    images mapped through them): the 19 train ids in order, then "ignore" (train id 255)."""
    names = [*labels.CLASSES, "ignore"]
    colors = [list(map(int, c)) for c in labels.PALETTE] + [list(map(int, labels.IGNORE_COLOR))]
    return {"label_map": {str(i): n for i, n in enumerate(names)}, "segmentation_colors": colors,
            "background_label": str(len(names) - 1)}


def _plain(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
