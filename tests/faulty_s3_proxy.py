"""A small HTTP proxy on 127.0.0.1 in front of the S3 server that misbehaves like a busy object store.

Every ``every``-th request is either answered ``503 SlowDown`` (the S3 throttling reply) or has its
connection cut: alternately before the request reaches the server, and halfway through the server's
reply. All other requests are relayed unchanged. Requests are counted by method so a test can also
tell whether anything was written (PUT/POST/DELETE) through it. ``faults=("slowdown",)`` with
``every=1`` makes an endpoint that always answers 503 SlowDown.

``hang`` makes an endpoint that accepts connections and then says nothing: ``"silent"`` reads each
request's head and never answers; ``"no-continue"`` never answers a request that asks for
``Expect: 100-continue`` (an S3 PUT of a file) and relays the others. A hung connection is held
open until the proxy closes.

``outage(seconds)`` starts an outage: for that long every connection is closed as soon as it is
accepted (what a client sees of an object store that is down or unreachable), then all is relayed again.
"""
from __future__ import annotations

import collections
import socket
import socketserver
import threading
import time

SLOWDOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
            b"<Message>Please reduce your request rate.</Message></Error>")


def _read_head(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes] | None:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if ":" in line)}


def _read_body(sock: socket.socket, head: bytes, rest: bytes) -> tuple[bytes, bytes]:
    """The raw body (as sent, chunked or not) and whatever bytes follow it."""
    h = _headers(head)
    if "chunked" in h.get("transfer-encoding", "").lower():
        body = rest
        while True:  # the chunked body ends with a zero-size chunk and an empty line (after trailers)
            end = _chunked_end(body)
            if end is not None:
                return body[:end], body[end:]
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("client closed mid-body")
            body += chunk
    n = int(h.get("content-length", "0") or 0)
    body = rest
    while len(body) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("client closed mid-body")
        body += chunk
    return body[:n], body[n:]


def _chunked_end(data: bytes) -> int | None:
    pos = 0
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(data[pos:line_end].split(b";")[0].strip() or b"0", 16)
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", line_end)
            if data[line_end:line_end + 4] == b"\r\n\r\n":
                return line_end + 4
            return None if trailer_end < 0 else trailer_end + 4
        pos = line_end + 2 + size + 2
        if pos > len(data):
            return None


def _force_close(head: bytes) -> bytes:
    """Rewrite a message head to say ``Connection: close`` (one request per upstream connection)."""
    lines = [ln for ln in head[:-4].split(b"\r\n") if not ln.lower().startswith(b"connection:")]
    return b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n"


class FaultyProxy:
    def __init__(self, upstream: str, every: int = 5,
                 faults: tuple[str, ...] = ("slowdown", "cut-before", "slowdown", "cut-during"),
                 hang: str | None = None):
        host, port = upstream.split("://", 1)[-1].rstrip("/").split(":")
        self.upstream = (host, int(port))
        self.every, self.cycle = every, faults
        self.hang, self.hung, self.closing = hang, 0, threading.Event()
        self.down_until, self.refused = 0.0, 0
        self.lock = threading.Lock()
        self.count = 0
        self.methods: collections.Counter = collections.Counter()
        self.faults: collections.Counter = collections.Counter()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultyProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing.set()  # lets hung connections go
        self.server.shutdown()
        self.server.server_close()

    def outage(self, seconds: float) -> None:
        """Refuse every connection for ``seconds`` from now."""
        self.down_until = time.monotonic() + seconds

    def writes(self) -> int:
        return sum(n for m, n in self.methods.items() if m in ("PUT", "POST", "DELETE"))

    def _serve(self, client: socket.socket) -> None:
        buf = b""
        if time.monotonic() < self.down_until:
            with self.lock:
                self.refused += 1
            client.close()
            return
        try:
            while True:  # keep-alive: one client connection may carry several requests
                got = _read_head(client, buf)
                if got is None:
                    return
                head, rest = got
                expects = _headers(head).get("expect", "").lower() == "100-continue"
                if self.hang == "silent" or (self.hang == "no-continue" and expects):
                    with self.lock:
                        self.hung += 1
                        self.methods[head.split(b" ", 1)[0].decode()] += 1
                    self.closing.wait()
                    return
                if expects:
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # we take the body ourselves
                    head = b"\r\n".join(ln for ln in head.split(b"\r\n")
                                         if not ln.lower().startswith(b"expect:"))
                body, buf = _read_body(client, head, rest)
                method = head.split(b" ", 1)[0].decode()
                with self.lock:
                    self.count += 1
                    n = self.count
                    self.methods[method] += 1
                fault = None
                if n % self.every == 0:
                    fault = self.cycle[(n // self.every) % len(self.cycle)]
                    self.faults[fault] += 1
                if fault == "slowdown":
                    client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                                   b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(SLOWDOWN) + SLOWDOWN)
                    return
                if fault == "cut-before":
                    return
                reply = self._forward(_force_close(head) + body)
                if fault == "cut-during":
                    client.sendall(reply[: max(1, len(reply) // 2)])
                    return
                client.sendall(reply)
                return  # the reply says Connection: close
        except (ConnectionError, OSError):
            return
        finally:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()

    def _forward(self, request: bytes) -> bytes:
        with socket.create_connection(self.upstream, timeout=60) as up:
            up.sendall(request)
            parts = []
            while True:
                chunk = up.recv(1 << 16)
                if not chunk:
                    break
                parts.append(chunk)
        reply = b"".join(parts)
        head, sep, body = reply.partition(b"\r\n\r\n")
        return _force_close(head + sep) + body if sep else reply
