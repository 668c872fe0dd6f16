"""The one retry layer for S3, and the errors it ends in.

Every S3 request is retried by botocore's "standard" mode and nowhere else: it decides what is
transient from error codes, HTTP status and exception types (503 SlowDown and the throttling codes,
500/502/504, RequestTimeout, connection errors), never from message text. A request is tried at
most ``max_attempts()`` times (AWS_MAX_ATTEMPTS, default 5); between tries botocore sleeps a random
t_i <= min(2**(i-1), 20) s, so the back-off of one request totals at most ``backoff_bound_s()``
(15 s at 5 tries), plus at most CONNECT_TIMEOUT_S per try to connect and ``read_timeout_s()`` (8 s,
ROADSEG_S3_READ_TIMEOUT) per try without progress: waiting for ``100 Continue``, sending the body,
waiting for the answer's head (``s3http.BoundedHTTPSession``) or between reads of the answer. An
endpoint that accepts connections and says nothing is a StorageError after about ``silent_bound_s()``
(5 x 8 + 15 = 55 s). s3fs's own retry loop is turned off (it retried by message text on top of
botocore's). The only retry above botocore: a read whose body breaks after a good response
(botocore cannot see it) is requested again from where it broke, at most STREAM_RETRIES more times
(``storage.retry``, ``storage.open_input``).

When the tries are spent, ``classify`` turns what S3 said into a StorageError that names the
endpoint and bucket: unreachable, silent, credentials refused, bucket missing, still busy.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Callable, Iterator

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 5
CONNECT_TIMEOUT_S = 4
# Seconds a try may go without progress. Long enough for a busy S3-compatible server to start an
# answer (AWS S3 starts even a large CopyObject's answer at once); short enough that a silent endpoint
# is reported within a minute at the default 5 tries, instead of 5 x 60 s (botocore's default).
DEFAULT_READ_TIMEOUT_S = 8.0
STREAM_RETRIES = 2


def max_attempts() -> int:
    """Tries per S3 request: AWS_MAX_ATTEMPTS (the standard AWS setting), else 5."""
    value = os.environ.get("AWS_MAX_ATTEMPTS", "")
    try:
        return max(1, int(value)) if value else DEFAULT_MAX_ATTEMPTS
    except ValueError:
        raise ValueError(f"AWS_MAX_ATTEMPTS={value!r} is not a whole number of tries") from None


def read_timeout_s() -> float:
    """Seconds an S3 try may go without progress: ROADSEG_S3_READ_TIMEOUT, else 8."""
    value = os.environ.get("ROADSEG_S3_READ_TIMEOUT", "")
    try:
        seconds = float(value) if value else DEFAULT_READ_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"ROADSEG_S3_READ_TIMEOUT={value!r} is not a positive number of seconds")
    return seconds


def silent_bound_s() -> float:
    """How long a request to an endpoint that accepts connections and never answers takes, at most
    (plus the time to connect and to build the request, well under a second each try)."""
    return max_attempts() * read_timeout_s() + backoff_bound_s()


def backoff_bound_s(attempts: int | None = None) -> float:
    """The most botocore can sleep between the tries of one request (standard mode)."""
    n = max_attempts() if attempts is None else attempts
    return float(sum(min(2 ** (i - 1), 20) for i in range(1, n)))


@functools.lru_cache(maxsize=8)
def s3fs_filesystem(endpoint: str | None, attempts: int, read_timeout: float = DEFAULT_READ_TIMEOUT_S):
    import s3fs

    from roadseg_dist.s3http import BoundedHTTPSession

    config = {"retries": {"total_max_attempts": attempts, "mode": "standard"},  # tries, not retries
              "connect_timeout": CONNECT_TIMEOUT_S, "read_timeout": read_timeout,
              "http_session_cls": BoundedHTTPSession}  # read_timeout also bounds 100-continue and sending
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, config_kwargs=config,
                           skip_instance_cache=True, use_listings_cache=False)
    fs.retries = 1  # one try in s3fs's loop: botocore is the retry layer
    return fs


class StorageError(OSError):
    """S3 cannot be used for this URL: endpoint unreachable, credentials refused, bucket missing.

    The message names the (redacted) endpoint and bucket and says what to check. ``transient``: the
    endpoint was unreachable or busy (an outage that may end), not a refusal that will stay."""

    transient = False


class BucketMissing(StorageError, FileNotFoundError):
    """The bucket of an ``s3://`` URL does not exist at the endpoint."""


_BUSY_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
               "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException", "503", "500"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                     "AccessDenied", "AllAccessDisabled", "TokenRefreshRequired"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _error_code(exc: BaseException) -> str | None:
    for e in _chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict) and (response.get("Error") or {}).get("Code"):
            return str(response["Error"]["Code"])
    return None


def stream_broke(exc: BaseException) -> bool:
    """A response body cut after a good status line: botocore never sees it, so we retry it."""
    from http.client import IncompleteRead

    from botocore.exceptions import IncompleteReadError, ResponseStreamingError
    kinds: tuple[type, ...] = (IncompleteRead, IncompleteReadError, ResponseStreamingError)
    with contextlib.suppress(ImportError):
        from aiohttp import ClientPayloadError
        kinds += (ClientPayloadError,)
    return any(isinstance(e, kinds) for e in _chain(exc))


