"""aiobotocore's HTTP session with the one time bound aiohttp lacks: until an answer starts.

aiohttp bounds connecting (``sock_connect``) and each read of an answer (``sock_read``), but its
read clock starts only once the request body is sent, and it waits for ``100 Continue`` with no
clock at all: botocore asks for it on every PUT of a file or bytes, so an endpoint that accepts the
connection and says nothing hung a PUT forever. ``BoundedHTTPSession.send`` adds that clock: from
sending a request until its answer's head arrives, at most ``sock_read`` seconds may pass without
progress (a chunk of the body taken by the connection: aiohttp reads the next one once the last has
left), or the try ends in botocore's ``ReadTimeoutError``, which the standard retry mode retries like
any read timeout. A slow upload that keeps moving is never cut.

Used by ``retries.s3fs_filesystem`` (``http_session_cls``); imports aiobotocore, so only S3 users load it.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import time

import wrapt
from aiobotocore.httpsession import AIOHTTPSession
from botocore.exceptions import ReadTimeoutError


class _Metered(wrapt.ObjectProxy):
    """A request body whose every read stamps ``clock[0]`` (still an ``io.BytesIO`` etc. to aiohttp)."""

    def __init__(self, body, clock: list[float]):
        super().__init__(body)
        self._self_clock = clock

    def read(self, *args, **kwargs):
        self._self_clock[0] = time.monotonic()
        return self.__wrapped__.read(*args, **kwargs)


class BoundedHTTPSession(AIOHTTPSession):
    """``AIOHTTPSession`` whose ``send`` fails a try that makes no progress for ``sock_read`` seconds."""

    async def send(self, request):
        limit = self._timeout.sock_read
        if not limit:
            return await super().send(request)
        clock = [time.monotonic()]
        body = request.body.__wrapped__ if isinstance(request.body, _Metered) else request.body
        if isinstance(body, (bytes, bytearray)) and body:
            body = io.BytesIO(body)  # read in chunks, so that sending it shows progress
        if isinstance(body, io.IOBase):
            request.body = _Metered(body, clock)  # botocore's retry seeks it back to 0: still works
        task = asyncio.ensure_future(super().send(request))
        try:
            while not task.done():
                idle = time.monotonic() - clock[0]
                if idle >= limit:
                    break
                await asyncio.wait({task}, timeout=limit - idle)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # the try is over either way
            await task
        raise ReadTimeoutError(endpoint_url=request.url,
                               error=f"no answer and no progress for {limit:g} s (100-continue, body or head)")
