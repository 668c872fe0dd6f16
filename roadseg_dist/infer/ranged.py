"""Reading an object in storage as a seekable file, in ranged GETs, for FFmpeg (through PyAV)."""
from __future__ import annotations

import io


class RangedReader(io.RawIOBase):
    """A read-only, seekable view of an object in ranged GETs, with adaptive read-ahead.

    FFmpeg reads a container's header and index in small hops (start, end, back to the data), then
    streams. A GET after a jump asks for just what was asked; while reads stay sequential it adds a
    read-ahead that starts at 16 KiB and doubles up to ``max_block``, never speculating past
    ``reach``. So the hops cost little, streaming costs few requests, and a range reads little
    past its end.
    """

    MIN_AHEAD = 16 * 1024

    def __init__(self, fs, path: str, size: int, max_block: int = 8 * 1024 * 1024, reach: int | None = None):
        super().__init__()
        self.reach = size if reach is None else reach
        self.fs, self.path, self.size, self.max_block = fs, path, size, max(max_block, self.MIN_AHEAD)
        self.pos, self.buf, self.buf_at, self.ahead = 0, b"", 0, 0
        self.fetched = 0  # bytes read from storage (for tests and benchmarks)

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

        end = min(self.size, max(start + n, min(start + n + self.ahead, self.reach)))
        self.buf = storage.retry(self.fs.cat_file, self.path, start=start, end=end)
        self.buf_at, self.fetched = start, self.fetched + len(self.buf)
        return self.buf[:n]

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)
