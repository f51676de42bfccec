"""Paper §3 "Class prototypes": prototype aggregation (§3 "Prototype aggregation", Eq. 1; Tables A.5, A.7).

Pure functions over torch tensors (any device). For each of fg and bg:
- instance prototypes: the mean feature inside each support image's mask (Eq. 1);
- the class prototype: the instances' mean weighted by mask size;
- part prototypes: K-means centroids of the masked features of all images (K=32 by default).
Stuff classes keep fg prototypes only (paper §3 "Stuff filtering").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def instance_prototypes(features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 1, P_n = M̂ₙᵀΦ(Sₙ) / M̂ₙᵀM̂ₙ, for every image whose mask is not empty.

    features (N,D,h,w) float; masks (N,h,w) bool on the same grid →
    prototypes (N',D) float32, sizes (N',) float32 (mask areas in cells), kept (N',) int64 (image index).
    """
    import torch

    masks = torch.as_tensor(masks, device=features.device).bool()
    sizes = masks.flatten(1).sum(1)
    kept = torch.nonzero(sizes > 0).flatten()
    protos = [
        (features[i].float().flatten(1) @ masks[i].flatten().float()) / sizes[i].float() for i in kept.tolist()
    ]
    d = features.shape[1]
    stack = torch.stack(protos) if protos else features.new_zeros((0, d), dtype=torch.float32)
    return stack, sizes[kept].float(), kept


