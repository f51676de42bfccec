"""Paper §3 "Class prototypes": the part prototypes' K-means (K=32), as scikit-learn's `KMeans(n_init="auto")`
runs it for the authors: greedy k-means++ seeding, at most 300 Lloyd iterations, sklearn's tolerance rule and its
relocation of empty clusters, over every masked cell of a region.

The cells live in a `CellStore` (a device budget, then a spill file) read in chunks, so memory does not grow with
the number of support images. Every sum is accumulated in fp32.
"""

from __future__ import annotations

import bisect
import tempfile
from collections.abc import Iterator

import numpy as np
import torch

from ..precision import mm_f32

CHUNK_ELEMENTS = 1 << 24  # points × D per distance / assignment step: 64 MB of fp32, whatever P


def _chunk_rows(dim: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(dim, 1))


class CellStore:
    """The masked cells of one region, appended image by image and read back in chunks as often as
    K-means needs them (a pass per k-means++ centre and per Lloyd iteration).

    On a GPU the first `device_room` bytes of rows stay on the device (a round trip through host
    memory and disk costs more than K-means on CUDA); the rest, and every row on the CPU, go to an
    unlinked temporary file in `spill_dir`, in the rows' dtype, read back one chunk at a time (the OS
    page cache keeps a file that fits in memory). Memory held: at most `device_room`, whatever N.
    """

    def __init__(self, dim: int, spill_dir: str | None = None, device_room: int = 256 << 20):
        self.dim, self.spill_dir, self._room = dim, spill_dir, device_room
        self._file = None
        self._parts: list[
            tuple[int, int, int, torch.Tensor | None]
        ] = []  # (first row, rows, file row, kept rows or None)
        self._n = self._filed = 0
        self.dtype: torch.dtype = torch.float32
        self.device = torch.device("cpu")

    @classmethod
    def of(cls, rows: torch.Tensor) -> CellStore:
        """A store of `rows` (P,D) as they are, in memory (a K-means on a tensor)."""
        store = cls(rows.shape[1], device_room=0)
        store.dtype, store.device, store._n = rows.dtype, rows.device, len(rows)
        store._parts.append((0, len(rows), 0, rows))
        return store

    def __len__(self) -> int:
        return self._n

    def append(self, rows: torch.Tensor) -> None:
        """rows (n,D), a gathered copy; every append has the first one's dtype and device."""
        if not self._n:
            self.dtype, self.device = rows.dtype, rows.device
        if rows.is_cuda and rows.nbytes <= self._room:
            self._room -= rows.nbytes
            self._parts.append((self._n, len(rows), 0, rows))
        else:
            if self._file is None:
                self._file = tempfile.TemporaryFile(dir=self.spill_dir, prefix="ovdiff-parts-")  # noqa: SIM115
            self._file.seek(self._filed * self._row_bytes())
            self._file.write(rows.contiguous().cpu().view(torch.uint8).numpy().data)
            self._parts.append((self._n, len(rows), self._filed, None))
            self._filed += len(rows)
        self._n += len(rows)

    def _row_bytes(self) -> int:
        return self.dim * torch.empty(0, dtype=self.dtype).element_size()

    def _read(self, row: int, count: int) -> torch.Tensor:
        buf = bytearray(count * self._row_bytes())
        self._file.seek(row * self._row_bytes())
        if self._file.readinto(buf) != len(buf):
            raise OSError("the part-cell spill file is shorter than what was written to it")
        return torch.frombuffer(buf, dtype=self.dtype).view(count, self.dim).to(self.device)

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row index, rows (n,D) on the store's device) in row order, n ≤ `CHUNK_ELEMENTS` / D."""
        step = _chunk_rows(self.dim)
        for first, count, filed, kept in self._parts:
            for s in range(0, count, step):
                n = min(step, count - s)
                yield first + s, kept[s : s + n] if kept is not None else self._read(filed + s, n)

    def take(self, rows: np.ndarray) -> torch.Tensor:
        """The rows at these indices, (len(rows), D) on the store's device."""
        firsts = [p[0] for p in self._parts]
        out = []
        for r in np.asarray(rows, np.int64).tolist():
            first, _, filed, kept = self._parts[bisect.bisect_right(firsts, r) - 1]
            out.append(kept[r - first : r - first + 1] if kept is not None else self._read(filed + r - first, 1))
        return torch.cat(out)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._parts = []


