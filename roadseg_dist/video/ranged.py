"""Reading an object in storage as a seekable file, in ranged GETs, for FFmpeg (through PyAV)."""
from __future__ import annotations

import collections
import io
import threading


class HeadCache:
    """The bytes FFmpeg reads to open a video (header, index, first packet), kept per process.

    Every frame range of a video opens the container again; without this each range would read the
    header, the index (an MP4's ``moov`` grows with the frame count) and the first keyframe again,
    ~20% extra bytes at 10+ ranges. Keyed by path, size and ETag, so a replaced object is never
    served stale; bounded in bytes, oldest video out first.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024):
        self.max_bytes, self.bytes = max_bytes, 0
        self.videos: collections.OrderedDict[tuple, list[tuple[int, bytes]]] = collections.OrderedDict()
        self.lock = threading.Lock()

    def find(self, key: tuple, start: int, end: int) -> tuple[int, bytes] | None:
        """A cached chunk (its offset, its bytes) that holds [start, end), if any."""
        with self.lock:
            for at, data in self.videos.get(key, ()):
                if at <= start and end <= at + len(data):
                    return at, data
        return None

    def add(self, key: tuple, at: int, data: bytes) -> None:
        if len(data) > self.max_bytes // 8:
            return
        with self.lock:
            self.videos.setdefault(key, []).append((at, data))
            self.videos.move_to_end(key)
            self.bytes += len(data)
            while self.bytes > self.max_bytes and self.videos:
                _, chunks = self.videos.popitem(last=False)
                self.bytes -= sum(len(d) for _, d in chunks)


HEADS = HeadCache()


class RangedReader(io.RawIOBase):
    """A read-only, seekable view of an object in ranged GETs, with adaptive read-ahead.

    FFmpeg reads a container's header and index in small hops (start, end, back to the data), then
    streams. A GET after a jump asks for just what was asked; while reads stay sequential it adds a
    read-ahead that starts at 16 KiB and doubles up to ``max_block``, never speculating past
    ``reach``. So the hops cost little, streaming costs few requests, and a range reads little
    past its end. With a ``key`` (path, size, ETag), what is read until ``opened()`` goes to (and
    comes from) the process's ``HEADS`` cache.
    """

    MIN_AHEAD = 16 * 1024

    def __init__(self, fs, path: str, size: int, max_block: int = 8 * 1024 * 1024, reach: int | None = None,
                 key: tuple | None = None, cache: HeadCache = HEADS):
        super().__init__()
        self.key, self.cache, self.opening = key, cache, key is not None
        self.reach = size if reach is None else reach
        self.fs, self.path, self.size, self.max_block = fs, path, size, max(max_block, self.MIN_AHEAD)
        self.pos, self.buf, self.buf_at, self.ahead = 0, b"", 0, 0
        self.fetched = 0  # bytes read from storage (for tests and benchmarks)
        self.error: BaseException | None = None  # a failed read: FFmpeg only sees "I/O error"

    def opened(self) -> None:
        """The container is open: later reads (frame data) are not cached."""
        self.opening = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos)
        if n <= 0:
            return b""
        lo = self.pos - self.buf_at
        if self.buf and 0 <= lo <= len(self.buf):  # what the buffer holds, then the rest read ahead
            data = self.buf[lo:lo + n]
            if len(data) < n:
                self.ahead = min(max(self.MIN_AHEAD, self.ahead * 2), self.max_block)
                data += self._fetch(self.buf_at + len(self.buf), n - len(data))
        else:
            self.ahead = 0  # a jump: read what is asked, nothing more
            data = self._fetch(self.pos, n)
        self.pos += len(data)
        return data

    def _fetch(self, start: int, n: int) -> bytes:
        from roadseg_dist import storage

        hit = self.cache.find(self.key, start, start + n) if self.key else None
        if hit:
            self.buf_at, self.buf = hit
            return self.buf[start - self.buf_at:start - self.buf_at + n]
        end = min(self.size, max(start + n, min(start + n + self.ahead, self.reach)))
        try:
            self.buf = storage.retry(self.fs.cat_file, self.path, start=start, end=end, url="s3://" + self.path)
        except Exception as exc:
            self.error = exc
            raise
        self.buf_at, self.fetched = start, self.fetched + len(self.buf)
        if self.opening:
            self.cache.add(self.key, start, self.buf)
        return self.buf[:n]

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)