def class_prototype(instances: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """P̄ = Σₙ mₙPₙ / Σₙ mₙ with mₙ the mask sizes: instances (N,D), sizes (N,) → (1,D) float32."""
    w = sizes.float().to(instances.device)
    return ((w[:, None] * instances.float()).sum(0) / w.sum())[None]


def _sq_dists(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(P,D), (K,D) → (P,K) squared Euclidean distances (clamped at 0)."""
    return ((points * points).sum(1, keepdim=True) - 2 * points @ centroids.T + (centroids * centroids).sum(1)).clamp_min(0)


def kmeans(points: torch.Tensor, k: int, seed: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded K-means (k-means++ initialisation, then Lloyd iterations until labels settle).

    points (P,D) float → centroids (min(k, distinct points), D) float32, labels (P,) int64.
    Identical points are clustered once with their multiplicity as weight, so fewer distinct
    points than k give one centroid per distinct point. Same input and seed → same result.
    """
    import torch

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x = torch.as_tensor(points).float()
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"points must be a non-empty (P,D) array, got shape {tuple(x.shape)}")
    uniq, inverse, counts = torch.unique(x, dim=0, return_inverse=True, return_counts=True)
    w = counts.float()
    k = min(k, len(uniq))
    gen = torch.Generator(device="cpu").manual_seed(seed)

    # k-means++: each new centre drawn with probability ∝ weight × squared distance to the nearest centre.
    first = int(torch.multinomial(w.cpu(), 1, generator=gen))
    chosen = [first]
    d2 = _sq_dists(uniq, uniq[first : first + 1])[:, 0]
    for _ in range(1, k):
        p = (w * d2).cpu().double()
        p[chosen] = 0
        nxt = int(torch.multinomial(p, 1, generator=gen)) if p.sum() > 0 else next(
            i for i in range(len(uniq)) if i not in chosen
        )
        chosen.append(nxt)
        d2 = torch.minimum(d2, _sq_dists(uniq, uniq[nxt : nxt + 1])[:, 0])
    centroids = uniq[chosen].clone()

    labels = _sq_dists(uniq, centroids).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(centroids).index_add_(0, labels, uniq * w[:, None])
        mass = torch.zeros(k, device=uniq.device).index_add_(0, labels, w)
        filled = mass > 0  # an emptied cluster keeps its centre
        centroids[filled] = sums[filled] / mass[filled, None]
        new = _sq_dists(uniq, centroids).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return centroids, labels[inverse]


def _masked_points(features: torch.Tensor, masks: torch.Tensor, max_points: int, seed: int) -> torch.Tensor:
    """Features at masked locations, (P,D) float32: at most `max_points`, a seeded uniform subsample."""
    import torch

    where = torch.nonzero(masks)  # (P, 3): image, row, column
    if len(where) > max_points:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        pick = torch.randperm(len(where), generator=gen)[:max_points].sort().values
        where = where[pick.to(where.device)]
    n, r, c = where.unbind(1)
    return features[n, :, r, c].float()


def assign_parts(features: torch.Tensor, masks: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest part centroid of every masked location: (N,h,w) int16, -1 outside the mask."""
    import torch

    labels = torch.full(masks.shape, -1, dtype=torch.int16, device=masks.device)
    for i in range(len(features)):
        sel = masks[i]
        if sel.any():
            pts = features[i].float().permute(1, 2, 0)[sel]
            labels[i][sel] = _sq_dists(pts, centroids).argmin(1).to(torch.int16)
    return labels


def group_prototypes(
    features: torch.Tensor, masks: torch.Tensor, k: int, seed: int, iters: int = 30, max_points: int = 16384
) -> dict[str, np.ndarray]:
    """Class, instance and part prototypes of one region (fg or bg), plus what --explain needs.

    features (N,D,h,w); masks (N,h,w) bool. Returns float32 "class" (1,D), "instance" (N',D),
    "part" (K',D); int64 "instance_src" (N',) support image of each instance row; int16
    "part_labels" (N,h,w), the part of each masked cell (-1 outside). Empty masks everywhere give
    zero-row prototype arrays. K-means runs on at most `max_points` masked cells (seeded subsample).
    """
    import torch

    masks = torch.as_tensor(masks, device=features.device).bool()
    inst, sizes, kept = instance_prototypes(features, masks)
    d = features.shape[1]
    if len(inst) == 0:
        empty = np.zeros((0, d), np.float32)
        return {
            "class": empty, "instance": empty, "part": empty, "instance_src": np.zeros(0, np.int64),
            "part_labels": np.full(tuple(masks.shape), -1, np.int16),
        }  # fmt: skip
    centroids, _ = kmeans(_masked_points(features, masks, max_points, seed), k, seed, iters)
    return {
        "class": class_prototype(inst, sizes).cpu().numpy(),
        "instance": inst.cpu().numpy(),
        "part": centroids.cpu().numpy(),
        "instance_src": kept.cpu().numpy().astype(np.int64),
        "part_labels": assign_parts(features, masks, centroids).cpu().numpy(),
    }


FG, BG = 1, 2  # bits of a coded mask cell: 3 is both (a grid cell the fg and bg masks both touch)


def encode_masks(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """(N,h,w) bool fg and bg → (N,h,w) uint8 bit flags: 1 fg, 2 bg, 3 both, 0 neither.

    Masks reduced to a grid (any overlap counts) may share cells; both keep them, as the authors' do."""
    return (np.asarray(fg, bool) * FG | np.asarray(bg, bool) * BG).astype(np.uint8)


def decode_masks(coded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`encode_masks`' inverse: (N,h,w) uint8 → fg, bg (N,h,w) bool."""
    coded = np.asarray(coded)
    return (coded & FG) > 0, (coded & BG) > 0


def build_prototypes(
    features: torch.Tensor,
    fg_masks: np.ndarray,
    bg_masks: np.ndarray,
    k: int,
    seed: int,
    stuff: bool,
    iters: int = 30,
    max_points: int = 16384,
) -> dict[str, np.ndarray]:
    """All arrays of one class, named as the cache stores them.

    features (N,D,h,w) float (any device); fg_masks, bg_masks (N,h,w) bool. Returns
    "fg/class", "fg/instance", "fg/part", "fg/instance_src", "fg/part_labels", the same under "bg/"
    unless `stuff`, and "masks" (N,h,w) uint8 (`encode_masks`: 1 fg, 2 bg, 3 both, 0 neither; kept for stuff
    too, for the contact sheet). bg part K-means uses seed+1 so fg and bg subsamples differ.
    """
    out = {"masks": encode_masks(fg_masks, bg_masks)}
    groups = {"fg": fg_masks} if stuff else {"fg": fg_masks, "bg": bg_masks}
    for j, (g, m) in enumerate(groups.items()):
        for name, arr in group_prototypes(features, m, k, seed + j, iters, max_points).items():
            out[f"{g}/{name}"] = arr
    return out
