"""Frames as the decoder gives them: I420 planes, rendered without a round trip through BGR.

H.264 sources decode to 4:2:0 YUV, overlay.mp4 is encoded from 4:2:0 YUV, and a JPEG stores 4:2:0
YCbCr. Converting each 720p frame's overlay to BGR and back cost the H.264 input's conversion and the
JPEG encoder's own; blending on the planes also touches half the bytes. So a unit keeps a ``Frame``
(views of the decoder's planes, the colour matrix the stream names, and the decoded frame) and:

    model input   the decoder's own BGR conversion, shrunk (``render.model_input``): exactly the
                  input, hence exactly the masks, of decoding to BGR
    overlay       Y blended with the classes' Y at full size, U and V with theirs at half size
    overlay.mp4   the blended planes as they are (tagged with the source's matrix)
    JPEG          the planes brought to JFIF's full-range BT.601 YCbCr (per-plane lookups for
                  BT.601 sources), then libjpeg-turbo from planes (simplejpeg)

Colours follow the textbook formulas, rounded (OpenCV's conversions agree; FFmpeg's default converter is
~1 level darker): video range, the matrix the stream names, BT.601 where it names none (as FFmpeg's
converter takes it). Sources it cannot take (other layouts, full range, odd sizes, other matrices)
decode to BGR as before (``planes_of``).
"""
from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any

import cv2
import numpy as np

from roadseg_dist import labels

# AVColorSpace values FFmpeg's converter reads as each matrix (2: unspecified, which it takes as BT.601)
MATRICES = {1: "bt709", 2: "bt601", 5: "bt601", 6: "bt601"}
TAGS = {"bt601": 6, "bt709": 1}  # what overlay.mp4 says it is (SMPTE 170M is BT.601's 525-line name)
_KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


@dataclasses.dataclass(frozen=True, eq=False)
class Frame:
    """One I420 frame, video range, even sides: the Y, U and V planes (U and V at half size), views of
    ``decoded``'s buffers (the PyAV frame decoded, or blended into); ``matrix`` bt601 or bt709."""
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    matrix: str = "bt601"
    decoded: Any = None

    @property
    def height(self) -> int:
        return self.y.shape[0]

    @property
    def width(self) -> int:
        return self.y.shape[1]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of the BGR frame it stands for (what chunking and the stats go by)."""
        return (self.height, self.width, 3)

    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.y, self.u, self.v

    def i420(self) -> np.ndarray:
        """The planes in one (H * 3/2, W) array, as PyAV lays out yuv420p."""
        return np.concatenate([p.reshape(-1) for p in self.planes()]).reshape(self.height * 3 // 2, self.width)

    def bgr(self) -> np.ndarray:
        """The BGR frame FFmpeg's converter gives for it: what decoding to BGR gives."""
        frame = self.decoded
        if frame is None:
            import av

            frame = av.VideoFrame.from_ndarray(self.i420(), format="yuv420p")
            frame.colorspace = TAGS[self.matrix]
        return to_bgr(frame)


_converters = threading.local()  # a unit's thread converts frame after frame of the same kind


def to_bgr(frame) -> np.ndarray:
    """A PyAV frame as BGR, exactly ``frame.to_ndarray(format="bgr24")``, through one FFmpeg converter
    kept per thread and kind of frame: ``to_ndarray`` sets up a converter of its own for every frame
    (0.17 CPU-ms of a 720p frame's 0.6)."""
    from av.video.reformatter import VideoReformatter

    kind = (frame.width, frame.height, frame.format.name, int(frame.colorspace), int(frame.color_range))
    cache = _converters.__dict__.setdefault("by_kind", {})
    if kind not in cache:
        cache.clear()  # another source: its frames come next
        cache[kind] = VideoReformatter()
    return cache[kind].reformat(frame, format="bgr24").to_ndarray()


def planes_of(frame) -> Frame | None:
    """A decoded PyAV frame as a ``Frame`` (views of its buffers, no copy), or None where FFmpeg's
    converter must make it BGR."""
    matrix = MATRICES.get(int(frame.colorspace))
    if (frame.format.name != "yuv420p" or int(frame.color_range) == 2 or matrix is None
            or frame.width % 2 or frame.height % 2):
        return None
    return Frame(*_views(frame), matrix=matrix, decoded=frame)


def _views(frame) -> list[np.ndarray]:
    """A yuv420p PyAV frame's planes as arrays over its buffers (rows may be padded: the views skip it)."""
    return [np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:p.height, :p.width] for p in frame.planes]


