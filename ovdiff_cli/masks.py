"""Paper §3 "Class prototypes" (App. C.5): the foreground/background masks of support images.

A proposer Γ gives class-agnostic binary masks on the feature grid, one of them for the
background; the proposal with the highest mean attribution is the foreground, the one with the
lowest the background. When Γ finds nothing, Otsu's threshold of the attribution map decides.

Proposers: `ncut` (normalised cuts on the extractor's own features, as CutLER's MaskCut; no extra
weights), `threshold` (no proposals: always the Otsu rule, the paper's "-CutLER" variant) and `sam`
(transformers' SAM automatic mask generation, for users who have its weights).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

PROPOSERS = ("ncut", "threshold", "sam")


# --------------------------------------------------------------------------- maps


def resize_map(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """hxw float map → shape, bilinear (antialiased when shrinking); float32."""
    import torch
    import torch.nn.functional as F

    a = np.asarray(a, dtype=np.float32)
    if a.shape == tuple(shape):
        return a
    t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    shrink = shape[0] < a.shape[0] or shape[1] < a.shape[1]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False, antialias=shrink)[0, 0].numpy()


def resize_mask(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """hxw bool mask → shape (nearest neighbour), bool."""
    import cv2

    m = np.asarray(m, dtype=bool)
    if m.shape == tuple(shape):
        return m
    return cv2.resize(m.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut of the value histogram that maximises between-class variance."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centres)
    w1 = 1 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def otsu_masks(attribution: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """attribution hxw >= 0 → (fg, bg) hxw bool: fg above Otsu's threshold, bg its complement.

    A constant map carries no layout: all of it is foreground, none background.
    """
    a = np.asarray(attribution, dtype=np.float32)
    if a.max() <= a.min():
        return np.ones(a.shape, bool), np.zeros(a.shape, bool)
    fg = a > otsu_threshold(a)
    return fg, ~fg


def select_fg_bg(proposals: list[np.ndarray], attribution: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's rule: fg = the proposal of highest mean attribution, bg = the one of lowest.

    proposals: non-empty list of hxw bool masks on the feature grid; attribution: any size, >= 0,
    resized to hxw. Empty proposals are ignored; among equally low ones the largest is the bg (more
    context). With a single usable proposal, bg is its complement. bg never overlaps fg.
    Returns (fg, bg) hxw bool.
    """
    masks = [np.asarray(m, dtype=bool) for m in proposals if np.asarray(m).any()]
    if not masks:
        raise ValueError("select_fg_bg needs at least one non-empty proposal (use fg_bg_masks for the fallback)")
    a = resize_map(attribution, masks[0].shape)
    means = np.array([a[m].mean() for m in masks])
    areas = np.array([m.sum() for m in masks])
    i_fg = int(np.argmax(means))
    if len(masks) == 1:
        return masks[i_fg], ~masks[i_fg]
    order = [int(i) for i in np.lexsort((-areas, means)) if i != i_fg]
    return masks[i_fg], masks[order[0]] & ~masks[i_fg]


def fg_bg_masks(
    proposals: list[np.ndarray], attribution: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, str]:
    """fg/bg on an hxw grid from the proposals, or Otsu on the attribution when there are none.

    Returns (fg, bg, how) with how = "proposals" or "otsu" (the paper's fallback, App. C.5).
    """
    if any(np.asarray(m).any() for m in proposals):
        fg, bg = select_fg_bg(proposals, attribution)
        return fg, bg, "proposals"
    fg, bg = otsu_masks(resize_map(attribution, shape))
    return fg, bg, "otsu"


# --------------------------------------------------------------------------- normalised cuts


def _second_eigvec(affinity: np.ndarray) -> tuple[float, np.ndarray]:
    """Generalised eigenvector of (D−W)v = λDv for the second-smallest λ (the Ncut relaxation).

    Solved as the second-largest eigenpair (μ, y) of D^-½ W D^-½ (v = D^-½ y, λ = 1 − μ): Lanczos on
    large graphs (a fixed start vector keeps it deterministic), dense on small ones. Returns (μ, v).
    """
    import scipy.linalg
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    d = affinity.sum(axis=1)
    s = 1 / np.sqrt(d)
    m = s[:, None] * affinity * s[None, :]
    n = len(d)
    if n > 128:
        try:
            vals, vecs = eigsh(m, k=2, which="LA", v0=np.random.default_rng(0).standard_normal(n))
            return float(vals[0]), s * vecs[:, 0]
        except ArpackNoConvergence:
            pass
    vals, vecs = scipy.linalg.eigh(m, subset_by_index=[n - 2, n - 2])
    return float(vals[0]), s * vecs[:, 0]


def ncut_objects(
    features: np.ndarray, tau: float = 0.2, eps: float = 1e-5, max_objects: int = 3, min_mu: float = 0.05
) -> list[np.ndarray]:
    """MaskCut-style object masks from a feature grid (CutLER, Wang et al. 2023).

    features: (D,h,w) float. Patches are nodes, cosine affinity above `tau` is 1, else `eps`. The
    second generalised eigenvector splits the graph at its mean; the side holding the eigenvector's
    largest magnitude is the object unless it holds 3 or 4 image corners; only the connected part
    around that seed is kept. Found objects leave the graph and the cut repeats, up to `max_objects`
    times. As in Shi & Malik's recursion, cutting stops when the graph has no cluster structure left:
    second eigenvalue μ of D^-½WD^-½ below `min_mu` (a homogeneous region has μ = 0, and splitting
    it would only cut noise). Returns hxw bool masks, disjoint, in the order found.
    """
    from scipy import ndimage

    d, h, w = features.shape
    x = features.reshape(d, h * w).T.astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    aff = x @ x.T
    aff = np.where(aff > tau, 1.0, eps)
    free = np.ones(h * w, dtype=bool)
    corners = np.array([0, w - 1, (h - 1) * w, h * w - 1])
    objects = []
    for _ in range(max_objects):
        idx = np.flatnonzero(free)
        if len(idx) < 3:
            break
        mu, v = _second_eigvec(aff[np.ix_(idx, idx)])
        if mu < min_mu:
            break
        part = np.zeros(h * w, dtype=bool)
        part[idx[v > v.mean()]] = True
        if part[corners].sum() >= 3 or not part[idx[np.argmax(np.abs(v))]]:
            v = -v  # orient the eigenvector so that the object is its high side
            part[:] = False
            part[idx[v > v.mean()]] = True
        labels, _ = ndimage.label(part.reshape(h, w))
        obj = labels == labels.flat[idx[int(np.argmax(v))]]
        if not obj.any() or obj.sum() == len(idx):
            break
        objects.append(obj)
        free &= ~obj.ravel()
    return objects


