"""Contact sheets of support sets, pictures for a person to check them: each support image beside its
attribution heat map (`ovdiff sample --show`), or with its fg (red) and bg (blue) masks (`protos show`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..method.stage2_prototypes.masks import resize_mask
from .images import tile_sheet

if TYPE_CHECKING:
    from pathlib import Path

    from PIL import Image

    from ..types import Sample

FG_COLOUR = (230, 30, 30)
BG_COLOUR = (30, 80, 230)


def heat_overlay(image: np.ndarray, attribution: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """image HxWx3 uint8, attribution hxw >= 0 → HxWx3 uint8: the map, min-max scaled, as a jet heat map over the image."""
    import cv2

    a = attribution.astype(np.float32) - attribution.min()
    a = a / a.max() if a.max() > 0 else a
    a = cv2.resize(a, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = cv2.cvtColor(cv2.applyColorMap((a * 255).round().astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return (alpha * heat + (1 - alpha) * image).round().astype(np.uint8)


def contact_sheet(samples: list[Sample], title: str, thumb: int = 160, columns: int = 4) -> Image.Image:
    """A grid of (image | attribution heat map) pairs under a title line, `columns` pairs per row."""
    from PIL import Image

    if not samples:
        raise ValueError("contact sheet of no samples")
    pad = 4
    pairs = []
    for s in samples:
        pair = Image.new("RGB", (2 * thumb + pad, thumb), "white")
        for j, arr in enumerate((s.image, heat_overlay(s.image, s.attribution))):
            pair.paste(Image.fromarray(arr).resize((thumb, thumb), Image.Resampling.BILINEAR), (j * (thumb + pad), 0))
        pairs.append(pair)
    return tile_sheet(pairs, title, columns, pad=pad)


def overlay_masks(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """image HxWx3 uint8, masks hxw uint8 (`prototypes.encode_masks`: 1 fg, 2 bg, 3 both, 0 neither) →
    HxWx3 uint8: fg tinted red, bg blue (Fig. C.8; a cell in both shows as fg)."""
    code = resize_mask((np.asarray(masks) & 1) > 0, image.shape[:2]).astype(np.uint8)
    code[resize_mask((np.asarray(masks) & 2) > 0, image.shape[:2]) & (code == 0)] = 2
    out = image.astype(np.float32)
    for value, colour in ((1, FG_COLOUR), (2, BG_COLOUR)):
        sel = code == value
        out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(colour, np.float32)
    return out.round().astype(np.uint8)


def mask_sheet(images: list[np.ndarray], masks: np.ndarray, title: str, thumb: int = 160, columns: int = 6):
    """A PIL image: a title line over a grid of support images with their fg (red) and bg (blue) masks.

    images: N HxWx3 uint8; masks (N,h,w) uint8 as stored in the cache.
    """
    from PIL import Image

    if not images:
        raise ValueError("mask sheet of no images")
    tiles = [
        Image.fromarray(overlay_masks(img, m)).resize((thumb, thumb), Image.Resampling.BILINEAR)
        for img, m in zip(images, masks, strict=True)
    ]
    return tile_sheet(tiles, title, columns)


def save_sheet(picture: Image.Image, out: Path) -> None:
    """Write a sheet to `out` (PNG/JPEG by its suffix), its folder created; one error line if it cannot."""
    from ..errors import OvdiffError

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        picture.save(out)
    except (OSError, ValueError) as e:
        raise OvdiffError(f"cannot write {out}: {getattr(e, 'strerror', None) or e}") from e
