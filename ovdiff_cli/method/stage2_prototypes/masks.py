"""Paper §3 "Class prototypes" (App. C.5): the foreground/background masks of support images.

The rule of the authors' `sample_support_set.py`, on each class's N images at the support images'
own resolution: attribution maps are resized to the image and min–max normalised to [0,1] per image. A proposer Γ gives class-agnostic binary masks, one of them for the
background; the proposal with the highest mean attribution is the foreground, the one with the
lowest the background, which is then restricted to low attribution (A < BG_BELOW) and eroded once
(3×3 cross) so it holds no object edges. An image with fewer than two proposals falls back to the
proposer's thresholds: fg = A > high, bg = A < low (the band between is neither). The masks are
then reduced to the feature grid (bilinear, any overlap counts), as the authors' prototype scripts do.
The masks depend on the support images and the proposer only, never on the extractor spec: one set
serves every extractor part (the class build runs this once per class, `classbuild.mask_batches`).

Proposers: `ncut` (MaskCut, the unsupervised core of the paper's CutLER, as published: normalised
cuts on the `mask_features` part's keys, DINO ViT-B/8 by default, of the image resized (Lanczos) to
480² for 512 px support images: 60×60 patches, τ = 0.15, N = 3 cuts; no extra weights; fixed
fallback thresholds 0.2/0.5), `ncut-fast` (ovdiff's lighter variant: the support images' own
feature pass average-pooled to at most 32² and a stop when the graph has no cluster left),
`threshold` (no proposals: every image is thresholded, at a 3-class multi-Otsu of all the class's
maps — the paper's "-CutLER" variant) and `sam` (transformers' SAM automatic mask generation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...config import proposer_uses_features

if TYPE_CHECKING:
    import torch

    from ...types import MaskProposer, Sample

PROPOSERS = ("ncut", "ncut-fast", "threshold", "sam")
FG_ABOVE = 0.5  # the authors' fallback: fg where the normalised attribution is above this …
BG_BELOW = 0.2  # … bg where it is below this; also the bound on a proposal's bg
# MaskCut as CutLER's README runs it (`maskcut.py --vit-arch base --patch-size 8 --tau 0.15 --fixed_size 480 --N 3`)
MASKCUT_TAU, MASKCUT_CUTS = 0.15, 3
MASKCUT_SIDE, MASKCUT_AT = 480, 512  # its input side, for the paper's 512 px support images


# --------------------------------------------------------------------------- maps


def resize_mask(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """hxw bool mask → shape (nearest neighbour), bool."""
    import cv2

    m = np.asarray(m, dtype=bool)
    if m.shape == tuple(shape):
        return m
    return cv2.resize(m.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def mask_to_grid(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """HxW bool mask → shape bool: bilinear resize (no antialiasing), a cell is in where the result is > 0.

    The authors' reduction of support masks to a feature grid (`gen_proto_*.py`).
    """
    import torch
    import torch.nn.functional as F

    m = np.asarray(m, dtype=bool)
    if m.shape == tuple(shape):
        return m
    t = torch.from_numpy(m.astype(np.float32))[None, None]
    return (F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0] > 0).numpy()


def normalise(a: np.ndarray) -> np.ndarray:
    """Min–max normalisation of one map to [0,1], float32; a constant map becomes all zeros."""
    a = np.asarray(a, dtype=np.float32)
    lo = a.min()
    return (a - lo) / max(float(a.max() - lo), 1e-6)


def image_attribution(attribution: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An attribution map as the masks see it: bilinearly resized to `shape`, min–max normalised.

    The authors normalise before resizing and again after; resizing is linear, so that equals
    normalising once, after. float32 in [0,1].
    """
    import torch
    import torch.nn.functional as F

    a = torch.from_numpy(np.asarray(attribution, dtype=np.float32))[None, None]
    if tuple(a.shape[-2:]) != tuple(shape):
        a = F.interpolate(a, size=shape, mode="bilinear", align_corners=False)
    return normalise(a[0, 0].numpy())


