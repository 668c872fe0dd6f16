"""Every path the project touches goes through here: a local path, ``file://`` or ``s3://``.

S3 uses s3fs with the standard AWS configuration (credential chain, ``AWS_ENDPOINT_URL`` for
MinIO/Ceph/moto-style endpoints), so no code changes between AWS and a loopback server. Writes are
atomic: an object or file appears under its final name only once it is complete.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterator, TypeVar

import fsspec

from roadseg_dist.retries import (  # noqa: F401 - re-exported: callers know them as storage.*
    CONNECT_TIMEOUT_S, STREAM_RETRIES, BucketMissing, ResumingReader, StorageError, backoff_bound_s, classify,
    max_attempts, read_timeout_s, s3fs_filesystem, silent_bound_s, stream_broke)

log = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def scheme(url: str) -> str:
    m = _SCHEME.match(str(url))
    return m.group(1).lower() if m else "file"


def is_remote(url: str) -> bool:
    return scheme(url) != "file"


def local_path(url: str) -> str:
    """``file:///a/b`` or ``a/b`` -> absolute local path."""
    url = str(url)
    if url.startswith("file://"):
        url = url[len("file://"):]
    return os.path.abspath(os.path.expanduser(url))


def normalize(url: str) -> str:
    """Canonical form: ``s3://bucket/key`` without a trailing slash, or an absolute local path."""
    url = str(url)
    s = scheme(url)
    if s == "file":
        return local_path(url)
    if s in ("s3", "s3a"):
        return "s3://" + url.split("://", 1)[1].strip("/")
    raise ValueError(f"unsupported storage URL {redact(url)!r}: use a local path, file:// or s3://")


def join(url: str, *parts: str) -> str:
    base = normalize(url)
    tail = "/".join(p.strip("/") for p in parts if p)
    if not tail:
        return base
    return base.rstrip("/") + "/" + tail


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """URL -> (fsspec filesystem, path within it)."""
    url = normalize(url)
    if scheme(url) == "s3":
        return s3fs_filesystem(s3_endpoint(), max_attempts(), read_timeout_s()), url[len("s3://"):]
    return fsspec.filesystem("file"), url


def arrow_filesystem(url: str):
    """URL -> (pyarrow filesystem, path), for Ray Data and pyarrow readers/writers."""
    import pyarrow.fs as pafs

    url = normalize(url)
    if scheme(url) == "s3":
        endpoint = s3_endpoint()
        kwargs = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts()),
                  "connect_timeout": CONNECT_TIMEOUT_S, "request_timeout": read_timeout_s()}
        if endpoint:
            kwargs["endpoint_override"] = endpoint
            kwargs["scheme"] = "https" if endpoint.startswith("https") else "http"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), url[len("s3://"):]
    return pafs.LocalFileSystem(), url


# --- errors and the stream retry (the layer itself: retries.py) -----------------------------------

def storage_error(exc: BaseException, url: str) -> BaseException:
    """``exc`` from an S3 call on ``url`` as a clear StorageError naming the (redacted) endpoint and
    bucket, or ``exc`` itself (``retries.classify``)."""
    if scheme(url) != "s3":
        return exc
    bucket = normalize(url)[len("s3://"):].split("/", 1)[0]
    return classify(exc, redact(url), redact(s3_endpoint() or "AWS's default S3 endpoint"), bucket)


