"""Beyond the paper: refinement of a target's label scores before the argmax (`segment --refine`).

Off by default (the paper's path). Both refiners map the crop-averaged score maps (L,h,w) at the
working size to new ones, so the upsampling, the background label and --explain (the best
prototype of whichever label wins a pixel) work on them unchanged.

- `pamr`: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as SCLIP and NACLIP use it.
  With I the image and σ the local standard deviation of its intensities, the affinity of pixel i
  to a neighbour j is κ_ij = −|I_i − I_j| / (λ σ_i), averaged over colour channels and turned into
  weights α_ij = softmax_j κ_ij over all neighbours (the 8 of a 3×3 neighbourhood at each dilation);
  the scores are then propagated m_i ← Σ_j α_ij m_j a few times, so they follow colour edges.
- `sam2`: region voting (as CorrCLIP corrects its maps): every region of SAM 2's automatic mask
  generator takes the mean score of its pixels, so the whole region gets the label with the highest
  mean score; smaller regions are voted after larger ones and win where they overlap; pixels outside
  every region keep their own scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

PAMR_DILATIONS = (1, 2, 4, 8, 12, 24)  # SCLIP/NACLIP's
PAMR_ITERS = 10
PAMR_LAMBDA = 0.1  # λ: the affinity's temperature, relative to the local standard deviation


# --------------------------------------------------------------------------- PAMR


def _offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def pamr_weights(
    image: torch.Tensor, dilations: Sequence[int] = PAMR_DILATIONS, lam: float = PAMR_LAMBDA
) -> torch.Tensor:
    """image (C,h,w) float → α (N,h,w): each pixel's softmax weights over its N = 8·len(dilations) neighbours.

    σ_i is the per-channel standard deviation over the 3×3 neighbourhood (centre included) at the
    neighbour's own dilation.
    """
    img = image.float()
    h, w = img.shape[-2:]
    kappa = []
    for d in dilations:
        padded = F.pad(img[None], (d, d, d, d), mode="replicate")[0]
        ring = torch.stack(
            [
                padded[:, d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w]
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            ]
        )  # (9,C,h,w), the centre at 4
        sigma = ring.std(0, correction=0)  # (C,h,w)
        k = (-(ring - img).abs() / (lam * sigma + 1e-8)).mean(1)  # (9,h,w)
        kappa.append(torch.cat([k[:4], k[5:]]))
    return torch.cat(kappa).softmax(0)


def pamr(
    image: torch.Tensor, scores: torch.Tensor, iters: int = PAMR_ITERS, dilations: Sequence[int] = PAMR_DILATIONS
) -> torch.Tensor:
    """scores (L,h,w) refined on image (C,h,w): `iters` rounds of m_i ← Σ_j α_ij m_j (`pamr_weights`).

    Each round is a convex combination, so scores stay within their range; labels with the same
    score everywhere stay so.
    """
    if image.shape[-2:] != scores.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and scores {tuple(scores.shape)} differ in size")
    alpha = pamr_weights(image, dilations)
    offsets, pad = _offsets(dilations), max(dilations)
    h, w = scores.shape[-2:]
    m = scores.float()
    for _ in range(iters):
        padded = F.pad(m[None], (pad, pad, pad, pad), mode="replicate")[0]  # once per round; neighbours are views
        out = torch.zeros_like(m)
        for a, (dy, dx) in zip(alpha, offsets, strict=True):
            out.addcmul_(a, padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w])
        m = out
    return m.to(scores.dtype)


# --------------------------------------------------------------------------- region voting


def regions_on(masks: Sequence[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Region masks (H,W) bool at the image's size → (h,w) bool at the scores' size (nearest), empty ones dropped."""
    import cv2

    out = []
    for m in masks:
        m = np.asarray(m, bool)
        r = (
            m
            if m.shape == size
            else cv2.resize(m.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0
        )
        if r.any():
            out.append(r)
    return out


def vote_regions(scores: torch.Tensor, regions: Sequence[np.ndarray]) -> torch.Tensor:
    """scores (L,h,w) with every region's pixels set to the region's mean score (of the unrefined map).

    Regions are (h,w) bool; larger ones are voted first, so a smaller region inside a larger one
    keeps its own vote. Pixels in no region are unchanged.
    """
    out = scores.clone()
    for r in sorted(regions, key=lambda r: -int(r.sum())):
        mask = torch.from_numpy(np.array(r, dtype=bool, order="C")).to(scores.device)  # a copy: r may be read-only
        if mask.shape != scores.shape[-2:]:
            raise ValueError(f"region {tuple(mask.shape)} and scores {tuple(scores.shape)} differ in size")
        if mask.any():
            out[:, mask] = scores[:, mask].mean(1, keepdim=True)
    return out


# --------------------------------------------------------------------------- refiners (what a Segmenter runs)


def image_at(image: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """HxWx3 uint8 → (3,h,w) float32 in [0,1] at `size` (bilinear), on `device`."""
    from PIL import Image

    h, w = size
    if image.shape[:2] != (h, w):
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    # a copy: a decoded picture is often a read-only array, which torch.from_numpy warns about
    return torch.from_numpy(np.array(image, dtype=np.uint8, order="C")).to(device).permute(2, 0, 1).float() / 255


class PamrRefiner:
    """`--refine pamr`: PAMR on the image resized to the scores' (working) size."""

    name = "pamr"

    def __call__(self, image: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        return pamr(image_at(image, tuple(scores.shape[-2:]), scores.device), scores)


class RegionRefiner:
    """`--refine sam2`: region voting over the regions `propose(image)` returns (bool masks at the image's size)."""

    name = "sam2"

    def __init__(self, propose: Callable[[np.ndarray], list[np.ndarray]]):
        self.propose = propose

    def __call__(self, image: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        return vote_regions(scores, regions_on(self.propose(image), tuple(scores.shape[-2:])))


class AutomaticRegions:
    """SAM 2's automatic mask generator (transformers' `mask-generation` pipeline, `models.sam2.load_sam2`)
    as a region source: every non-empty mask of a grid of `points_per_side`² point prompts that passes
    the generator's quality filters (predicted IoU, stability: SAM's own defaults)."""

    def __init__(
        self,
        pipe,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
    ):
        self.pipe, self.points_per_side, self.points_per_batch = pipe, points_per_side, points_per_batch
        self.filters = {"pred_iou_thresh": pred_iou_thresh, "stability_score_thresh": stability_score_thresh}

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        from PIL import Image

        out = self.pipe(
            Image.fromarray(image),
            points_per_crop=self.points_per_side,
            points_per_batch=self.points_per_batch,
            **self.filters,
        )
        return [m for m in (np.asarray(m, dtype=bool) for m in out["masks"]) if m.any()]