def multi_otsu(values: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """3-class multi-Otsu thresholds (low, high) of `values`: the two cuts of the value histogram that
    maximise the between-class variance, each the centre of the last bin of the class below it
    (as scikit-image's `threshold_multiotsu(classes=3)`). ValueError with fewer than 3 distinct values.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if len(np.unique(v)) < 3:
        raise ValueError("multi-Otsu needs at least 3 distinct values")
    hist, edges = np.histogram(v, bins=bins, range=(v.min(), v.max()))
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w = np.concatenate([[0.0], np.cumsum(p)])  # w[i] = mass of bins [0, i)
    m = np.concatenate([[0.0], np.cumsum(p * centres)])
    i, j = np.triu_indices(bins - 1, k=1)  # classes [0..i], [i+1..j], [j+1..]
    w0, w1, w2 = w[i + 1], w[j + 1] - w[i + 1], 1 - w[j + 1]
    m0, m1, m2 = m[i + 1], m[j + 1] - m[i + 1], m[-1] - m[j + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.nan_to_num(m0**2 / w0) + np.nan_to_num(m1**2 / w1) + np.nan_to_num(m2**2 / w2)
    k = int(np.argmax(score))
    return float(centres[i[k]]), float(centres[j[k]])


def class_thresholds(attributions: list[np.ndarray]) -> tuple[float, float]:
    """(low, high) of the `threshold` proposer: multi-Otsu over all the class's normalised maps at
    their own resolution; the authors' (0.2, 0.5) when the maps have too few distinct values."""
    try:
        return multi_otsu(np.concatenate([normalise(a).ravel() for a in attributions]))
    except ValueError:
        return BG_BELOW, FG_ABOVE


def erode(mask: np.ndarray) -> np.ndarray:
    """One binary erosion by the 3×3 cross (scikit-image's default footprint); the border does not erode."""
    from scipy import ndimage

    return ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=1)


