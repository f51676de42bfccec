"""Paper §3 "Class prototypes": prototype aggregation (§3 "Prototype aggregation", Eq. 1; Tables A.5, A.7).

For each of fg and bg:
- instance prototypes: the mean feature inside each support image's mask (Eq. 1);
- the class prototype: the instances' mean weighted by mask size;
- part prototypes: K-means centroids of all the region's masked features (K=32 by default), as the
  authors' `KMeans(32, random_state=0, n_init="auto")` runs it.
Stuff classes keep fg prototypes only (paper §3 "Stuff filtering"). Features are the extractors' raw
ones, as the authors average and cluster them; matching normalises both sides (cosines).

A class is built by streaming: support images pass through the extractor a batch at a time and a
`RegionAccumulator` (one per feature space and region) keeps the instance rows (one per image) and
puts the masked cells in a `CellStore` (a device budget, then a spill file) that K-means reads in
chunks, so memory does not grow with N. Features may be fp16/bf16; every sum is accumulated in fp32.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from ..precision import mm_f32
from .kmeans import KMEANS_ITERS, CellStore, kmeans, nearest


def instance_prototypes(features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 1, P_n = M̂ₙᵀΦ(Sₙ) / M̂ₙᵀM̂ₙ, for every image whose mask is not empty.

    features (N,D,h,w) float (any dtype); masks (N,h,w) bool on the same grid →
    prototypes (N',D) float32, sizes (N',) float32 (mask areas in cells), kept (N',) int64 (image index).
    """
    masks = torch.as_tensor(masks, device=features.device).bool()
    sizes = masks.flatten(1).sum(1)
    kept = torch.nonzero(sizes > 0).flatten()
    protos = [
        mm_f32(features[i].flatten(1), masks[i].flatten()[:, None].to(features.dtype))[:, 0] / sizes[i].float()
        for i in kept.tolist()
    ]
    d = features.shape[1]
    stack = torch.stack(protos) if protos else features.new_zeros((0, d), dtype=torch.float32)
    return stack, sizes[kept].float(), kept


