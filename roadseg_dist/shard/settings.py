"""``ShardSettings``: every knob of ``roadseg shard``, one field per CLI flag / YAML key."""
from __future__ import annotations

import dataclasses
import re

from roadseg_dist import settings
from roadseg_dist.data.shards import SPLITS
from roadseg_dist.ops.watchdog import DEFAULT_STALL_TIMEOUT
from roadseg_dist.settings import SettingsError


def parse_bytes(text) -> int | None:
    """``"256MB"``, ``"1GiB"``, ``"5e8"`` or an int -> bytes."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([\d.e+]+)\s*([kmgt]?)(i?b?)\s*", str(text).lower())
    if not m:
        raise SettingsError(f"{text!r} is not a size in bytes: write e.g. 500000000, 256MB or 1GiB")
    value = float(m.group(1))
    power = " kmgt".index(m.group(2) or " ")
    base = 1024 if m.group(3).startswith("i") else 1000
    return int(value * base ** power)


@dataclasses.dataclass
class ShardSettings:
    root: str = settings.field(help="BDD100K root (local path, file:// or s3://)", argument=True, path=True)
    dest: str = settings.field(help="where the shards go (local path, file:// or s3://)", argument=True, path=True)
    split: str = settings.field("train", help="which split to shard", choices=SPLITS)
    shard_size: int = settings.field(256, help="samples per shard")
    shard_bytes: int | None = settings.field(None, help="bytes per shard instead of --shard-size, e.g. 256MB",
                                             parse=parse_bytes)
    workers: int = settings.field(0, help="shard tasks running at once (0: as many as the cluster's CPUs allow)")
    verify: bool = settings.field(False, help="re-read every shard afterwards and check it against the index")
    stall_timeout: float = settings.field(DEFAULT_STALL_TIMEOUT, metavar="SECONDS",
                                          help="fail with a diagnosis when no shard finishes for this long (0: never)")
    address: str | None = settings.field(None, help="Ray address; default RAY_ADDRESS or a local Ray")

    def validate(self) -> None:
        if self.shard_size < 1:
            raise SettingsError(f"--shard-size must be at least 1, got {self.shard_size}")
        if self.shard_bytes is not None and self.shard_bytes < 1:
            raise SettingsError(f"--shard-bytes must be positive, got {self.shard_bytes}")
        if self.workers < 0:
            raise SettingsError(f"--workers must be 0 (auto) or more, got {self.workers}")
        if self.split not in SPLITS:
            raise SettingsError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        settings.at_least(self, 0, "stall_timeout")