# --- colour arithmetic (pure) ------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def to_rgb(matrix: str) -> np.ndarray:
    """3x3: (Y - 16, U - 128, V - 128) of video range -> RGB 0-255."""
    kr, kb = _KR_KB[matrix]
    kg, a, c = 1 - kr - kb, 255 / 219, 255 / 224
    return np.array([[a, 0, 2 * (1 - kr) * c],
                     [a, -2 * kb * (1 - kb) / kg * c, -2 * kr * (1 - kr) / kg * c],
                     [a, 2 * (1 - kb) * c, 0]])


_JFIF = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


@functools.lru_cache(maxsize=None)
def to_jfif(matrix: str) -> np.ndarray:
    """3x3: (Y - 16, U - 128, V - 128) of video range -> JFIF's (Y, Cb - 128, Cr - 128), full-range BT.601.
    Its first column is (255/219, 0, 0): chroma never takes luma in; a BT.601 source's is diagonal."""
    m = _JFIF @ to_rgb(matrix)
    m[1:, 0] = 0.0  # 1e-17 from rounding
    return m


@functools.lru_cache(maxsize=None)
def palette(matrix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The classes' colours (``labels.palette_lut``) as Y, U, V lookup tables (256,) of video range."""
    rgb = labels.palette_lut(bgr=False).astype(np.float64)
    yuv = rgb @ np.linalg.inv(to_rgb(matrix)).T + np.array([16.0, 128.0, 128.0])
    yuv = np.clip(np.round(yuv), 0, 255).astype(np.uint8)
    return yuv[:, 0].copy(), yuv[:, 1].copy(), yuv[:, 2].copy()


@functools.lru_cache(maxsize=None)
def _range_luts(matrix: str) -> tuple[np.ndarray, np.ndarray]:
    """Y and chroma of video range -> full range (a BT.601 source's whole way to JFIF)."""
    x = np.arange(256, dtype=np.float64)
    m = to_jfif(matrix)
    y = np.clip(np.round((x - 16) * m[0, 0]), 0, 255).astype(np.uint8)
    c = np.clip(np.round((x - 128) * m[1, 1] + 128), 0, 255).astype(np.uint8)
    return y, c


# --- what a unit does with a frame -----------------------------------------------------------------

def blend(frame: Frame, mask: np.ndarray, alpha: float = 0.5) -> Frame:
    """The overlay: ``(1 - alpha) x frame + alpha x the mask's class colours``, plane by plane (the
    same arithmetic as blending BGR, the colours taken to YUV first). ``mask`` at the model's size or
    the frame's: the colours are looked up there and upsampled (nearest, as ``render.resize_mask``), Y's
    to the frame's size, U's and V's to half of it. The planes are written into a PyAV frame's own
    buffers (``decoded``), which the H.264 encoder takes as they are."""
    import av

    ly, lu, lv = palette(frame.matrix)
    target = av.VideoFrame(frame.width, frame.height, "yuv420p")
    target.colorspace = TAGS[frame.matrix]
    out = _views(target)
    for plane, lut, dst in zip(frame.planes(), (ly, lu, lv), out):
        colours = cv2.LUT(mask, lut)
        if colours.shape != plane.shape:
            colours = cv2.resize(colours, plane.shape[::-1], interpolation=cv2.INTER_NEAREST)
        cv2.addWeighted(plane, 1.0 - alpha, colours, alpha, 0.0, dst=dst)
    return Frame(*out, matrix=frame.matrix, decoded=target)


def jfif_planes(frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frame in JFIF's full-range BT.601 YCbCr, 4:2:0: lookups for a BT.601 source; a BT.709 one
    also takes chroma into luma (added at half size, then upsampled) and mixes the chroma planes."""
    y, u, v = frame.planes()
    ly, lc = _range_luts(frame.matrix)
    if frame.matrix == "bt601":
        return cv2.LUT(y, ly), cv2.LUT(u, lc), cv2.LUT(v, lc)
    m = to_jfif(frame.matrix)
    cb = cv2.addWeighted(u, m[1, 1], v, m[1, 2], 128.0 * (1 - m[1, 1] - m[1, 2]))
    cr = cv2.addWeighted(u, m[2, 1], v, m[2, 2], 128.0 * (1 - m[2, 1] - m[2, 2]))
    lift = cv2.addWeighted(u, m[0, 1], v, m[0, 2], 128.0 * (1 - m[0, 1] - m[0, 2]))  # + 128: uint8
    lift = cv2.resize(lift, (frame.width, frame.height), interpolation=cv2.INTER_NEAREST)
    return cv2.addWeighted(y, m[0, 0], lift, 1.0, -16.0 * m[0, 0] - 128.0), cb, cr


def encode_jpeg(frame: Frame, quality: int = 85) -> bytes:
    """A baseline 4:2:0 JPEG, as ``cv2.imencode`` writes from BGR at the same quality."""
    import simplejpeg

    return simplejpeg.encode_jpeg_yuv_planes(*jfif_planes(frame), quality=int(quality))