def _silent(exc: BaseException) -> bool:
    from botocore.exceptions import ReadTimeoutError

    return any(isinstance(e, ReadTimeoutError) for e in _chain(exc))


def _unreachable(exc: BaseException) -> bool:
    """Connection refused, dropped or timed out (botocore's or, under s3fs, aiohttp's); a read that
    timed out is ``_silent``, checked first."""
    from botocore.exceptions import ConnectionError as BotoConnectionError, ConnectTimeoutError, HTTPClientError

    kinds: tuple[type, ...] = (BotoConnectionError, ConnectTimeoutError, HTTPClientError)
    with contextlib.suppress(ImportError):
        from aiohttp import ClientConnectionError
        kinds += (ClientConnectionError,)
    return any(isinstance(e, kinds) for e in _chain(exc))


def classify(exc: BaseException, url_shown: str, endpoint_shown: str, bucket: str) -> BaseException:
    """``exc`` from an S3 call as a clear StorageError, or ``exc`` itself when it is not one of:
    endpoint unreachable, credentials refused, bucket missing, still busy after every try.
    ``url_shown`` and ``endpoint_shown`` are already redacted."""
    if isinstance(exc, StorageError):
        return exc
    code = _error_code(exc)
    where = f"{url_shown} (endpoint {endpoint_shown})"
    if code in _CREDENTIAL_CODES:
        err: BaseException = StorageError(
            f"S3 refused the credentials for {where}: {code}. Check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY (or the node's role) and that it may use bucket " + repr(bucket))
    elif code == "NoSuchBucket":
        err = BucketMissing(f"bucket {bucket!r} does not exist at {endpoint_shown} ({url_shown}): "
                            "create it, or check the bucket name and AWS_ENDPOINT_URL")
    elif code in _BUSY_CODES:
        err = StorageError(f"S3 at {endpoint_shown} kept answering {code} for {url_shown}: gave up after "
                           f"{max_attempts()} tries (AWS_MAX_ATTEMPTS) and at most {backoff_bound_s():.0f} s "
                           "of back-off; try again later, or raise AWS_MAX_ATTEMPTS")
    elif _silent(exc):
        err = StorageError(f"S3 at {endpoint_shown} did not answer {url_shown}: {max_attempts()} tries of "
                           f"{read_timeout_s():g} s without progress (about {silent_bound_s():.0f} s in all); "
                           "is the server up and not overloaded, and AWS_ENDPOINT_URL right? "
                           "(ROADSEG_S3_READ_TIMEOUT waits longer per try)")
    elif _unreachable(exc):
        err = StorageError(f"cannot reach S3 at {endpoint_shown} for {url_shown} after {max_attempts()} "
                           f"tries ({type(exc).__name__}): is the server up and AWS_ENDPOINT_URL right?")
    else:
        return exc
    err.transient = code in _BUSY_CODES or (code is None and (_silent(exc) or _unreachable(exc)))
    err.__cause__ = None
    return err


OUTAGE_PAUSES_S = (5.0, 15.0, 30.0)  # an outage longer than botocore's tries: paused through, then given up


def through_outages(fn: Callable, *args, pauses: tuple[float, ...] = OUTAGE_PAUSES_S,
                    sleep: Callable[[float], None] | None = None, **kwargs):
    """``fn(*args, **kwargs)``, called again after each pause while it fails with a transient
    StorageError (S3 unreachable, silent or busy after every try); any other error, or the last
    one, is raised. For work worth finishing after an outage of up to ~a minute."""
    import time

    sleep = sleep or time.sleep
    for pause in (*pauses, None):
        try:
            return fn(*args, **kwargs)
        except StorageError as exc:
            if not exc.transient or pause is None:
                raise
            log.warning("S3 unavailable (%s); trying again in %.0f s", exc, pause)
            sleep(pause)
    raise AssertionError("unreachable")


class ResumingReader:
    """A read-only S3 file whose reads survive a body cut mid-stream: the object is opened again at
    the same offset, at most STREAM_RETRIES times per read (botocore cannot see such a cut).

    ``open_file()`` opens the object; ``to_error(exc)`` turns any other failure into the error to raise."""

    def __init__(self, open_file: Callable, to_error: Callable[[BaseException], BaseException], url_shown: str):
        self._open, self._to_error, self._url_shown = open_file, to_error, url_shown
        self._f = open_file()

    def read(self, n: int = -1) -> bytes:
        for attempt in range(STREAM_RETRIES + 1):
            pos = self._f.tell()
            try:
                return self._f.read(n)
            except Exception as exc:  # noqa: BLE001 - classified by type below
                if attempt == STREAM_RETRIES or not stream_broke(exc):
                    err = self._to_error(exc)
                    raise err if err is not exc else exc from None
                log.debug("S3 body cut while reading %s at %d, reading on", self._url_shown, pos)
                self._f.close()
                self._f = self._open()
                self._f.seek(pos)
        raise AssertionError("unreachable")

    def __getattr__(self, name):  # tell, seek, size, readable, ...: the underlying file's
        return getattr(self._f, name)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "ResumingReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
