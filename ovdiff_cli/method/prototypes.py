"""Paper §3 "Class prototypes": prototype aggregation (§3 "Prototype aggregation", Eq. 1; Tables A.5, A.7).

For each of fg and bg:
- instance prototypes: the mean feature inside each support image's mask (Eq. 1);
- the class prototype: the instances' mean weighted by mask size;
- part prototypes: K-means centroids of the region's masked features (K=32 by default).
Stuff classes keep fg prototypes only (paper §3 "Stuff filtering").

A class is built by streaming: support images pass through the extractor a batch at a time and a
`RegionAccumulator` (one per feature space and region) keeps only the instance rows (one per image)
and a bounded sample of masked cells for K-means, so memory does not grow with N. Features may be
fp16/bf16; every sum is accumulated in fp32.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable

import numpy as np
import torch

from .precision import mm_f32

CHUNK_ELEMENTS = 1 << 24  # points × D per distance / assignment step: 64 MB of fp32, whatever P


def _chunk_rows(dim: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(dim, 1))


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


# --------------------------------------------------------------------------- K-means


def _scores(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(P,D) any dtype, (K,D) float32 → (P,K) float32 ‖c‖² − 2 x·c: the squared distance up to ‖x‖²."""
    c = centroids.to(points.dtype)
    return (centroids * centroids).sum(1) - 2 * mm_f32(points, c.T)


def nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of each point's nearest centroid, (P,) int64, in chunks of rows (bounded temporaries)."""
    step = _chunk_rows(points.shape[1])
    return torch.cat([_scores(points[i : i + step], centroids).argmin(1) for i in range(0, len(points), step)])


