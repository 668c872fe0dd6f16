"""The 19 BDD100K semantic-segmentation classes and their official colours.

BDD100K uses the Cityscapes train ids (0-18) and palette; 255 marks pixels that are not scored.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255
NUM_CLASSES = 19

CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
IGNORE_COLOR = (0, 0, 0)

# ImageNet statistics: the pretrained encoders expect them, and the U-Net trains fine with them.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

CLASS_ID = {name: i for i, name in enumerate(CLASSES)}


def palette_lut(palette=PALETTE, bgr: bool = False) -> np.ndarray:
    """(256, 3) uint8 lookup table, train id -> colour: RGB, or BGR for OpenCV; 255 -> ``IGNORE_COLOR``.

    The one palette table: ``colorize`` indexes it, inference renders colour PNGs and overlays with it.
    """
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[IGNORE_INDEX] = IGNORE_COLOR
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return np.ascontiguousarray(lut[:, ::-1]) if bgr else lut


_LUT = palette_lut()


def colorize(mask: np.ndarray, palette=None) -> np.ndarray:
    """Train-id mask (H, W) -> RGB image (H, W, 3) in the official palette."""
    lut = _LUT if palette is None else palette_lut(palette)
    return lut[mask]


def colormap_to_train_ids(rgb: np.ndarray) -> np.ndarray:
    """Official-palette RGB image (H, W, 3) -> train-id mask; unknown colours become 255.

    BDD100K ships colormaps next to the masks; a split that has only colormaps is converted here.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a colormap must be an RGB image, got shape {rgb.shape}")
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(PALETTE)}
    out = np.full(rgb.shape[:2], IGNORE_INDEX, dtype=np.uint8)
    for value, train_id in table.items():
        out[code == value] = train_id
    return out


def invalid_label_values(mask: np.ndarray) -> list[int]:
    """Values in a train-id mask that are neither 0-18 nor 255 (empty when the mask is valid)."""
    values = np.unique(mask)
    return [int(v) for v in values if v >= NUM_CLASSES and v != IGNORE_INDEX]
