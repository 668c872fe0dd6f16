"""What a run leaves under OUTPUT besides the outputs themselves, and what decides whether they can be kept.

    frames/part-<batch>.parquet          the stats rows of the sources one commit finished
    .roadseg/run.json                    the signature of the run: everything that decides the outputs' bytes
    .roadseg/lease.json                  the writer's lease (``lease.py``): one run at a time
    .roadseg/done/<batch>.json           a commit: the sources it finished (id, identity, frames), its part
    .roadseg/plans/<id>.json             a split source's plan (frame ranges) and identity
    .roadseg/parts/<id>/<start>.parquet  a finished range of a split source: its stats rows
    .roadseg/pieces/<id>/<first>-<last>-<count>.mp4   a range's H.264 piece of overlay.mp4

Sources are committed in batches (``commit``): the manifest first, then its frames part. A source
is done when a manifest names it *and* the manifest's part exists; so a crash between the two
leaves sources that are simply redone, ``frames/`` never holds a part no manifest vouches for, and
a re-run learns what is done from two listings and one read per batch, not a request per source.
A source to redo (its file changed, ``--overwrite``) leaves its batches by ``drop``: the batch is
written again without it (new manifest naming the old one, new part), then the old one removed.
Markers are written last and, on local disks, flushed (fsync) before they are renamed into place.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from roadseg_dist import storage
from roadseg_dist.infer.inputs import STATE_DIR

FRAMES_DIR = "frames"


@dataclasses.dataclass
class Batch:
    """One commit: its manifest's name, its frames part (relative to OUTPUT, or None) and sources."""
    name: str
    part: str | None
    sources: list[dict[str, Any]]
    replaces: list[str] = dataclasses.field(default_factory=list)


class State:
    def __init__(self, output: str):
        self.output = storage.normalize(output)
        self.root = storage.join(self.output, STATE_DIR)
        self.token = os.urandom(3).hex()  # this run's mark in the names of its batches
        self.seq = 0

    def plan_url(self, sid: str) -> str:
        return storage.join(self.root, "plans", sid + ".json")

    def part_url(self, sid: str, start: int) -> str:
        return storage.join(self.root, "parts", sid, f"{start:09d}.parquet")

    def pieces_url(self, sid: str) -> str:
        return storage.join(self.root, "pieces", sid)

    def signature_url(self) -> str:
        return storage.join(self.root, "run.json")

    def listing(self, folder: str, root: str | None = None) -> set[str]:
        """Every file under one folder (of the state, or ``root``), in one listing."""
        url = storage.join(root or self.root, folder)
        return set(storage.list_files(url)) if storage.exists(url) else set()

    def read_json(self, url: str) -> dict[str, Any]:
        return json.loads(storage.read_text(url))

    def write_json(self, url: str, value: dict[str, Any]) -> None:
        storage.write_durable(url, json.dumps(value).encode())

    def forget(self, sid: str) -> None:
        """Remove a source's outputs and per-source state: it is done again from scratch (its batch
        entry goes with ``drop``)."""
        storage.remove(storage.join(self.output, sid), recursive=True)
        storage.remove(storage.join(self.root, "parts", sid), recursive=True)
        storage.remove(self.pieces_url(sid), recursive=True)
        storage.remove(self.plan_url(sid))

    # --- batches of done sources ---------------------------------------------------------------------

    def _manifest_url(self, name: str) -> str:
        return storage.join(self.root, "done", name + ".json")

    def new_batch_name(self) -> str:
        self.seq += 1
        return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{self.token}-{self.seq:05d}"

    def commit(self, sources: list[dict[str, Any]], table=None, replaces: list[str] = ()) -> Batch:
        """Record ``sources`` as done, with their stats rows ``table`` (None: no stats)."""
        name = self.new_batch_name()
        part = f"{FRAMES_DIR}/part-{name}.parquet" if table is not None else None
        batch = Batch(name, part, sources, list(replaces))
        self.write_json(self._manifest_url(name), dataclasses.asdict(batch))
        if table is not None:
            write_table(storage.join(self.output, part), table)
        return batch

    def batches(self) -> list[Batch]:
        """The committed batches (whose parts exist), oldest first; a batch another one replaced and
        a manifest whose part is missing (a crash between the two writes) are removed on the way."""
        names = sorted(u.rsplit("/", 1)[-1][:-5] for u in self.listing("done") if u.endswith(".json"))
        parts = {u.rsplit("/", 1)[-1] for u in self.listing(FRAMES_DIR, self.output)}
        with ThreadPoolExecutor(16) as pool:
            found = list(pool.map(lambda n: Batch(**self.read_json(self._manifest_url(n))), names))
        valid = []
        for b in found:
            if b.part is not None and b.part.rsplit("/", 1)[-1] not in parts:
                storage.remove(self._manifest_url(b.name))  # its part never made it: not done
            else:
                valid.append(b)
        replaced = {old for b in valid for old in b.replaces}
        for b in valid:
            if b.name in replaced:
                self._remove_batch(b)  # its replacement was complete before a crash: finish the clean-up
        return [b for b in valid if b.name not in replaced]

    def _remove_batch(self, b: Batch) -> None:
        if b.part is not None:
            storage.remove(storage.join(self.output, b.part))
        storage.remove(self._manifest_url(b.name))

    def drop(self, batches: list[Batch], ids: set[str]) -> list[Batch]:
        """The batches again without the sources ``ids`` (written anew, then the old ones removed)."""
        kept = []
        for b in batches:
            if not ids & {s["id"] for s in b.sources}:
                kept.append(b)
                continue
            rest = [s for s in b.sources if s["id"] not in ids]
            table = None
            if b.part is not None:
                import pyarrow.compute as pc

                table = read_table(storage.join(self.output, b.part))
                table = table.filter(pc.invert(pc.is_in(table.column("video"), value_set=_strings(ids))))
            new = self.commit(rest, table, replaces=[b.name]) if rest else None
            self._remove_batch(b)
            kept += [new] if new else []
        return kept


def _strings(values):
    import pyarrow as pa

    return pa.array(sorted(values), pa.string())


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


def file_identity(url: str, info: dict | None = None) -> str:
    """ETag of an S3 object, or size + mtime of a local file: changes when the content is replaced.
    ``info`` is what a listing already said of the file (no request then)."""
    if info is None:
        fs, path = storage.filesystem(url)
        info = storage.retry(fs.info, path)
    if storage.is_remote(url):
        return f"etag:{str(info.get('ETag', '')).strip(chr(34))}:size:{info.get('size')}"
    return f"size:{info.get('size')}:mtime:{info.get('mtime', info.get('created'))}"


SIGNATURE_LAYOUT = 3  # 3: the stats have confidence, flicker and source; 2: frames/ parts and batch manifests


def signature(s, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide what the files contain; a resumed run must match them."""
    return {"layout": SIGNATURE_LAYOUT, "input": storage.redact(storage.normalize(s.input)), "model": checkpoint,
            "precision": "fp16" if s.gpu and s.amp == "auto" else s.amp, "size": list(s.size) if s.size else None,
            "every": s.every, "fps": s.fps, "outputs": sorted(s.outputs), "segment_frames": s.segment_frames,
            "alpha": s.alpha, "jpeg_quality": s.jpeg_quality, "video_codec": s.video_codec,
            "confidence": s.confidence, "uncertain_below": s.uncertain_below}
