"""The per-range ledger: which frames of which range have come back, and whether a source adds up.

Plain logic, no Ray. The driver feeds it the writer stage's result batches (``add_batch``) and gets
back each range the moment it is complete: its end row arrived and so did every frame the range
decoded (rows of one range may arrive in any order, and a retried task may send a frame twice; it
counts once). When all ranges of a source are in, ``source_problem`` says whether their frame
indices join up into 0..n-1 (see ``frames.decode_range``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from roadseg_dist.infer.rows import END


@dataclasses.dataclass
class RangeResult:
    fractions: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # frame index -> class fractions
    times: dict[int, float] = dataclasses.field(default_factory=dict)
    end: dict | None = None  # first, count, expected, broken, error: known once the end row arrives
    stride: int = 1

    @property
    def complete(self) -> bool:
        if self.end is None:
            return False
        if self.end["error"]:
            return True
        first, count = self.end["first"], self.end["count"]
        wanted = sum(1 for i in range(first, first + count) if i % self.stride == 0)
        return len(self.fractions) >= wanted


class Ledger:
    def __init__(self, strides: dict[str, int]):
        self.strides = strides  # source id -> stride
        self.open: dict[tuple[str, int], RangeResult] = {}
        self.closed: set[tuple[str, int]] = set()  # late duplicates of a finished range are ignored
        self.frames = 0  # distinct frames received

    def add_batch(self, batch: dict[str, np.ndarray]) -> list[tuple[str, int, RangeResult]]:
        """Record a result batch; return the ranges it completed as (source id, range start, result)."""
        done = []
        for i in range(len(batch["index"])):
            sid, start, index = str(batch["video"][i]), int(batch["start"][i]), int(batch["index"][i])
            if (sid, start) in self.closed:
                continue
            rng = self.open.setdefault((sid, start), RangeResult(stride=self.strides.get(sid, 1)))
            if index == END:
                rng.end = {**{k: int(batch[k][i]) for k in ("first", "count", "expected")},
                           **{k: str(batch[k][i]) for k in ("broken", "error")}}
            elif index not in rng.fractions:
                rng.fractions[index] = np.asarray(batch["fractions"][i], dtype=np.float32)
                rng.times[index] = float(batch["time"][i])
                self.frames += 1
            if rng.complete:
                self.closed.add((sid, start))
                done.append((sid, start, self.open.pop((sid, start))))
        return done

    def unfinished(self) -> list[tuple[str, int]]:
        return sorted(self.open)


def source_problem(ends: list[dict]) -> str:
    """'' when a source's ranges (their end records, in order) join up into frames 0..n-1.

    Every range must start where its predecessor stopped and decode the frames the index promised;
    only a broken tail may fall short, and then every later range must be empty.
    """
    expect_first, short = 0, False
    for r, end in enumerate(ends):
        if short:
            if end["count"]:
                return f"range {r} decoded {end['count']} frame(s) after damaged data ended an earlier range"
            continue
        if end["count"] and end["first"] != expect_first:
            return f"range {r} starts at frame {end['first']}, its predecessor ended before frame {expect_first}"
        expect_first = end["first"] + end["count"]
        if end["expected"] >= 0 and end["count"] != end["expected"]:
            if not end["broken"] and end["count"] > end["expected"]:
                return f"range {r} decoded {end['count']} frames where the index promised {end['expected']}"
            if not end["broken"]:
                return f"range {r} decoded {end['count']} of {end['expected']} frames"
            short = True
    return ""


def check_indices(indices: list[int], stride: int) -> str:
    """'' when the frame indices of a source run 0, stride, 2*stride, ... with no gap or repeat."""
    expected = list(range(0, stride * len(indices), stride))
    if indices == expected:
        return ""
    seen: set[int] = set()
    dups = sorted({i for i in indices if i in seen or seen.add(i)})
    missing = sorted(set(expected) - set(indices))[:10]
    return f"frame indices are not contiguous (missing {missing}, repeated {dups[:10]})"