def retry(fn: Callable[..., T], *args, url: str = "", stream: bool = False, **kwargs) -> T:
    """Call a filesystem method for ``url``. S3 errors that mean "S3 cannot be used" become a
    StorageError; with ``stream`` a body cut mid-read is requested again (STREAM_RETRIES times).
    Local files are never retried."""
    for attempt in range(STREAM_RETRIES + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified by type and error code below
            if not url or scheme(url) != "s3":
                raise
            if stream and attempt < STREAM_RETRIES and stream_broke(exc):
                log.debug("S3 body cut while reading %s, reading it again", redact(url))
                continue
            err = storage_error(exc, url)
            if err is exc:
                raise
            raise err from None
    raise AssertionError("unreachable")


# --- reading -------------------------------------------------------------------------------------

def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return retry(fs.exists, path, url=url)


def isdir(url: str) -> bool:
    fs, path = filesystem(url)
    return retry(fs.isdir, path, url=url)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return retry(fs.cat_file, path, url=url, stream=True)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def size(url: str) -> int:
    fs, path = filesystem(url)
    return int(retry(fs.size, path, url=url))


def list_files(url: str, suffixes: tuple[str, ...] | None = None, recursive: bool = True) -> list[str]:
    """Files under a folder or prefix, as full URLs, sorted; ``suffixes`` filters case-insensitively."""
    fs, path = filesystem(url)
    prefix = "s3://" if scheme(normalize(url)) == "s3" else ""
    if recursive:
        found = retry(fs.find, path, url=url)
    else:
        found = [p for p in retry(fs.ls, path, detail=False, url=url) if retry(fs.isfile, p, url=url)]
    out = []
    for p in found:
        if suffixes and not p.lower().endswith(tuple(s.lower() for s in suffixes)):
            continue
        out.append(prefix + p if prefix else p)
    return sorted(out)


def list_details(url: str, suffixes: tuple[str, ...] | None = None) -> dict[str, dict]:
    """Like ``list_files`` (recursive) but one listing returns what it knows of each file: {url: info}
    with ``size`` and, on S3, ``ETag``, locally ``mtime``."""
    fs, path = filesystem(url)
    prefix = "s3://" if scheme(normalize(url)) == "s3" else ""
    found = retry(fs.find, path, detail=True, url=url)
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None
    out = {}
    for p, info in found.items():
        if info.get("type", "file") != "file" or (wanted and not p.lower().endswith(wanted)):
            continue
        out[prefix + p] = info
    return dict(sorted(out.items()))


def list_sizes(url: str, suffixes: tuple[str, ...] | None = None) -> dict[str, int]:
    """Like ``list_files`` (recursive) but one listing call returns each file's size: {url: bytes}."""
    return {u: int(info.get("size") or 0) for u, info in list_details(url, suffixes).items()}


def info(url: str) -> dict:
    """What storage knows of one file (size; ETag on S3, mtime locally)."""
    fs, path = filesystem(url)
    return retry(fs.info, path, url=url)


def open_input(url: str, mode: str = "rb"):
    fs, path = filesystem(url)
    if is_remote(url) and mode == "rb":
        return ResumingReader(lambda: retry(fs.open, path, "rb", url=url), lambda exc: storage_error(exc, url),
                              redact(url))
    return retry(fs.open, path, mode, url=url)


def download(url: str, local: str) -> None:
    fs, path = filesystem(url)
    os.makedirs(os.path.dirname(os.path.abspath(local)) or ".", exist_ok=True)
    retry(fs.get_file, path, local, url=url, stream=True)


# --- writing (atomic) ----------------------------------------------------------------------------

def makedirs(url: str) -> None:
    if not is_remote(url):
        os.makedirs(local_path(url), exist_ok=True)  # S3 has no folders


@contextlib.contextmanager
def local_temp(prefix: str = "roadseg-", suffix: str = "", dir: str | None = None) -> Iterator[str]:
    """A fresh local temp file's path, removed afterwards (unless it was renamed away)."""
    fd, tmp = tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)
    os.close(fd)
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole object atomically (S3 PUT is atomic; locally a temp file is renamed)."""
    if is_remote(url):
        fs, path = filesystem(url)
        retry(fs.pipe_file, path, data, url=url)
        return
    _replace_local(local_path(url), lambda f: f.write(data))


def write_durable(url: str, data: bytes) -> None:
    """Write a completion marker so that it cannot outlive what it vouches for after a power loss.

    Locally: the data is fsync'ed before the rename and the folder after it, so the marker is on
    disk only after everything written (and fsync'ed or rename-ordered) before it. On S3 a PUT is
    durable when it returns: a plain write.
    """
    if is_remote(url):
        write_bytes(url, data)
        return
    _replace_local(local_path(url), lambda f: f.write(data), durable=True)


def _replace_local(path: str, fill: Callable[[Any], Any], durable: bool = False) -> None:
    """``fill`` a temp file next to ``path`` (an open binary file; mode 0666 less the umask, as
    ``open()`` makes), then rename it: the file appears only when complete. Few system calls:
    inference writes three files a frame. ``durable``: fsync the file before the rename and the
    folder after it."""
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f".tmp-{os.path.basename(path)}-{os.getpid()}-{os.urandom(4).hex()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def upload(local: str, url: str) -> None:
    """Copy a finished local file to ``url``; it appears there only when complete."""
    fs, path = filesystem(url)
    if is_remote(url):
        retry(fs.put_file, local, path, url=url)
        return
    with open(local, "rb") as src:
        _replace_local(path, lambda f: shutil.copyfileobj(src, f, 1 << 20))


def move(src: str, dst: str) -> None:
    """Move a finished file to ``dst`` (same scheme): a rename on disk, a server-side copy then a
    delete on S3; either way ``dst`` appears only complete."""
    if not is_remote(dst):
        os.makedirs(os.path.dirname(local_path(dst)), exist_ok=True)
        os.replace(local_path(src), local_path(dst))
        return
    fs, path = filesystem(dst)
    retry(fs.copy, filesystem(src)[1], path, url=dst)
    retry(fs.rm, filesystem(src)[1], url=src)


@contextlib.contextmanager
def atomic_output(url: str, suffix: str = "") -> Iterator[str]:
    """Yield a local temp path to write; on success it is moved/uploaded to ``url``, else dropped."""
    with local_temp(suffix=suffix) as tmp:
        yield tmp
        upload(tmp, url)


def remove(url: str, recursive: bool = False) -> None:
    fs, path = filesystem(url)
    if retry(fs.exists, path, url=url):
        retry(fs.rm, path, recursive=recursive, url=url)


# --- secrets -------------------------------------------------------------------------------------

_SECRET_PATTERNS = (
    # request headers as botocore logs them: {'X-Amz-Security-Token': b'...', 'Authorization': b'AWS4-...'}
    re.compile(r"(?i)(x-amz-security-token|authorization)(['\"]?\s*[:=]\s*b?['\"]?)[^'\"\r\n]+"),
    re.compile(r"(?i)(aws_secret_access_key|aws_session_token|access_key_id|secret|token|password)"
               r"(['\"]?\s*[:=]\s*b?['\"]?)[^\s'\",}]+"),
    re.compile(r"(?<=Credential=)[^/\s'\",]+|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # access key ids
    re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@"),  # user:password@ in URLs
)


def redact(text: str) -> str:
    """Strip credentials from text that may reach a log, report or manifest."""
    text = str(text)
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "RAY_AUTH_TOKEN"):
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    for pattern in _SECRET_PATTERNS[:2]:
        text = pattern.sub(lambda m: m.group(1) + m.group(2) + "***", text)
    text = _SECRET_PATTERNS[2].sub("***", text)
    return _SECRET_PATTERNS[3].sub("***@", text)
