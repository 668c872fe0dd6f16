"""What to segment: INPUT (a video, a folder/prefix, or a list file) -> sources with safe ids.

A source is a video file or a folder of images (its frames in name order). Its id is its path
relative to INPUT without the extension (``IN/a/b.mp4`` -> ``a/b``), cleaned so that no id can
name anything outside OUTPUT or collide with the run's own state folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import re

from roadseg_dist import storage

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LIST_EXTS = (".txt", ".lst", ".list", ".csv")
STATE_DIR = ".roadseg"  # resume state under OUTPUT; safe ids never start with "."


@dataclasses.dataclass(frozen=True)
class Source:
    id: str
    url: str = ""                  # the video file, for kind == "video"
    images: tuple[str, ...] = ()   # the frames in order, for kind == "images"
    size: int = 0                  # bytes (an image folder: of all its images), from the listing
    identity: str = ""             # what changes when the content is replaced (ETag, or size + mtime)

    @property
    def kind(self) -> str:
        return "images" if self.images else "video"


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def safe_id(relative: str) -> str:
    """``"a/b c.mp4"`` -> ``"a/b_c"``; ``..``, empty and hidden components cannot survive."""
    parts = [p for p in re.split(r"[/\\]+", relative) if p not in ("", ".")]
    if parts:
        stem, ext = posixpath.splitext(parts[-1])
        parts[-1] = stem if stem and ext.lower() in VIDEO_EXTS + IMAGE_EXTS else parts[-1]
    clean = []
    for p in parts:
        p = _UNSAFE.sub("_", p)
        if p.startswith("."):  # "..", ".roadseg", ".hidden" -> "_..", "_.roadseg", "_.hidden"
            p = "_" + p
        clean.append(p)
    return "/".join(clean) or "_"


def _relative(url: str, root: str) -> str:
    url, root = storage.normalize(url), storage.normalize(root).rstrip("/")
    if url.startswith(root + "/"):
        return url[len(root) + 1:]
    return url.rsplit("/", 1)[-1]


def _common_root(urls: list[str]) -> str:
    parents = [storage.normalize(u).rsplit("/", 1)[0] for u in urls]
    root = os.path.commonprefix(parents)
    # commonprefix works on characters; cut back to a whole folder name.
    while root and not all(p == root or p.startswith(root + "/") for p in parents):
        root = root.rsplit("/", 1)[0] if "/" in root else ""
    return root


def _read_list(url: str) -> list[str]:
    lines = [ln.strip() for ln in storage.read_text(url).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


RESERVED = ("report.json", "frames", "frames.parquet", "index.html", "sources.js", STATE_DIR)  # OUTPUT's own files
_INDEX_PAGE = re.compile(r"index-\d+\.html")  # the results index's further pages
MAX_COMPONENT = 160  # bytes of one id component: file systems allow 255, suffixes need room


def _url_hash(url: str) -> str:
    return hashlib.sha1(storage.normalize(url).encode()).hexdigest()[:10]


def _fit(sid: str, url: str) -> str:
    """Over-long components are cut and a reserved top-level name is renamed, both marked by the URL's hash."""
    parts = sid.split("/")
    changed = parts[0].lower() in RESERVED or bool(_INDEX_PAGE.fullmatch(parts[0].lower()))
    for i, p in enumerate(parts):
        if len(p.encode()) > MAX_COMPONENT:
            parts[i] = p.encode()[:MAX_COMPONENT].decode("ascii", "ignore")
            changed = True
    return "/".join(parts) + "_" + _url_hash(url) if changed else sid


def _clashes(ids: dict[str, str]) -> set[str]:
    """Keys whose id equals another's, or is a folder holding another's outputs (``a`` and ``a/b``)."""
    by_id: dict[str, list[str]] = {}
    for key, sid in ids.items():
        by_id.setdefault(sid.lower(), []).append(key)
    out = {k for keys in by_id.values() if len(keys) > 1 for k in keys}
    folders = {"/".join(sid.lower().split("/")[:i]) for sid in ids.values() for i in range(1, sid.count("/") + 1)}
    return out | {k for k, sid in ids.items() if sid.lower() in folders}


