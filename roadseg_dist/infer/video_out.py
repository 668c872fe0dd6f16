"""``overlay.mp4`` through PyAV (FFmpeg): H.264 that browsers play, or MJPEG.

``h264`` (the default) is encoded while the job runs: each writer batch encodes its overlays as a
*piece* (a short H.264 MP4 of consecutive frames, starting on an IDR frame), and when a source is
complete its pieces are joined by copying packets (``join_pieces``: no decode, no encode), so no
encode of the whole video waits after the last frame. Pieces of ~32 frames cost ~20% more bytes than
one long encode (their IDR frames) and save the JPEG decode.

Where the pieces do not cover the frames (a range redone with other batch boundaries, a crash
between files, a piece that could not be written), ``write_overlay_video`` encodes the overlay
JPEGs instead: each is decoded by FFmpeg's MJPEG decoder straight to YUV (no BGR round trip),
converted to ``yuv420p`` and encoded. Both paths use libx264 ``ultrafast``, CRF 23, one thread
(the parallelism is across writers and videos), with the index at the front (``+faststart``) so a
browser starts playing before the whole file arrives. ``mjpeg``: the JPEG bytes are muxed as they
are, no decode and no encode (players such as ffmpeg, VLC and OpenCV play it; browsers do not).
Frames arrive in index order; the stream runs at ``fps`` (source fps / stride).
"""
from __future__ import annotations

import dataclasses
import io
from fractions import Fraction
from typing import Iterable, Sequence

import numpy as np

from roadseg_dist import yuv

VIDEO_CODECS = ("h264", "mjpeg")
H264_OPTIONS = {"preset": "ultrafast", "crf": "23", "threads": "1"}  # ~3x cheaper than veryfast at 720p


def _rate(fps: float) -> Fraction:
    return Fraction(fps if fps and fps > 0 else 10.0).limit_denominator(1001)


def _h264_stream(container, rate, width: int, height: int):
    """The libx264 stream both H.264 paths encode into (yuv420p needs even dimensions)."""
    stream = container.add_stream("libx264", rate=rate, options=dict(H264_OPTIONS))
    stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
    return stream


def _h264(container, jpegs: Iterable[bytes], rate: Fraction, width: int, height: int) -> int:
    import av

    stream = _h264_stream(container, rate, width, height)
    stream.codec_context.colorspace, stream.codec_context.color_range = yuv.TAGS["bt601"], 1  # JPEG's matrix
    jpeg = av.CodecContext.create("mjpeg", "r")
    jpeg.thread_count = 1
    n = 0
    for data in jpegs:
        for frame in jpeg.decode(av.Packet(data)):
            i420 = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
            i420.pts, i420.time_base = n, 1 / rate
            container.mux(stream.encode(i420))
            n += 1
    container.mux(stream.encode(None))
    return n


