"""A segmentation result in the shapes other tools read: supervision's Detections, FiftyOne's
Segmentation with its mask targets, and COCO results records (compressed RLE, as `segment --format
coco-rle` writes them). Each library is optional: imported on use, a clear error when it is absent.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from ..errors import MissingLibrary
from .masks import coco_records


def require(module: str, package: str, call: str) -> Any:
    """`module` imported, or a MissingLibrary error naming the pip package that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingLibrary(package, call) from e


def things(labels: np.ndarray, stats: dict[int, tuple[int, float]]) -> list[tuple[int, np.ndarray, float | None]]:
    """(label, mask, mean winning score) of each named class present (background left out), in label order."""
    out = []
    for k in (int(v) for v in np.unique(labels) if v > 0):
        stat = stats.get(k)
        out.append((k, labels == k, None if stat is None else float(stat[1])))
    return out


def to_supervision(labels: np.ndarray, names: dict[int, str], stats: dict[int, tuple[int, float]]):
    """An `sv.Detections`, one detection per class present: its mask, box, class_id (the label value),
    confidence (the mean winning score) and data["class_name"]."""
    sv = require("supervision", "supervision", "to_supervision()")
    found = things(labels, stats)
    h, w = labels.shape
    masks = np.stack([m for _, m, _ in found]) if found else np.zeros((0, h, w), bool)
    scores = [np.nan if s is None else s for *_, s in found]
    return sv.Detections(
        xyxy=sv.mask_to_xyxy(masks).astype(np.float32) if found else np.zeros((0, 4), np.float32),
        mask=masks,
        class_id=np.array([k for k, *_ in found], dtype=int),
        confidence=np.array(scores, dtype=np.float32),
        data={"class_name": np.array([names[k] for k, *_ in found], dtype=str)},
    )


def to_fiftyone(labels: np.ndarray, names: dict[int, str]):
    """(`fo.Segmentation`, mask targets): the label map as FiftyOne stores it (uint8, uint16 beyond 255
    labels) and label value → class name, for `dataset.mask_targets[field] = targets`."""
    fo = require("fiftyone", "fiftyone", "to_fiftyone()")
    dtype = np.uint8 if max(names) <= 255 else np.uint16
    return fo.Segmentation(mask=labels.astype(dtype)), dict(names)


def to_coco(labels: np.ndarray, stats: dict[int, tuple[int, float]], image_id: int = 1) -> list[dict]:
    """COCO results records, one per class present, as `segment --format coco-rle` writes them."""
    return coco_records(labels, stats, image_id)