class NCutProposer:
    """Γ by normalised cuts on the extractor's features; no weights beyond the extractor's.

    The grid is average-pooled to at most `max_side` per side for speed (64×64 → 32×32 keeps a
    class's eigenproblem to about 0.2 s), and the masks are upsampled back. The complement of all
    objects is the background proposal (the paper's Γ returns one too).
    """

    name = "ncut"
    uses_features = True

    def __init__(self, tau: float = 0.2, eps: float = 1e-5, max_objects: int = 3, max_side: int = 32):
        self.tau, self.eps, self.max_objects, self.max_side = tau, eps, max_objects, max_side

    def propose(self, image: np.ndarray, features: torch.Tensor) -> list[np.ndarray]:
        """image HxWx3 uint8 (unused: the features carry the image); features (D,h,w) → hxw bool masks."""
        import torch.nn.functional as F

        _, h, w = features.shape
        f = features.detach().float()
        scale = self.max_side / max(h, w)
        if scale < 1:
            size = (max(1, math.floor(h * scale)), max(1, math.floor(w * scale)))
            f = F.adaptive_avg_pool2d(f[None], size)[0]
        objects = ncut_objects(f.cpu().numpy(), self.tau, self.eps, self.max_objects)
        return with_background([resize_mask(o, (h, w)) for o in objects])


class ThresholdProposer:
    """No proposals at all, so every image takes the Otsu fallback: the paper's "-CutLER" variant."""

    name = "threshold"
    uses_features = False

    def propose(self, image: np.ndarray, features: torch.Tensor) -> list[np.ndarray]:
        return []


class SamProposer:
    """Γ by SAM's automatic mask generation (transformers `mask-generation` pipeline).

    Masks come at image resolution and are reduced to the feature grid by area (a cell belongs to a
    mask when at least half of it does); the complement of their union is the background proposal.
    """

    name = "sam"
    uses_features = False

    def __init__(self, pipe, points_per_side: int = 32, points_per_batch: int = 64):
        """pipe: transformers' `mask-generation` pipeline (`models.sam.load_sam`)."""
        self.pipe, self.points_per_side, self.points_per_batch = pipe, points_per_side, points_per_batch

    def propose(self, image: np.ndarray, features: torch.Tensor) -> list[np.ndarray]:
        """image HxWx3 uint8 → SAM's masks reduced to the (h,w) grid of `features`, plus the background."""
        from PIL import Image

        out = self.pipe(Image.fromarray(image), points_per_crop=self.points_per_side, points_per_batch=self.points_per_batch)
        return with_background(masks_on_grid([np.asarray(m) for m in out["masks"]], tuple(features.shape[-2:])))


def masks_on_grid(masks: list[np.ndarray], shape: tuple[int, int]) -> list[np.ndarray]:
    """HxW masks → shape bool masks by area (a cell is in when at least half of it is); empty ones dropped."""
    import cv2

    cells = [
        cv2.resize(np.asarray(m, dtype=np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA) >= 0.5
        for m in masks
    ]
    return [c for c in cells if c.any()]


def with_background(objects: list[np.ndarray]) -> list[np.ndarray]:
    """Object masks plus the complement of their union as the background proposal (if not empty)."""
    if not objects:
        return []
    rest = ~np.logical_or.reduce(objects)
    return objects + ([rest] if rest.any() else [])


def proposer_uses_features(name: str) -> bool:
    """Whether the proposer called `name` reads the features (its masks then depend on them); no model loads."""
    classes = {"ncut": NCutProposer, "threshold": ThresholdProposer, "sam": SamProposer}
    if name not in classes:
        from .errors import OvdiffError

        raise OvdiffError(f"unknown mask proposer {name!r}; choose one of: {', '.join(PROPOSERS)}")
    return classes[name].uses_features


# --------------------------------------------------------------------------- pictures

FG_COLOUR = (230, 30, 30)
BG_COLOUR = (30, 80, 230)


def overlay_masks(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """image HxWx3 uint8, masks hxw uint8 (1 fg, 2 bg, 0 neither) → HxWx3 uint8: fg tinted red, bg blue (Fig. C.8)."""
    code = resize_mask(np.asarray(masks) == 1, image.shape[:2]).astype(np.uint8)
    code[resize_mask(np.asarray(masks) == 2, image.shape[:2]) & (code == 0)] = 2
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

    from .imageio import tile_sheet

    if not images:
        raise ValueError("mask sheet of no images")
    tiles = [Image.fromarray(overlay_masks(img, m)).resize((thumb, thumb), Image.Resampling.BILINEAR)
             for img, m in zip(images, masks, strict=True)]  # fmt: skip
    return tile_sheet(tiles, title, columns)
