"""One ``roadseg infer`` at a time per OUTPUT: a lease in ``OUTPUT/.roadseg/lease.json``.

Two runs into one OUTPUT would remove each other's pieces and commit the same sources twice, so a
run takes the lease before it reads or writes any state and keeps it fresh (a heartbeat every
HEARTBEAT_S) until it ends. A second run finds a fresh lease and stops at once, saying who holds it.
A lease whose holder died goes stale: on the same host as soon as its process is gone, elsewhere
after TTL_S without a heartbeat; the next run then takes it over.

Object storage has no atomic create, so taking a lease is write, wait SETTLE_S, read back: of two
runs that start together, the one whose write landed last keeps it and the other stops.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time

from roadseg_dist import storage

TTL_S = 60.0
HEARTBEAT_S = 15.0
SETTLE_S = 0.5


class LeaseHeld(Exception):
    """Another run writes to this OUTPUT; the message names it and says what to do."""


def _alive_here(holder: dict) -> bool:
    """Whether the holder is a live process of this host (False when it is certainly gone)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def fresh(holder: dict, now: float) -> bool:
    """Whether a lease read from OUTPUT still holds it."""
    return now - float(holder.get("updated", 0)) < TTL_S and _alive_here(holder)


class Lease:
    def __init__(self, output: str, root: str):
        self.output, self.url = output, storage.join(root, "lease.json")
        self.me = {"token": os.urandom(8).hex(), "host": socket.gethostname(), "pid": os.getpid(),
                   "started": time.time()}
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        try:
            return json.loads(storage.read_text(self.url))
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a torn or foreign file: nobody's lease

    def _write(self) -> None:
        storage.write_bytes(self.url, json.dumps({**self.me, "updated": time.time()}).encode())

    def _refuse(self, holder: dict) -> LeaseHeld:
        age = time.time() - float(holder.get("updated", 0))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
        return LeaseHeld(
            f"{storage.redact(self.output)} is being written by another `roadseg infer` (host "
            f"{holder.get('host')}, pid {holder.get('pid')}, since {since}, last heard from {age:.0f} s ago): "
            f"wait for it to finish, or choose another OUTPUT. If that run is gone, its lease expires "
            f"{max(0.0, TTL_S - age):.0f} s from now and a re-run then takes over")

    def acquire(self) -> "Lease":
        holder = self._read()
        if holder and holder.get("token") != self.me["token"] and fresh(holder, time.time()):
            raise self._refuse(holder)
        self._write()
        time.sleep(SETTLE_S)
        holder = self._read()
        if not holder or holder.get("token") != self.me["token"]:
            raise self._refuse(holder or {})
        self.thread = threading.Thread(target=self._beat, daemon=True, name="infer-lease")
        self.thread.start()
        return self

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                holder = self._read()
                if holder and holder.get("token") == self.me["token"]:
                    self._write()
            except Exception:  # noqa: BLE001 - a missed heartbeat is retried at the next one
                continue

    def release(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        try:
            holder = self._read()
            if holder and holder.get("token") == self.me["token"]:
                storage.remove(self.url)
        except Exception:  # noqa: BLE001 - the lease expires on its own
            return

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
