"""Whether a source adds up: its ranges join up into frames 0..n-1, its kept frames have no gap.

Plain logic, no Ray. A unit of work returns, with its frames, what its decoder found (the index of
its first frame, how many it decoded, how many the container index promised, whether damaged data
ended it: see ``video.decode.decode_range``); once every range of a split source is in, ``source_problem``
checks them in order, and ``check_indices`` checks the frame column of any source.
"""
from __future__ import annotations


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
