"""The BDD100K 10K semantic-segmentation layout: pairing images with labels, and validating them.

    ROOT/images/10k/{train,val,test}/<name>.jpg
    ROOT/labels/sem_seg/masks/{train,val}/<name>.png        uint8 train ids 0-18, 255 = ignore
    ROOT/labels/sem_seg/colormaps/{train,val}/<name>.png    the same labels in the official palette

A split is read from its masks; a split that ships only colormaps is converted to train ids here.
Every problem is reported with the file it concerns, so a user can fix the data and re-run.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from roadseg_dist import labels, storage
from roadseg_dist.images import imdecode

IMAGE_SUFFIXES = (".jpg", ".jpeg")


class DatasetError(ValueError):
    """The input dataset is not usable; ``problems`` lists one line per offending file (a single
    string: one problem that says it all, the message as it is)."""

    def __init__(self, problems: list[str] | str, what: str = "the dataset"):
        self.single = isinstance(problems, str)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.what = what
        super().__init__(str(self))

    def __str__(self) -> str:  # from the parts: Ray Data appends its retry advice to a task error's args
        if self.single:
            return self.problems[0]
        shown = "\n  ".join(self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        return f"{len(self.problems)} problem(s) in {self.what}:\n  {shown}{more}"

    def __reduce__(self):  # rebuilt from its parts when it comes back from a Ray task
        return type(self), (self.problems[0] if self.single else self.problems, self.what)


@dataclasses.dataclass(frozen=True)
class Sample:
    key: str            # the image's file stem: the WebDataset sample key
    image: str          # URL of the JPEG
    label: str          # URL of the mask (or colormap) PNG
    label_kind: str     # "mask" | "colormap"
    nbytes: int         # image + label file sizes, for planning shards by bytes


def image_dir(root: str, split: str) -> str:
    return storage.join(root, "images/10k", split)


def label_dir(root: str, split: str, kind: str = "mask") -> str:
    return storage.join(root, "labels/sem_seg", "masks" if kind == "mask" else "colormaps", split)


def _stem(url: str) -> str:
    name = url.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0]


def _listing(url: str, suffixes: tuple[str, ...]) -> dict[str, tuple[str, int]]:
    """stem -> (url, size) for the files directly in a folder/prefix (missing folder -> empty)."""
    if not storage.exists(url):
        return {}
    return {_stem(u): (u, n) for u, n in storage.list_sizes(url, suffixes).items()}


def find_samples(root: str, split: str) -> list[Sample]:
    """Pair every image of ``split`` with its label; raise DatasetError naming unpaired files."""
    root = storage.normalize(root)
    images = _listing(image_dir(root, split), IMAGE_SUFFIXES)
    masks = _listing(label_dir(root, split, "mask"), (".png",))
    kind = "mask"
    if not masks:
        masks = _listing(label_dir(root, split, "colormap"), (".png",))
        kind = "colormap"
    if not images and not masks:
        raise DatasetError([f"no images under {storage.redact(image_dir(root, split))} and no labels under "
                            f"{storage.redact(label_dir(root, split))}: is {storage.redact(root)} a BDD100K root "
                            f"(images/10k/{split}, labels/sem_seg/masks/{split})?"], f"split {split!r}")
    problems = [f"{storage.redact(url)}: image has no label (expected {storage.redact(label_dir(root, split, kind))}/"
                f"{key}.png)" for key, (url, _) in sorted(images.items()) if key not in masks]
    problems += [f"{storage.redact(url)}: label has no image (expected {storage.redact(image_dir(root, split))}/"
                 f"{key}.jpg)" for key, (url, _) in sorted(masks.items()) if key not in images]
    if problems:
        raise DatasetError(problems, f"split {split!r} of {storage.redact(root)}")
    return [Sample(key, images[key][0], masks[key][0], kind, images[key][1] + masks[key][1])
            for key in sorted(images)]


def decode_image(data: bytes, name: str) -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 (H, W, 3); ValueError naming ``name`` if unreadable."""
    arr = imdecode(data, cv2.IMREAD_COLOR, name)
    if arr is None:
        raise ValueError(f"{name}: not a readable image (corrupt or empty file)")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes, name: str) -> np.ndarray:
    """Train-id PNG bytes -> uint8 (H, W); ValueError naming ``name`` if it is not one."""
    arr = imdecode(data, cv2.IMREAD_UNCHANGED, name)
    if arr is None:
        raise ValueError(f"{name}: not a readable PNG (corrupt or empty file)")
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f"{name}: a label mask must be a single-channel 8-bit PNG of train ids, "
                         f"got shape {arr.shape} dtype {arr.dtype}")
    return arr


def colormap_to_mask_png(data: bytes, name: str) -> tuple[bytes, np.ndarray]:
    """Official-palette colormap PNG -> (train-id PNG bytes, mask)."""
    arr = imdecode(data, cv2.IMREAD_COLOR, name)
    if arr is None:
        raise ValueError(f"{name}: not a readable PNG (corrupt or empty file)")
    mask = labels.colormap_to_train_ids(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB))
    ok, buf = cv2.imencode(".png", mask)
    assert ok
    return buf.tobytes(), mask


def check_pair(image: np.ndarray, mask: np.ndarray, image_name: str, label_name: str) -> None:
    """Raise ValueError if the label does not fit the image or holds values outside 0-18 and 255."""
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"{label_name}: label is {mask.shape[0]}x{mask.shape[1]} but its image {image_name} is "
                         f"{image.shape[0]}x{image.shape[1]} (height x width); they must match")
    bad = labels.invalid_label_values(mask)
    if bad:
        raise ValueError(f"{label_name}: label values {', '.join(map(str, bad[:10]))} are outside the train ids "
                         f"0-{labels.NUM_CLASSES - 1} and {labels.IGNORE_INDEX} (ignore)")


def class_pixels(mask: np.ndarray) -> np.ndarray:
    """Pixels per class (19 int64), ignoring 255."""
    counts = np.bincount(mask.reshape(-1), minlength=256)
    return counts[: labels.NUM_CLASSES].astype(np.int64)
