"""How long storage takes to give up, and how many requests it makes (issue 15, problem 5).

Prints, per case, the seconds and requests measured now beside what issue 15 measured on the
old layer (storage.retry's 8 attempts around botocore's 10, "transient" by message substrings):
  throttled write        one PUT against an endpoint that always answers 503 SlowDown
  refused endpoint       one read with AWS_ENDPOINT_URL on a port where nothing listens
  missing local file     reading clip503.mp4 that does not exist ("503" in a path)
  missing bucket         reading from a bucket the (moto) server does not have
and the documented bound: AWS_MAX_ATTEMPTS tries, back-off at most backoff_bound_s().

    .venv/bin/python benchmarks/bench_storage_errors.py [--attempts 5]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from conftest import free_port, wait_for_port  # noqa: E402
from faulty_s3_proxy import FaultyProxy  # noqa: E402

from roadseg_dist import storage  # noqa: E402

BEFORE = {"throttled write": "457 s, 80 PUTs", "refused endpoint": "minutes",
          "missing local file": "20 s", "missing bucket": "-"}


def timed(fn) -> tuple[float, str]:
    start = time.monotonic()
    try:
        fn()
        outcome = "no error"
    except Exception as exc:  # noqa: BLE001 - the error is what we measure
        outcome = f"{type(exc).__name__}: {str(exc)[:90]}"
    return time.monotonic() - start, outcome


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attempts", type=int, default=None, help="AWS_MAX_ATTEMPTS (default: unset, 5)")
    args = ap.parse_args()
    if args.attempts:
        os.environ["AWS_MAX_ATTEMPTS"] = str(args.attempts)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        os.environ.update(AWS_ACCESS_KEY_ID="bench-key-id", AWS_SECRET_ACCESS_KEY="bench-secret-key", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=endpoint)
        import boto3
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        rows = []
        with FaultyProxy(endpoint, every=1, faults=("slowdown",)) as proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
            s, out = timed(lambda: storage.write_bytes("s3://bench/a.json", b"{}"))
            rows.append(("throttled write", s, f"{proxy.methods['PUT']} PUT(s)", out))
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
        s, out = timed(lambda: storage.read_bytes("s3://bench/a.json"))
        rows.append(("refused endpoint", s, "", out))
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        with tempfile.TemporaryDirectory() as tmp:
            s, out = timed(lambda: storage.read_bytes(os.path.join(tmp, "clip503.mp4")))
        rows.append(("missing local file", s, "", out))
        s, out = timed(lambda: storage.read_bytes("s3://no-such-bucket/a.json"))
        rows.append(("missing bucket", s, "", out))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"tries per request {storage.max_attempts()} (AWS_MAX_ATTEMPTS), back-off bound "
          f"{storage.backoff_bound_s():.0f} s, connect <= {storage.CONNECT_TIMEOUT_S} s/try")
    print(f"{'case':<20} {'now':>8} {'requests':>10}   {'issue 15 (old layer)':<20} error")
    for case, seconds, requests, outcome in rows:
        print(f"{case:<20} {seconds:7.2f}s {requests:>10}   {BEFORE[case]:<20} {outcome}")


if __name__ == "__main__":
    main()
