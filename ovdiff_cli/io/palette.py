"""The PASCAL VOC colour palette, shared by segment outputs, eval reports and palette-PNG readers.

One palette everywhere means a mask written by `ovdiff segment` opens with the colours VOC users
know, and an RGB mask can be mapped back to labels exactly (the 256 colours are distinct).
"""

from __future__ import annotations

import numpy as np

from ..errors import OvdiffError


def voc_palette(n: int = 256) -> np.ndarray:
    """(n,3) uint8 RGB: VOC's bit-interleaved colours (0 black, 1 (128,0,0), …, 255 (224,224,192))."""
    if not 0 < n <= 256:
        raise ValueError(f"palette size must be in 1..256, got {n}")
    idx = np.arange(n)
    pal = np.zeros((n, 3), dtype=np.int64)
    for j in range(3):  # bits 3j, 3j+1, 3j+2 of the index go to bit 7-j of R, G, B
        for ch in range(3):
            pal[:, ch] |= ((idx >> (3 * j + ch)) & 1) << (7 - j)
    return pal.astype(np.uint8)


def colorize(labels: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """(H,W) integer labels in 0..255 → (H,W,3) uint8 RGB through `palette` (VOC's by default)."""
    pal = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    return pal[np.asarray(labels).astype(np.int64) % len(pal)]


def rgb_to_labels(rgb: np.ndarray, palette: np.ndarray | None = None, source: str = "mask") -> np.ndarray:
    """(H,W,3) uint8 colours → (H,W) uint8 palette indices; a colour not in the palette is an error."""
    pal = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    code = lambda a: (a[..., 0].astype(np.int64) << 16) | (a[..., 1].astype(np.int64) << 8) | a[..., 2]  # noqa: E731
    keys = code(pal)
    order = np.argsort(keys)
    flat = code(np.asarray(rgb)[..., :3])
    pos = np.clip(np.searchsorted(keys[order], flat), 0, len(keys) - 1)
    found = keys[order][pos] == flat
    if not found.all():
        y, x = np.argwhere(~found)[0]
        raise OvdiffError(
            f"{source}: colour {tuple(int(c) for c in rgb[y, x, :3])} at pixel ({x},{y}) is not in the VOC palette: "
            "write masks as index or palette PNGs, or RGB in VOC colours"
        )
    return order[pos].astype(np.uint8)


def name_colour(name: str) -> tuple[int, int, int]:
    """The colour of a class name wherever it stands in a class list (the web demo's overlays and masks):
    hue, saturation and brightness from a hash of the name (case and outer spaces ignored), never near
    black, which is the background's."""
    import colorsys
    import hashlib

    digest = hashlib.blake2b(name.strip().casefold().encode("utf-8"), digest_size=8).digest()
    hue = int.from_bytes(digest[:4], "big") / 2**32
    saturation, value = 0.55 + 0.4 * digest[4] / 255, 0.7 + 0.28 * digest[5] / 255
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(255 * r), round(255 * g), round(255 * b)