def select_fg_bg(proposals: list[np.ndarray], attribution: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's rule on at least two non-empty proposals: fg = the proposal of highest mean
    attribution, bg = the one of lowest.

    proposals: HxW bool masks (empty ones ignored); attribution HxW in [0,1]. Each pixel goes to
    the highest-ranked proposal covering it; fg is the top proposal, bg the pixels won by the
    lowest-ranked proposal that wins any (so bg never overlaps another proposal). Ties rank in
    list order. Returns (fg, bg) HxW bool.
    """
    masks = [np.asarray(m, dtype=bool) for m in proposals if np.asarray(m).any()]
    if len(masks) < 2:
        raise ValueError("select_fg_bg needs at least two non-empty proposals (fewer take the threshold fallback)")
    a = np.asarray(attribution, dtype=np.float32)
    means = np.array([a[m].mean() for m in masks])
    ranked = [masks[i] for i in np.argsort(-means, kind="stable")]
    owner = np.full(a.shape, -1)
    for r in range(len(ranked) - 1, -1, -1):  # higher ranks overwrite lower ones
        owner[ranked[r]] = r
    return owner == 0, owner == owner.max()


def fg_bg_masks(
    proposals: list[np.ndarray], attribution: np.ndarray, low: float = BG_BELOW, high: float = FG_ABOVE
) -> tuple[np.ndarray, np.ndarray, str]:
    """fg/bg of one image at its attribution's resolution HxW (normalised to [0,1]).

    With two or more non-empty proposals (any resolution; resized nearest): `select_fg_bg`, then bg
    restricted to A < BG_BELOW and eroded. Otherwise the fallback: fg = A > high, bg = A < low.
    Returns (fg, bg, how), how = "proposals" or "thresholds".
    """
    a = np.asarray(attribution, dtype=np.float32)
    masks = [resize_mask(m, a.shape) for m in proposals if np.asarray(m).any()]
    if len(masks) >= 2:
        fg, bg = select_fg_bg(masks, a)
        return fg, erode(bg & (a < BG_BELOW)), "proposals"
    return a > high, a < low, "thresholds"


@dataclass
class ClassMasks:
    """One class's support masks at the images' resolution: fg and bg (N,H,W) bool; how[n] is
    "proposals" or "thresholds", how image n was masked. `on_grid` reduces them to a feature grid,
    so every extractor part can take them at its own grid."""

    fg: np.ndarray
    bg: np.ndarray
    how: list[str]

    def counts(self) -> dict[str, int]:
        return {k: self.how.count(k) for k in ("proposals", "thresholds")}

    def on_grid(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(fg, bg) (N,*shape) bool, each mask reduced by `mask_to_grid`."""
        shape = tuple(shape)
        return tuple(np.stack([mask_to_grid(m, shape) for m in masks]) for masks in (self.fg, self.bg))


def class_masks(
    samples: list[Sample], features: torch.Tensor, proposer: MaskProposer, thresholds: tuple[float, float] | None = None
) -> ClassMasks:
    """The fg/bg masks of one class's support images, at the images' resolution.

    samples: the N support images (HxWx3 uint8, one size) with their attribution maps; features
    (N,D,h,w): what the proposer reads (the `mask_features` part's features for ncut; a (N,0,h,w)
    placeholder for proposers with `uses_features` False). The proposer's fallback thresholds are
    computed once from all N maps; pass them as `thresholds` (`proposer.thresholds` of the whole
    class) to mask a class one batch of its images at a time.
    """
    low, high = proposer.thresholds([s.attribution for s in samples]) if thresholds is None else thresholds
    fg, bg, how = [], [], []
    for s, f in zip(samples, features, strict=True):
        a = image_attribution(s.attribution, s.image.shape[:2])
        m_fg, m_bg, h = fg_bg_masks(proposer.propose(s.image, f), a, low, high)
        fg.append(m_fg)
        bg.append(m_bg)
        how.append(h)
    return ClassMasks(np.stack(fg), np.stack(bg), how)


# --------------------------------------------------------------------------- normalised cuts


def second_eigvec(affinity: np.ndarray) -> tuple[float, np.ndarray]:
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


def maskcut(
    features: np.ndarray, tau: float = MASKCUT_TAU, n_cuts: int = MASKCUT_CUTS, eps: float = 1e-5
) -> list[np.ndarray]:
    """MaskCut (CutLER, Wang et al. 2023, `maskcut.py`'s `maskcut_forward`): up to `n_cuts` object masks.

    features: (D,h,w) float, patches as nodes; cosine affinity above `tau` is 1, else `eps`. Each cut
    takes the second-smallest generalised eigenvector v of (D−W)v = λDv and splits at its mean. The
    foreground is the side holding v's largest magnitude (the seed), unless that side holds 3 or 4 of
    the grid's corners (object-centric bias): then the other side, its seed the other extreme of v.
    MaskCut leaves v's sign to LAPACK; we fix it so the seed is positive, the sign under which its
    corner rule can act. Only the 4-connected component around the seed is kept. A later cut whose
    mask overlaps the previous one by IoU > 0.5 or covers at most 1% of the grid is dropped; the
    patches of kept masks get zero features (their affinities all become `eps`: they stay in the
    graph) before the next cut; each mask loses what earlier masks cover. Returns the non-empty hxw
    bool masks, disjoint, in the order found.
    """
    from scipy import ndimage

    d, h, w = features.shape
    x = features.reshape(d, h * w).T.astype(np.float32)  # MaskCut's affinity is float32 too (torch)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    cosine = x @ x.T  # once: a painted patch's zero features make its row and column 0
    blank = np.float32(1.0 if tau < 0 else eps)  # the affinity of a zero feature to anything
    corners = np.array([0, w - 1, (h - 1) * w, h * w - 1])
    painted = np.zeros(h * w, dtype=bool)
    taken = np.zeros((h, w), dtype=bool)
    previous = None
    found = []
    for i in range(n_cuts):
        aff = np.where(cosine > tau, np.float32(1.0), np.float32(eps))
        aff[painted], aff[:, painted] = blank, blank
        _, v = second_eigvec(aff)
        if v[np.argmax(np.abs(v))] < 0:
            v = -v
        side = v > v.mean()
        if side[corners].sum() >= 3:
            side, v = ~side, -v
        labels, _ = ndimage.label(side.reshape(h, w))
        mask = labels == labels.flat[int(np.argmax(v))]
        if i > 0 and (_mask_iou(previous, mask) > 0.5 or mask.mean() <= 0.01):
            mask = np.zeros_like(mask)
        previous = mask
        painted |= mask.ravel()
        found.append(mask & ~taken)
        taken |= mask
    return [m for m in found if m.any()]


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def lanczos(image: np.ndarray, side: int) -> np.ndarray:
    """HxWx3 uint8 → side×side uint8, PIL's Lanczos (MaskCut's resize); unchanged when already that size."""
    from PIL import Image

    if image.shape[:2] == (side, side):
        return image
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.LANCZOS))