def class_prototype(instances: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """P̄ = Σₙ mₙPₙ / Σₙ mₙ with mₙ the mask sizes: instances (N,D), sizes (N,) → (1,D) float32."""
    w = sizes.float().to(instances.device)
    return ((w[:, None] * instances.float()).sum(0) / w.sum())[None]


# --------------------------------------------------------------------------- cells


def cell_keys(seed: int, image: int, cells: int) -> np.ndarray:
    """The random key of every cell of support image `image`: (cells,) float64 in [0,1).

    A function of (seed, image, cell) alone, so the sample below is the same whatever the batching.
    """
    return np.random.default_rng([seed, image]).random(cells)


class RegionAccumulator:
    """One region (fg or bg) of one feature space, built from batches of support images.

    Keeps per image its instance row and mask area (Eq. 1), and every masked cell in a `CellStore`
    (on the device up to a budget, else a spill file), so memory is bounded whatever N. K-means runs
    on all the cells, as the authors' (`kmeans`, streamed over the store); its labels are the part of
    every masked cell. With `max_points`, K-means runs instead on a uniform sample of at most that
    many cells held in memory (the smallest `cell_keys`: bottom-k sampling, independent of batching
    and order), faster for large N, and the part labels take a pass over the store.
    """

    def __init__(
        self,
        dim: int,
        k: int,
        seed: int,
        iters: int = KMEANS_ITERS,
        max_points: int | None = None,
        spill_dir: str | None = None,
        device_spill: int = 256 << 20,
    ):
        if max_points is not None and max_points < 1:
            raise ValueError(f"max_points must be at least 1, got {max_points}")
        self.dim, self.k, self.seed, self.iters, self.max_points = dim, k, seed, iters, max_points
        self.instances: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # image → (D,) Eq. 1 row, mask area
        self.masks: dict[int, np.ndarray] = {}  # image → (h,w) bool, where its stored cells go
        self.grid: tuple[int, int] | None = None
        self.cells = CellStore(dim, spill_dir, device_spill)
        self._order: list[int] = []  # images in the order their cells were stored
        self._points: torch.Tensor | None = None  # (max_points, D) sample, the first len(_keys) rows filled
        self._keys = np.zeros(0)

    @property
    def sample(self) -> tuple[np.ndarray, torch.Tensor | None]:
        """The sampled cells (with `max_points`): keys (n,) float64 and points (n,D), n ≤ max_points."""
        n = len(self._keys)
        return self._keys.copy(), None if self._points is None else self._points[:n]

    def add(self, features: torch.Tensor, masks: np.ndarray | torch.Tensor, first_index: int) -> None:
        """features (B,D,h,w) float (any dtype/device) of support images first_index … first_index+B−1;
        masks (B,h,w) bool on the same grid."""
        b, d, h, w = features.shape
        if d != self.dim:
            raise ValueError(f"features have {d} channels, the accumulator {self.dim}")
        if self.grid not in (None, (h, w)):
            raise ValueError(f"feature grid {h}x{w} differs from the first batch's {self.grid[0]}x{self.grid[1]}")
        self.grid = (h, w)
        m = torch.as_tensor(
            np.asarray(masks, bool) if not torch.is_tensor(masks) else masks, device=features.device
        ).bool()
        if tuple(m.shape) != (b, h, w):
            raise ValueError(f"masks must be {(b, h, w)}, got {tuple(m.shape)}")
        if any(first_index + j in self.masks for j in range(b)):
            raise ValueError(f"support images {first_index}…{first_index + b - 1} overlap ones already added")
        m_np = m.cpu().numpy()
        inst, sizes, kept = instance_prototypes(features, m)
        for row, j in enumerate(kept.tolist()):
            self.instances[first_index + j] = (inst[row], sizes[row])
        for j in range(b):
            i = first_index + j
            self.masks[i] = m_np[j]
            cells = torch.nonzero(m[j].flatten()).flatten()
            if not len(cells):
                continue
            cols = features[j].flatten(1).T  # (h·w, D), a view: rows gathered from it are copied once
            if self.max_points is not None:
                self._sample(cols, cells, cell_keys(self.seed, i, h * w)[m_np[j].flatten()])
            self.cells.append(cols[cells])
            self._order.append(i)

    def _sample(self, cols: torch.Tensor, cells: torch.Tensor, keys: np.ndarray) -> None:
        """Merge one image's masked cells into the bottom-`max_points` sample by key."""
        n = len(self._keys)
        merged = np.concatenate([self._keys, keys])
        if len(merged) > self.max_points:
            keep = np.argpartition(merged, self.max_points - 1)[: self.max_points]
        else:
            keep = np.arange(len(merged))
        incoming = np.sort(keep[keep >= n]) - n
        if not len(incoming):
            return
        evicted = np.setdiff1d(np.arange(n), keep[keep < n])
        slots = np.concatenate([evicted, np.arange(n, n + len(incoming) - len(evicted))])
        if self._points is None:
            self._points = cols.new_empty((self.max_points, self.dim))
        idx = torch.from_numpy(incoming).to(cells.device)
        self._points[torch.from_numpy(slots).to(cols.device)] = cols[cells[idx]]
        self._keys = np.concatenate([self._keys, np.zeros(len(slots) - len(evicted))])
        self._keys[slots] = keys[incoming]

    def _part_labels(self, labels: np.ndarray) -> np.ndarray:
        """(N,h,w) int16: each stored cell's label (`labels`, in store order) in its image, −1 elsewhere."""
        out = np.full((max(self.masks) + 1, *self.grid), -1, np.int16)
        start = 0
        for image in self._order:
            n = int(self.masks[image].sum())
            out[image][self.masks[image]] = labels[start : start + n]
            start += n
        return out

    def finish(self) -> dict[str, np.ndarray]:
        """float32 "class" (1,D), "instance" (N',D), "part" (K',D); int64 "instance_src" (N',), the
        support image of each instance row; int16 "part_labels" (N,h,w), the part of each
        masked cell (−1 outside). No masked cell anywhere → zero-row prototype arrays."""
        if not self.masks:
            raise ValueError("no support image was added")
        kept = sorted(self.instances)
        empty = np.zeros((0, self.dim), np.float32)
        out = {"class": empty, "instance": empty, "part": empty, "instance_src": np.asarray(kept, np.int64)}
        labels = np.zeros(0, np.int16)
        if kept:
            inst = torch.stack([self.instances[i][0] for i in kept])
            sizes = torch.stack([self.instances[i][1] for i in kept])
            if self.max_points is None:
                centroids, lab = kmeans(self.cells, self.k, self.seed, self.iters)
            else:
                centroids, _ = kmeans(self._points[: len(self._keys)], self.k, self.seed, self.iters)
                lab = torch.cat([nearest(x, centroids) for _, x in self.cells.chunks()])
            labels = lab.cpu().numpy().astype(np.int16)
            out.update(
                {
                    "class": class_prototype(inst, sizes).cpu().numpy(),
                    "instance": inst.cpu().numpy(),
                    "part": centroids.cpu().numpy(),
                }
            )
        out["part_labels"] = self._part_labels(labels)
        self.close()
        return out

    def close(self) -> None:
        """Drop the stored cells (also done by `finish`)."""
        self.cells.close()


# --------------------------------------------------------------------------- one class


FG, BG = 1, 2  # bits of a coded mask cell: 3 is both (a grid cell the fg and bg masks both touch)


def encode_masks(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """(N,h,w) bool fg and bg → (N,h,w) uint8 bit flags: 1 fg, 2 bg, 3 both, 0 neither.

    Masks reduced to a grid (any overlap counts) may share cells; both keep them, as the authors' do."""
    return (np.asarray(fg, bool) * FG | np.asarray(bg, bool) * BG).astype(np.uint8)


def decode_masks(coded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`encode_masks`' inverse: (N,h,w) uint8 → fg, bg (N,h,w) bool."""
    coded = np.asarray(coded)
    return (coded & FG) > 0, (coded & BG) > 0


Batch = tuple[torch.Tensor, np.ndarray, np.ndarray]


def without_empty_fg(fg: np.ndarray | torch.Tensor, bg: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """bg (B,h,w) with the images whose fg (B,h,w) has no cell on this grid emptied: the authors skip such
    an image altogether (sdov `gen_proto_*.py`), its background included."""
    import torch

    empty = ~(
        fg.reshape(len(fg), -1).any(1) if torch.is_tensor(fg) else np.asarray(fg, bool).reshape(len(fg), -1).any(1)
    )
    if not bool(empty.any()):
        return bg
    bg = bg.clone() if torch.is_tensor(bg) else np.array(bg, dtype=bool)
    bg[torch.as_tensor(empty, device=bg.device) if torch.is_tensor(bg) else np.asarray(empty)] = False
    return bg


def build_prototypes(
    batches: Iterable[Batch],
    k: int,
    seed: int,
    stuff: bool,
    iters: int = KMEANS_ITERS,
    max_points: int | None = None,
    spill_dir: str | None = None,
) -> dict[str, np.ndarray]:
    """All arrays of one class, named as the cache stores them, from batches of support images.

    batches: (features (B,D,h,w) float, any dtype/device; fg, bg (B,h,w) bool on the features'
    grid) in image order; each is folded into the accumulators and can be freed before the next is
    made. Returns "fg/class", "fg/instance", "fg/part", "fg/instance_src", "fg/part_labels", and the
    same under "bg/" unless `stuff`. Both regions cluster with the same seed, as the authors' (one
    `random_state` for fg and bg). The masks themselves are stored by the caller, on the mask grid (`encode_masks`).
    """
    groups = ("fg",) if stuff else ("fg", "bg")
    accs: dict[str, RegionAccumulator] = {}
    first = 0
    try:
        for feats, fg, bg in batches:
            if not accs:
                accs = {
                    g: RegionAccumulator(feats.shape[1], k, seed, iters, max_points, spill_dir=spill_dir)
                    for g in groups
                }
            region = {"fg": fg, "bg": without_empty_fg(fg, bg)}
            for g, acc in accs.items():
                acc.add(feats, region[g], first)
            first += len(feats)
            del feats, fg, bg, region  # the producer makes the next batch while this loop waits on it
        if not accs:
            raise ValueError("build_prototypes needs at least one batch")
        out: dict[str, np.ndarray] = {}
        for g, acc in accs.items():
            out.update({f"{g}/{name}": arr for name, arr in acc.finish().items()})
        return out
    finally:
        for acc in accs.values():
            acc.close()
