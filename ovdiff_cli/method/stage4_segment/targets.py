"""Paper §3 "Segmentation via prototype matching": how a target image is resized before anything sees it.

As the authors do (sdov `predict.py`, `EvalDataset`), the image is resized once with Lanczos so its
short side is `short_side` (448), the long side in proportion and truncated to whole pixels as
torchvision's `resize(img, 448)` does; an image already that size is left alone. The windows, the
whole-image pass and the category filter's input (`filter.filter_input`) are all cut from this
working image.

Not the authors': a guard against extreme aspect ratios. The long side is capped at
`LONG_SIDE_RATIO` times the short side, so a 1×10000 px strip does not become a 448×4.5M px
working image. 32:1 is far from the benchmarks' shapes (VOC and Context photos are at most 500 px
long and COCO's 640, so one would need a short side under 20 px; Cityscapes is 2:1; ADE20K holds
ordinary scene photographs).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

LONG_SIDE_RATIO = 32  # the guard: long side at most 32 × short side (not the authors'; no benchmark image reaches it)


def working_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the short side at `short_side` and the long side `int(short_side·long/short)`,
    torchvision's rule; past LONG_SIDE_RATIO the long side is capped and the short side shrinks with it."""
    short, long = min(height, width), max(height, width)
    new_short, new_long = short_side, int(short_side * long / short)
    cap = short_side * LONG_SIDE_RATIO
    if new_long > cap:
        new_short, new_long = max(1, int(cap * new_short / new_long)), cap
    return (new_long, new_short) if height > width else (new_short, new_long)


def working_image(image: np.ndarray, short_side: int) -> np.ndarray:
    """HxWx3 uint8 → the working image, uint8 (Lanczos; the image itself when it already has that size)."""
    h, w = working_size(image.shape[0], image.shape[1], short_side)
    if (h, w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.LANCZOS))
