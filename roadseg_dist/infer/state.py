"""The resume state under ``OUTPUT/.roadseg/``, and what decides whether old outputs can be kept.

    run.json            the signature of the run: everything that decides the bytes of the outputs
    plans/<id>.json     a source's plan (its frame ranges) and identity (ETag or size + mtime)
    parts/<id>/<start>.parquet   a finished frame range: its stats rows, written after all its files
    pieces/<id>/<first>-<last>-<count>.mp4   H.264 pieces of overlay.mp4, removed once it is joined
    done/<id>.json      a finished source, written after its overlay.mp4

Markers are written last and, on local disks, flushed (fsync) before they are renamed into place,
so after a power loss a marker never outlives the files it vouches for.
"""
from __future__ import annotations

import hashlib
import io
import json
from typing import Any

from roadseg_dist import storage
from roadseg_dist.infer.inputs import STATE_DIR


class State:
    def __init__(self, output: str):
        self.output = storage.normalize(output)
        self.root = storage.join(self.output, STATE_DIR)

    def plan_url(self, sid: str) -> str:
        return storage.join(self.root, "plans", sid + ".json")

    def part_url(self, sid: str, start: int) -> str:
        return storage.join(self.root, "parts", sid, f"{start:09d}.parquet")

    def pieces_url(self, sid: str) -> str:
        return storage.join(self.root, "pieces", sid)

    def done_url(self, sid: str) -> str:
        return storage.join(self.root, "done", sid + ".json")

    def signature_url(self) -> str:
        return storage.join(self.root, "run.json")

    def listing(self, folder: str) -> set[str]:
        """Every file under one state folder, in one listing (not a request per file)."""
        url = storage.join(self.root, folder)
        return set(storage.list_files(url)) if storage.exists(url) else set()

    def read_json(self, url: str) -> dict[str, Any]:
        return json.loads(storage.read_text(url))

    def write_json(self, url: str, value: dict[str, Any]) -> None:
        storage.write_durable(url, json.dumps(value).encode())

    def forget(self, sid: str) -> None:
        """Remove a source's outputs and state: it is done again from scratch."""
        storage.remove(storage.join(self.output, sid), recursive=True)
        storage.remove(storage.join(self.root, "parts", sid), recursive=True)
        storage.remove(self.pieces_url(sid), recursive=True)
        storage.remove(self.plan_url(sid))
        storage.remove(self.done_url(sid))


def write_table(url: str, table) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_durable(url, buf.getvalue())


def read_table(url: str):
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(url)))


def checkpoint_identity(checkpoint: str) -> dict[str, Any]:
    """What decides the model's bytes: the resolved checkpoint's meta.json and its weights' identity."""
    from roadseg_dist.models.checkpoint import resolve_checkpoint

    resolved = resolve_checkpoint(checkpoint)
    meta = storage.read_bytes(storage.join(resolved, "meta.json"))
    return {"checkpoint": storage.redact(resolved), "meta_sha1": hashlib.sha1(meta).hexdigest(),
            "weights": file_identity(storage.join(resolved, "model.pt"))}


def file_identity(url: str) -> str:
    """ETag of an S3 object, or size + mtime of a local file: changes when the content is replaced."""
    fs, path = storage.filesystem(url)
    info = storage.retry(fs.info, path)
    if storage.is_remote(url):
        return f"etag:{str(info.get('ETag', '')).strip(chr(34))}:size:{info.get('size')}"
    return f"size:{info.get('size')}:mtime:{info.get('mtime', info.get('created'))}"


def signature(s, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide what the files contain; a resumed run must match them."""
    return {"input": storage.redact(storage.normalize(s.input)), "model": checkpoint,
            "precision": "fp16" if s.gpu and s.amp == "auto" else s.amp, "size": list(s.size) if s.size else None,
            "every": s.every, "fps": s.fps, "outputs": sorted(s.outputs), "segment_frames": s.segment_frames,
            "alpha": s.alpha, "jpeg_quality": s.jpeg_quality, "video_codec": s.video_codec}