def _unique_ids(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """(relative path, URL) -> id, unique by construction: two sources never share an output folder.

    Stems that clash keep their extension (``a.mp4``, ``a.avi`` -> ``a_mp4``, ``a_avi``); whatever still
    clashes (``a_mp4.mkv``; ``s3://b1/in/ok.mp4`` and ``s3://b2/in/ok.mp4``) gets a hash of its full
    URL. Decided from the whole list, so the same inputs always get the same ids.
    """
    ids = {url: _fit(safe_id(rel), url) for rel, url in pairs}
    rel_of = {url: rel for rel, url in pairs}
    clashing = _clashes(ids)
    exts = {url: posixpath.splitext(rel_of[url])[1].lstrip(".").lower() for url in clashing}
    for url in sorted(clashing):  # the extension tells them apart only where it differs
        same = [u for u in clashing if ids[u].lower() == ids[url].lower() and exts[u] == exts[url]]
        if exts[url] and len(same) == 1:
            ids[url] = ids[url] + "_" + _UNSAFE.sub("_", exts[url])
    for url in sorted(_clashes(ids)):
        ids[url] = ids[url] + "_" + _url_hash(url)
    if _clashes(ids):  # two URLs with one hash prefix: never seen, but never silently merged either
        raise ValueError(f"cannot give unique output ids to {sorted(_clashes(ids))[:4]}: rename these inputs")
    return ids


def discover(input_url: str) -> list[Source]:
    """Every source under INPUT, sorted by id, with sizes and identities from one listing (a list
    file's entries: one request each, concurrently). Raises FileNotFoundError/ValueError with what to do."""
    url = storage.normalize(input_url)
    if storage.isdir(url) or (storage.is_remote(url) and not storage.exists(url)):
        details = storage.list_details(url)
        if not details and not storage.exists(url):
            raise FileNotFoundError(f"input {storage.redact(input_url)} does not exist")
        root = url
    elif storage.exists(url):
        ext = posixpath.splitext(url)[1].lower()
        if ext in VIDEO_EXTS or ext in IMAGE_EXTS:
            details, root = {url: storage.info(url)}, url.rsplit("/", 1)[0]
        elif ext in LIST_EXTS:
            files = [storage.normalize(u) for u in _read_list(url)]
            if not files:
                raise ValueError(f"list file {storage.redact(input_url)} names no inputs")
            details, root = _infos(files), _common_root(files)
        else:
            raise ValueError(f"input {storage.redact(input_url)} is neither a video ({', '.join(VIDEO_EXTS)}), "
                             f"an image, a folder nor a list file ({', '.join(LIST_EXTS)})")
    else:
        raise FileNotFoundError(f"input {storage.redact(input_url)} does not exist")
    return _sources(details, root)


def images_identity(frames: list[str], details: dict[str, dict]) -> str:
    """An image folder's identity: its frames' names and sizes (hashed: folders hold thousands)."""
    digest = hashlib.sha1("\n".join(f"{u.rsplit('/', 1)[-1]}:{details[u].get('size')}" for u in frames).encode())
    return f"images:{len(frames)}:{digest.hexdigest()[:16]}"


def _infos(files: list[str]) -> dict[str, dict]:
    from concurrent.futures import ThreadPoolExecutor

    def one(f: str) -> dict:
        try:
            return storage.info(f)
        except FileNotFoundError:
            return {"size": 0}  # reported when its work starts: "file not found"

    with ThreadPoolExecutor(16) as pool:
        return dict(zip(files, pool.map(one, files)))


def _sources(details: dict[str, dict], root: str) -> list[Source]:
    from roadseg_dist.infer.state import file_identity

    files = list(details)
    videos = [f for f in files if f.lower().endswith(VIDEO_EXTS)]
    images: dict[str, list[str]] = {}
    for f in files:
        if f.lower().endswith(IMAGE_EXTS):
            images.setdefault(f.rsplit("/", 1)[0], []).append(f)
    pairs = [(_relative(v, root), v) for v in videos]
    # an image folder's id is the folder relative to INPUT (INPUT itself: its own name)
    pairs += [(_relative(folder, root) if folder != root else folder.rsplit("/", 1)[-1], folder)
              for folder in images]
    ids = _unique_ids(pairs)
    sources = [Source(id=ids[v], url=v, size=int(details[v].get("size") or 0),
                      identity=file_identity(v, details[v])) for v in videos]
    for folder, frames in images.items():
        frames = sorted(frames)
        sources.append(Source(id=ids[folder], images=tuple(frames),
                              size=sum(int(details[f].get("size") or 0) for f in frames),
                              identity=images_identity(frames, details)))
    return sorted(sources, key=lambda s: s.id)