def _mjpeg(container, jpegs: Iterable[bytes], rate: Fraction, width: int, height: int) -> int:
    import av

    stream = container.add_stream("mjpeg", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
    stream.time_base = 1 / rate
    n = 0
    for data in jpegs:
        packet = av.Packet(data)
        packet.stream, packet.pts, packet.dts, packet.time_base = stream, n, n, 1 / rate
        packet.is_keyframe = True
        container.mux(packet)
        n += 1
    return n


def write_overlay_video(path: str, jpegs: Iterable[bytes], fps: float, width: int, height: int,
                        codec: str = "h264") -> int:
    """Write the JPEG frames, in order, as an MP4 at local ``path``; returns the frame count."""
    import av

    if codec not in VIDEO_CODECS:
        raise ValueError(f"video codec {codec!r}: choose from {', '.join(VIDEO_CODECS)}")
    write = _h264 if codec == "h264" else _mjpeg
    with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as container:
        return write(container, jpegs, _rate(fps), int(width), int(height))


# --- pieces ------------------------------------------------------------------------------------------

PIECE_RATE = 25  # pieces are re-timed when joined; x264's CRF barely depends on the rate


@dataclasses.dataclass(frozen=True)
class Piece:
    """A piece file: ``count`` consecutive output frames from index ``first`` to ``last``."""
    first: int
    last: int
    count: int

    @property
    def name(self) -> str:
        return f"{self.first:09d}-{self.last:09d}-{self.count}.mp4"

    @classmethod
    def parse(cls, name: str) -> "Piece | None":
        try:
            first, last, count = name.rsplit("/", 1)[-1].removesuffix(".mp4").split("-")
            return cls(int(first), int(last), int(count))
        except ValueError:
            return None  # not a piece (a temp file, a stray)


class OverlayStream:
    """Overlay frames -> an MP4 as they come, into a path or a file object: H.264 (libx264 from the
    overlays' YUV planes, tagged with their colour matrix) or MJPEG (the overlay JPEGs muxed as they
    are). The first frame sets the size (even, for yuv420p) and the matrix; a later frame of another
    size or matrix is converted to them. ``faststart`` (the index at the front, for browsers) needs a
    seekable path."""

    def __init__(self, target, fps: float, codec: str = "h264", faststart: bool = False):
        if codec not in VIDEO_CODECS:
            raise ValueError(f"video codec {codec!r}: choose from {', '.join(VIDEO_CODECS)}")
        self.codec, self.rate, self.frames, self.stream = codec, _rate(fps), 0, None
        self.target, self.options = target, {"movflags": "+faststart"} if faststart else {}
        self.container, self.matrix = None, "bt601"

    def _open(self, height: int, width: int):
        import av

        self.container = av.open(self.target, "w", format="mp4", options=self.options)
        if self.codec == "h264":
            stream = _h264_stream(self.container, self.rate, width, height)
            stream.codec_context.colorspace = yuv.TAGS[self.matrix]
            stream.codec_context.color_range = 1  # video range, as the planes are
            return stream
        stream = self.container.add_stream("mjpeg", rate=self.rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        stream.time_base = 1 / self.rate
        return stream

    def add(self, overlay, jpeg: bytes | None = None) -> None:
        """One overlay frame (BGR, or ``yuv.Frame`` planes); with MJPEG, its JPEG bytes are what is muxed."""
        import av

        if self.stream is None:
            self.matrix = overlay.matrix if isinstance(overlay, yuv.Frame) else "bt601"
            self.stream = self._open(*overlay.shape[:2])
        s = self.stream
        if self.codec == "mjpeg":
            packet = av.Packet(jpeg)
            packet.stream, packet.pts, packet.dts, packet.time_base = s, self.frames, self.frames, 1 / self.rate
            packet.is_keyframe = True
            self.container.mux(packet)
        else:
            frame = self._frame(overlay)
            frame.pts = self.frames
            self.container.mux(s.encode(frame))
        self.frames += 1

    def _frame(self, overlay):
        """The frame as the stream takes it: a blended overlay's own PyAV frame when size and matrix
        match (the usual case: no conversion, no copy), else through BGR."""
        import av
        import cv2

        s = self.stream
        if isinstance(overlay, yuv.Frame):
            if (overlay.height, overlay.width, overlay.matrix) == (s.height, s.width, self.matrix):
                if overlay.decoded is not None:
                    return overlay.decoded
                return av.VideoFrame.from_ndarray(overlay.i420(), format="yuv420p")
            overlay = overlay.bgr()
        if overlay.shape[:2] != (s.height, s.width):  # a size change mid-video: scaled, as the JPEG path does
            overlay = cv2.resize(overlay, (s.width, s.height), interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(overlay[:s.height, :s.width])
        if self.matrix == "bt601":  # OpenCV's BGR -> I420 (BT.601, video range) is ~4x cheaper than swscale's
            return av.VideoFrame.from_ndarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        return frame.reformat(format="yuv420p", dst_colorspace=yuv.TAGS[self.matrix])

    def close(self) -> int:
        """Flush the encoder and finish the file (nothing is written without a frame); the frame count."""
        if self.container is None:
            return 0
        try:
            if self.codec == "h264":
                self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()
            self.container = None
        return self.frames


def encode_piece(frames_bgr: Sequence[np.ndarray]) -> bytes:
    """Consecutive BGR frames -> an H.264 MP4 in memory (the first frame an IDR frame) at the first
    frame's size (even); ``join_pieces`` refuses pieces of other sizes, so the JPEG path takes over."""
    buf = io.BytesIO()
    stream = OverlayStream(buf, PIECE_RATE)
    for bgr in frames_bgr:
        stream.add(bgr)
    stream.close()
    return buf.getvalue()


def cover(pieces: Iterable[Piece], indices: Sequence[int]) -> list[Piece] | None:
    """Pieces that hold exactly ``indices`` (the source's output frames, in order), or None.

    Pieces may overlap (a range redone after a crash, a retried batch); each step takes the longest
    piece that starts at the next frame needed and whose last frame is where ``count`` frames end.
    """
    starts: dict[int, list[Piece]] = {}
    for p in pieces:
        starts.setdefault(p.first, []).append(p)
    chosen, at = [], 0
    while at < len(indices):
        fits = [p for p in starts.get(indices[at], ()) if at + p.count <= len(indices)
                and indices[at + p.count - 1] == p.last]
        if not fits:
            return None
        best = max(fits, key=lambda p: p.count)
        chosen.append(best)
        at += best.count
    return chosen


def join_pieces(path: str, pieces: Iterable[bytes], fps: float) -> int:
    """H.264 pieces -> one MP4 at ``path`` (``+faststart``), packets copied and re-timed to ``fps``;
    ValueError when a piece was encoded with other parameters (the caller re-encodes)."""
    import av

    rate = _rate(fps)
    n, out_stream, extradata = 0, None, None
    with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as out:
        for data in pieces:
            with av.open(io.BytesIO(data)) as piece:
                stream = piece.streams.video[0]
                if out_stream is None:
                    out_stream = out.add_stream_from_template(stream)
                    out_stream.time_base = 1 / rate
                    extradata = stream.codec_context.extradata
                elif stream.codec_context.extradata != extradata:
                    raise ValueError("pieces with different H.264 parameters")
                for packet in piece.demux(stream):
                    if packet.size == 0:
                        continue
                    # ultrafast has no B-frames: decode order is display order, one tick per frame
                    packet.stream, packet.time_base = out_stream, 1 / rate
                    packet.pts = packet.dts = n
                    packet.duration = 1
                    out.mux(packet)
                    n += 1
    return n
