"""``overlay.mp4`` from the overlay JPEGs, through PyAV (FFmpeg): H.264 that browsers play, or MJPEG.

``h264`` (the default): each JPEG is decoded by FFmpeg's MJPEG decoder straight to YUV (no BGR
round trip), converted to ``yuv420p`` and encoded by libx264 (``ultrafast``, CRF 23, one thread: the
parallelism is one assembly task per video), with the index at the front (``+faststart``) so a
browser starts playing before the whole file arrives. ``mjpeg``: the JPEG bytes are muxed as they
are, no decode and no encode (players such as ffmpeg, VLC and OpenCV play it; browsers do not).
Frames arrive in index order; the stream runs at ``fps`` (source fps / stride).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Iterable

VIDEO_CODECS = ("h264", "mjpeg")
H264_OPTIONS = {"preset": "ultrafast", "crf": "23", "threads": "1"}  # ~3x cheaper than veryfast at 720p


def _rate(fps: float) -> Fraction:
    return Fraction(fps if fps and fps > 0 else 10.0).limit_denominator(1001)


def _h264(container, jpegs: Iterable[bytes], rate: Fraction, width: int, height: int) -> int:
    import av

    stream = container.add_stream("libx264", rate=rate, options=dict(H264_OPTIONS))
    stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
    jpeg = av.CodecContext.create("mjpeg", "r")
    jpeg.thread_count = 1
    n = 0
    for data in jpegs:
        for frame in jpeg.decode(av.Packet(data)):
            yuv = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
            yuv.pts, yuv.time_base = n, 1 / rate
            container.mux(stream.encode(yuv))
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