def _sq_dist_to(points: torch.Tensor, sq_norms: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """(P,D), their (P,) float32 squared norms, (D,) float32 → (P,) float32 squared distances.

    ‖x‖² + ‖c‖² − 2 x·c, one matrix-vector product per chunk; values within rounding of zero (a point
    on the centre) are set to exactly 0 so that k-means++ never draws it.
    """
    step = _chunk_rows(points.shape[1])
    c = centre.to(points.dtype)[:, None]
    dots = torch.cat([mm_f32(points[i : i + step], c)[:, 0] for i in range(0, len(points), step)])
    cc = (centre * centre).sum()
    d2 = sq_norms + cc - 2 * dots
    return torch.where(d2 > 1e-5 * (sq_norms + cc), d2, torch.zeros_like(d2))


def kmeans(points: torch.Tensor, k: int, seed: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded K-means: k-means++ initialisation, then Lloyd iterations until the labels settle.

    points (P,D) float, any dtype and device (fp16/bf16 are used as they are, with fp32 sums) →
    centroids (k', D) float32 and labels (P,) int64 on the points' device. k' = min(k, distinct
    points): k-means++ never picks a point that coincides with a chosen centre, and stops when every
    point does. Random draws come from a CPU generator seeded with `seed`: same input and seed →
    same result. Distances and centroid sums run in row chunks of `CHUNK_ELEMENTS` (batched matmuls).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x = torch.as_tensor(points)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"points must be a non-empty (P,D) array, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    step = _chunk_rows(x.shape[1])
    chunks = [x[i : i + step] for i in range(0, len(x), step)]
    sq_norms = torch.cat([torch.linalg.vector_norm(c, dim=1, dtype=torch.float32) ** 2 for c in chunks])

    # k-means++: each new centre drawn with probability ∝ squared distance to the nearest centre.
    first = int(torch.randint(len(x), (1,), generator=gen))
    centres = [x[first].float()]
    d2 = _sq_dist_to(x, sq_norms, centres[0])
    while len(centres) < k:
        p = d2.double().cpu()
        if not p.sum() > 0:
            break  # every point sits on a centre: fewer distinct points than k
        nxt = int(torch.multinomial(p, 1, generator=gen))
        centres.append(x[nxt].float())
        d2 = torch.minimum(d2, _sq_dist_to(x, sq_norms, centres[-1]))
    centroids = torch.stack(centres)
    k = len(centroids)

    labels = nearest(x, centroids)
    for _ in range(iters):
        sums = torch.zeros_like(centroids)
        for i, c in zip(range(0, len(x), step), chunks, strict=True):
            sums.index_add_(0, labels[i : i + step], c.float())
        mass = torch.bincount(labels, minlength=k).float()
        filled = mass > 0  # an emptied cluster keeps its centre
        centroids[filled] = sums[filled] / mass[filled, None]
        new = nearest(x, centroids)
        if torch.equal(new, labels):
            break
        labels = new
    return centroids, labels


# --------------------------------------------------------------------------- streaming


def cell_keys(seed: int, image: int, cells: int) -> np.ndarray:
    """The random key of every cell of support image `image`: (cells,) float64 in [0,1).

    A function of (seed, image, cell) alone, so the sample below is the same whatever the batching.
    """
    return np.random.default_rng([seed, image]).random(cells)


class RegionAccumulator:
    """One region (fg or bg) of one feature space, built from batches of support images.

    Keeps per image its instance row and mask area (Eq. 1), and for K-means a uniform sample of at
    most `max_points` masked cells: the cells with the smallest `cell_keys` (bottom-k sampling, so
    the sample does not depend on the batch size or the order of `add` calls). Memory is bounded by
    `max_points × dim` in the features' dtype plus N instance rows, whatever N.

    part_labels: the nearest part centroid of every masked cell needs the final centroids, which
    exist only once all images are seen. Each batch's masked cells are therefore spilled to an
    unlinked temporary file (in the features' dtype, in `spill_dir`) and read back in chunks by
    `finish` for that assignment: a second pass over disk, not over the extractor, and never more
    than one chunk in memory. On a GPU the first `device_spill` bytes of them stay on the device
    instead (a round trip through host memory and disk cost more than the K-means on CUDA); memory
    is still bounded whatever N.
    """

    def __init__(self, dim: int, k: int, seed: int, iters: int = 30, max_points: int = 8192,
                 spill_dir: str | None = None, device_spill: int = 256 << 20):  # fmt: skip
        if max_points < 1:
            raise ValueError(f"max_points must be at least 1, got {max_points}")
        self.dim, self.k, self.seed, self.iters, self.max_points = dim, k, seed, iters, max_points
        self.spill_dir = spill_dir
        self.instances: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # image → (D,) Eq. 1 row, mask area
        self.masks: dict[int, np.ndarray] = {}  # image → (h,w) bool, where its spilled cells go
        self.grid: tuple[int, int] | None = None
        self._points: torch.Tensor | None = None  # (max_points, D) sample, the first len(_keys) rows filled
        self._keys = np.zeros(0)
        self._spill = None
        self._spilled: list[tuple[int, int, torch.Tensor | None]] = []  # (image, cells, rows kept on the GPU or None: in the file)
        self._device_room = device_spill

    @property
    def sample(self) -> tuple[np.ndarray, torch.Tensor | None]:
        """The cells held for K-means: keys (n,) float64 and points (n,D), n ≤ max_points (None before any)."""
        n = len(self._keys)
        return self._keys.copy(), None if self._points is None else self._points[:n]

    @property
    def sample_capacity(self) -> int:
        """Rows allocated for the sample: max_points once a masked cell was seen, whatever N."""
        return 0 if self._points is None else len(self._points)

    def add(self, features: torch.Tensor, masks: np.ndarray | torch.Tensor, first_index: int) -> None:
        """features (B,D,h,w) float (any dtype/device) of support images first_index … first_index+B−1;
        masks (B,h,w) bool on the same grid."""
        b, d, h, w = features.shape
        if d != self.dim:
            raise ValueError(f"features have {d} channels, the accumulator {self.dim}")
        if self.grid not in (None, (h, w)):
            raise ValueError(f"feature grid {h}x{w} differs from the first batch's {self.grid[0]}x{self.grid[1]}")
        self.grid = (h, w)
        m = torch.as_tensor(np.asarray(masks, bool) if not torch.is_tensor(masks) else masks, device=features.device).bool()
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
            self._sample(cols, cells, cell_keys(self.seed, i, h * w)[m_np[j].flatten()])
            self._write(i, cols[cells])

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

    def _write(self, image: int, rows: torch.Tensor) -> None:
        """Keep one image's masked cells (rows: a gathered copy) for `_part_labels`: on the GPU while
        there is room, else in the spill file."""
        if rows.is_cuda and rows.nbytes <= self._device_room:
            self._device_room -= rows.nbytes
            self._spilled.append((image, len(rows), rows))
            return
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(dir=self.spill_dir, prefix="ovdiff-parts-")
        self._spill.write(rows.contiguous().cpu().view(torch.uint8).numpy().data)
        self._spilled.append((image, len(rows), None))

    def _part_labels(self, centroids: torch.Tensor, dtype: torch.dtype, device: torch.device) -> np.ndarray:
        """(N,h,w) int16 nearest centroid of every masked cell, −1 elsewhere, read back from the spill."""
        n = max(self.masks) + 1
        labels = np.full((n, *self.grid), -1, np.int16)
        if self._spill is not None:
            self._spill.seek(0)
        row_bytes = self.dim * torch.empty(0, dtype=dtype).element_size()
        for image, cells, kept in self._spilled:
            out = labels[image]
            if kept is not None:
                out[self.masks[image]] = nearest(kept, centroids).cpu().numpy().astype(np.int16)
                continue
            got = []
            for start in range(0, cells, _chunk_rows(self.dim)):
                count = min(_chunk_rows(self.dim), cells - start)
                buf = bytearray(count * row_bytes)
                if self._spill.readinto(buf) != len(buf):
                    raise OSError("the part-label spill file is shorter than what was written to it")
                rows = torch.frombuffer(buf, dtype=dtype).view(count, self.dim).to(device)
                got.append(nearest(rows, centroids).cpu().numpy())
            out[self.masks[image]] = np.concatenate(got).astype(np.int16)
        return labels

    def finish(self) -> dict[str, np.ndarray]:
        """float32 "class" (1,D), "instance" (N',D), "part" (K',D); int64 "instance_src" (N',), the
        support image of each instance row; int16 "part_labels" (N,h,w), the part of each
        masked cell (−1 outside). No masked cell anywhere → zero-row prototype arrays."""
        if not self.masks:
            raise ValueError("no support image was added")
        kept = sorted(self.instances)
        empty = np.zeros((0, self.dim), np.float32)
        out = {"class": empty, "instance": empty, "part": empty, "instance_src": np.asarray(kept, np.int64)}
        if kept:
            inst = torch.stack([self.instances[i][0] for i in kept])
            sizes = torch.stack([self.instances[i][1] for i in kept])
            centroids, _ = kmeans(self._points[: len(self._keys)], self.k, self.seed, self.iters)
            out.update({"class": class_prototype(inst, sizes).cpu().numpy(), "instance": inst.cpu().numpy(),
                        "part": centroids.cpu().numpy()})  # fmt: skip
        dtype = self._points.dtype if self._points is not None else torch.float32
        device = self._points.device if self._points is not None else torch.device("cpu")
        out["part_labels"] = self._part_labels(torch.from_numpy(out["part"]).to(device), dtype, device)
        self.close()
        return out

    def close(self) -> None:
        """Drop the spill file (also done by `finish`)."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        self._spilled = []


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


def build_prototypes(
    batches: Iterable[Batch],
    k: int,
    seed: int,
    stuff: bool,
    iters: int = 30,
    max_points: int = 8192,
    spill_dir: str | None = None,
) -> dict[str, np.ndarray]:
    """All arrays of one class, named as the cache stores them, from batches of support images.

    batches: (features (B,D,h,w) float, any dtype/device; fg, bg (B,h,w) bool on the features'
    grid) in image order; each is folded into the accumulators and can be freed before the next is
    made. Returns "fg/class", "fg/instance", "fg/part", "fg/instance_src", "fg/part_labels", and the
    same under "bg/" unless `stuff`. bg uses seed+1 for its sample and K-means so fg and bg draws
    differ. The masks themselves are stored by the caller, on the mask grid (`encode_masks`).
    """
    groups = ("fg",) if stuff else ("fg", "bg")
    accs: dict[str, RegionAccumulator] = {}
    first = 0
    try:
        for feats, fg, bg in batches:
            if not accs:
                accs = {g: RegionAccumulator(feats.shape[1], k, seed + j, iters, max_points, spill_dir=spill_dir)
                        for j, g in enumerate(groups)}  # fmt: skip
            region = {"fg": fg, "bg": bg}
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