class MaskCutProposer:
    """`ncut`: Γ by `maskcut` on the `mask_features` part's keys (DINO ViT-B/8 by default, whatever
    the extractor spec) of each support image resized (Lanczos) to MaskCut's input, 480² at the
    paper's 512 px feature size (a 60×60 grid); no weights beyond the extractor's. The complement of
    all objects is the background proposal (the paper's Γ returns one too). Images without
    proposals take the authors' fixed thresholds.
    """

    name = "ncut"
    uses_features = proposer_uses_features(name)
    resamples = True  # its own pass: images resized to `input_side` with Lanczos

    def __init__(self, tau: float = MASKCUT_TAU, n_cuts: int = MASKCUT_CUTS):
        self.tau, self.n_cuts = tau, n_cuts

    def input_side(self, feature_size: int, stride: int) -> int:
        """MaskCut's 480 px at 512 px, scaled to the preset's feature size, a multiple of the stride."""
        return max(1, round(feature_size * MASKCUT_SIDE / MASKCUT_AT / stride)) * stride

    def thresholds(self, attributions: list[np.ndarray]) -> tuple[float, float]:
        return BG_BELOW, FG_ABOVE

    def propose(self, image: np.ndarray, features: torch.Tensor) -> list[np.ndarray]:
        """image HxWx3 uint8 (unused: the features carry it); features (D,h,w) → hxw bool masks."""
        return with_background(maskcut(features.detach().float().cpu().numpy(), self.tau, self.n_cuts))


def ncut_objects(
    features: np.ndarray, tau: float = 0.2, eps: float = 1e-5, max_objects: int = 3, min_mu: float = 0.05
) -> list[np.ndarray]:
    """`ncut-fast`'s object masks: MaskCut-style (CutLER, Wang et al. 2023), lighter than `maskcut`.

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
        mu, v = second_eigvec(aff[np.ix_(idx, idx)])
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


class FastNCutProposer:
    """`ncut-fast`: Γ by `ncut_objects` on the support images' own feature pass; no extra weights.

    It reads the `mask_features` part's features, DINO keys by default, whatever the extractor spec,
    from the pass that builds that part's prototypes (no second forward pass). The grid is
    average-pooled to at most `max_side` per side for speed (64×64 → 32×32). The complement of all
    objects is the background proposal. Images without proposals take the authors' fixed thresholds.
    """

    name = "ncut-fast"
    uses_features = proposer_uses_features(name)
    resamples = False  # reads the features at the support images' feature size

    def input_side(self, feature_size: int, stride: int) -> int:
        return feature_size

    def __init__(self, tau: float = 0.2, eps: float = 1e-5, max_objects: int = 3, max_side: int = 32):
        self.tau, self.eps, self.max_objects, self.max_side = tau, eps, max_objects, max_side

    def thresholds(self, attributions: list[np.ndarray]) -> tuple[float, float]:
        return BG_BELOW, FG_ABOVE

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
    """No proposals: every image is thresholded at the 3-class multi-Otsu of all the class's maps,
    the middle band left out (the authors' variant without CutLER, the paper's "-CutLER")."""

    name = "threshold"
    uses_features = proposer_uses_features(name)

    def thresholds(self, attributions: list[np.ndarray]) -> tuple[float, float]:
        return class_thresholds(attributions)

    def propose(self, image: np.ndarray, features: torch.Tensor) -> list[np.ndarray]:
        return []


class SamProposer:
    """Γ by SAM's automatic mask generation (transformers `mask-generation` pipeline).

    Masks come at image resolution; the complement of their union is the background proposal.
    Images without proposals take the authors' fixed thresholds.
    """

    name = "sam"
    uses_features = proposer_uses_features(name)

    def __init__(self, pipe, points_per_side: int = 32, points_per_batch: int = 64):
        """pipe: transformers' `mask-generation` pipeline (`models.sam.load_sam`)."""
        self.pipe, self.points_per_side, self.points_per_batch = pipe, points_per_side, points_per_batch

    def thresholds(self, attributions: list[np.ndarray]) -> tuple[float, float]:
        return BG_BELOW, FG_ABOVE

    def propose(self, image: np.ndarray, features: torch.Tensor) -> list[np.ndarray]:
        """image HxWx3 uint8 → SAM's HxW masks (empty ones dropped), plus the background."""
        from PIL import Image

        out = self.pipe(
            Image.fromarray(image), points_per_crop=self.points_per_side, points_per_batch=self.points_per_batch
        )
        return with_background([m for m in (np.asarray(m, dtype=bool) for m in out["masks"]) if m.any()])


def with_background(objects: list[np.ndarray]) -> list[np.ndarray]:
    """Object masks plus the complement of their union as the background proposal (if not empty)."""
    if not objects:
        return []
    rest = ~np.logical_or.reduce(objects)
    return objects + ([rest] if rest.any() else [])