# --------------------------------------------------------------------------- K-means

KMEANS_TOL = 1e-4  # scikit-learn's default, relative to the data's mean per-feature variance
KMEANS_ITERS = 300  # scikit-learn's default max_iter


def _scores(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(P,D) float32, (K,D) float32 → (P,K) float32 ‖c‖² − 2 x·c: the squared distance up to ‖x‖²."""
    return (centroids * centroids).sum(1) - 2 * mm_f32(points, centroids.T)


def nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of each point's nearest centroid, (P,) int64, in chunks of rows (bounded temporaries)."""
    step = _chunk_rows(points.shape[1])
    c = centroids.float()
    return torch.cat([_scores(points[i : i + step].float(), c).argmin(1) for i in range(0, len(points), step)])


class CentredCells:
    """A store's rows less their mean, in fp32, chunk by chunk; with their squared norms.

    As scikit-learn does before K-means: distances ‖x‖² + ‖c‖² − 2x·c lose less to rounding near
    the data than far from it. Also the tolerance: KMEANS_TOL × the mean per-feature variance."""

    def __init__(self, cells: CellStore, tol: float):
        total = torch.zeros(cells.dim, dtype=torch.float64, device=cells.device)
        squares = torch.zeros_like(total)
        for _, rows in cells.chunks():  # float64 sums of fp32 values: no float64 copy of a chunk
            x = rows.float()
            total += x.sum(0, dtype=torch.float64)
            squares += (x * x).sum(0, dtype=torch.float64)
        n = len(cells)
        mean = total / n
        self.tol = float((squares / n - mean * mean).clamp_min(0).mean()) * tol
        self.cells, self.mean = cells, mean.float()
        self.sq = torch.cat([(x * x).sum(1) for _, x in self.chunks()])

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        for first, rows in self.cells.chunks():
            yield first, rows.float() - self.mean

    def take(self, rows: np.ndarray) -> torch.Tensor:
        return self.cells.take(rows).float() - self.mean

    def sq_dist(self, centres: torch.Tensor) -> torch.Tensor:
        """(P,C) float32 squared distances to centres (C,D); values within rounding of zero (a point on
        a centre) are exactly 0, so that k-means++ never draws it again."""
        cc = (centres * centres).sum(1)
        out = []
        for first, x in self.chunks():
            sq = self.sq[first : first + len(x), None]
            d2 = sq + cc - 2 * mm_f32(x, centres.T)
            out.append(torch.where(d2 > 1e-5 * (sq + cc), d2, torch.zeros_like(d2)))
        return torch.cat(out)


def kmeans_plusplus(data: CentredCells, k: int, rng: np.random.RandomState) -> torch.Tensor:
    """Greedy k-means++ (scikit-learn's): each new centre is the best, by the summed squared distance it
    leaves, of 2 + ⌊ln k⌋ candidates drawn with probability ∝ squared distance to the nearest centre.
    Stops early when every point sits on a centre (fewer distinct points than k). (k',D) centred."""
    n = len(data.sq)
    first = int(rng.choice(n, p=np.full(n, 1.0 / n)))
    centres = [data.take(np.array([first]))]
    d2 = data.sq_dist(centres[0])[:, 0]
    pot = float(d2.double().sum())
    trials = 2 + int(np.log(k))
    while len(centres) < k and pot > 0:
        draws = rng.uniform(size=trials) * pot
        ids = np.minimum(np.searchsorted(np.cumsum(d2.double().cpu().numpy()), draws), n - 1)
        candidates = data.take(ids)
        left = torch.minimum(d2[:, None], data.sq_dist(candidates))
        pots = left.double().sum(0)
        best = int(pots.argmin())
        pot, d2 = float(pots[best]), left[:, best]
        centres.append(candidates[best : best + 1])
    return torch.cat(centres)


def _lloyd_pass(data: CentredCells, centres: torch.Tensor, sums: bool = True):
    """One E step (and the M step's sums): labels (P,) int64, squared distance to the nearest centre
    (P,) float32, per-centre sums (K,D) float32 and counts (K,) float32 (None without `sums`)."""
    labels, dist = [], []
    total = torch.zeros_like(centres) if sums else None
    for first, x in data.chunks():
        s = _scores(x, centres)
        val, lab = s.min(1)
        labels.append(lab)
        dist.append((val + data.sq[first : first + len(x)]).clamp_min(0))
        if sums:
            total.index_add_(0, lab, x)
    labels = torch.cat(labels)
    counts = torch.bincount(labels, minlength=len(centres)).float() if sums else None
    return labels, torch.cat(dist), total, counts


def relocate_empty(
    data: CentredCells, labels: torch.Tensor, dist: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor
) -> None:
    """scikit-learn's rule for a centre no point chose: it moves onto one of the points farthest from
    their centres (one each), which leave their own clusters' sums. In place."""
    empty = torch.nonzero(counts == 0).flatten()
    if not len(empty) or not float(dist.max()) > 0:
        return
    far = torch.topk(dist, len(empty)).indices
    rows = data.take(far.cpu().numpy())
    for j, f, x in zip(empty.tolist(), far.tolist(), rows, strict=True):
        old = int(labels[f])
        sums[old] -= x
        counts[old] -= 1
        sums[j], counts[j] = x, 1


def kmeans(
    points: torch.Tensor | CellStore, k: int, seed: int, iters: int = KMEANS_ITERS, tol: float = KMEANS_TOL
) -> tuple[torch.Tensor, torch.Tensor]:
    """K-means as scikit-learn's `KMeans(k, random_state=seed, n_init="auto")` runs it, streamed.

    points: (P,D) float of any dtype and device, or a `CellStore` (read in chunks: memory does not
    grow with P beyond a few floats per point). The data are centred on their mean; greedy k-means++
    seeds k centres (random draws from `np.random.RandomState(seed)`); Lloyd iterations follow, at
    most `iters`, until the labels repeat or the centres move by a summed squared shift ≤ tol × the
    mean per-feature variance; a centre left empty moves to a far point. Every product and sum is fp32.
    Returns centroids (k',D) float32 and labels (P,) int64 (each point's nearest centroid) on the
    points' device; k' = min(k, distinct points).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    cells = points if isinstance(points, CellStore) else CellStore.of(torch.as_tensor(points))
    if not isinstance(points, CellStore) and (points.ndim != 2 or not len(points)):
        raise ValueError(f"points must be a non-empty (P,D) array, got shape {tuple(points.shape)}")
    if not len(cells):
        raise ValueError("K-means of no points")
    data = CentredCells(cells, tol)
    centres = kmeans_plusplus(data, k, np.random.RandomState(seed))
    previous, converged = None, False
    for _ in range(iters):
        labels, dist, sums, counts = _lloyd_pass(data, centres)
        relocate_empty(data, labels, dist, sums, counts)
        filled = counts > 0
        new = centres.clone()
        new[filled] = sums[filled] / counts[filled, None]
        shift = float(((new - centres) ** 2).sum())
        centres = new
        if previous is not None and torch.equal(labels, previous):
            converged = True
            break
        if shift <= data.tol:
            break
        previous = labels
    if not converged:
        labels = _lloyd_pass(data, centres, sums=False)[0]
    return centres + data.mean, labels


# --------------------------------------------------------------------------- streaming
