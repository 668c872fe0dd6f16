"""Which decoded frames belong to a frame range: its presentation-time window (see ``decode.py``).

A range starts on a keyframe; the frames it shows run from that keyframe's presentation time up to
the next range's keyframe's. Learnt from the packets around the two keyframes as they pass, so the
range decodes exactly its own frames and the leading pictures of the next keyframe (open GOPs).
"""
from __future__ import annotations


class Window:
    """The presentation-time window of a range, learnt from the packets around its two keyframes.

    Leading pictures follow their keyframe directly in decode order, and the decoder shows the
    keyframe only after them, so ``first`` is final before the range's first frame comes out.
    """

    def __init__(self, rng):
        self.rng = rng
        self.start_pts = float("-inf") if rng.dts is None else None
        self.end_pts: int | None = None
        self.leading = 0        # leading pictures of our keyframe (the previous range shows them)
        self.next_leading = 0   # leading pictures of the next range's keyframe (we show them)
        self._after_key = True
        self.packets = 0

    @property
    def done(self) -> bool:
        """Closed GOPs: every packet before the next keyframe is in, and nothing after it is needed."""
        rng = self.rng
        return not rng.open_gop and rng.end is not None and self.packets >= rng.end - rng.start

    @property
    def first(self) -> int:
        return self.rng.start + self.leading

    def shows(self, pts) -> bool:
        return pts is not None and pts >= self.start_pts and (self.end_pts is None or pts < self.end_pts)

    def admit(self, packet) -> bool:
        """Whether to decode ``packet``; False once the range has every packet it needs."""
        rng = self.rng
        self.packets += 1
        if self.start_pts is None:  # our keyframe (checked by decode_range)
            self.start_pts = packet.pts
            return True
        if rng.end_dts is None or packet.dts is None or packet.dts < rng.end_dts:
            leading = rng.dts is not None and packet.pts is not None and packet.pts < self.start_pts
            self._after_key = self._after_key and leading
            self.leading += self._after_key
            return True
        if packet.dts == rng.end_dts:
            self.end_pts = packet.pts
            return True
        if self.end_pts is not None and packet.pts is not None and packet.pts < self.end_pts:
            self.next_leading += 1
            return True
        return False
