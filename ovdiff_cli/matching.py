"""Paper §3 "Segmentation via prototype matching" (App. C.5): matching features against prototypes.

Pure torch. A `Vocabulary` holds every prototype of the classes in play with its label: the
foreground prototypes of class k get label k (its 1-based position in the class list), and the
background label 0 owns the union of the things' background prototypes that survive the "stuff"
filter. A pixel takes the label of its most similar prototype (cosine), computed in sliding
windows whose scores are averaged, then upsampled to the image size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from .precision import mm_f32
from .types import ClassPrototypes

NO_SCORE = -2.0  # below any cosine: a label without prototypes never wins


@dataclass(frozen=True)
class Provenance:
    """Where a prototype came from: class `cls` (0-based), "fg" or "bg", its kind and row."""

    cls: int
    group: str
    kind: str
    row: int


@dataclass
class Vocabulary:
    """The prototypes in play, grouped by label.

    protos: (P,D) float32 unit rows, sorted by `owner`; owner: (P,) int64 index into `labels`;
    labels: the label of each local label index (0 = background, k = names[k-1]); index: (P,) int64
    position of each prototype in the full vocabulary (what --explain reports); stuff_sim: (P,C)
    float32, a bg prototype's best cosine to each stuff class's fg prototypes (NO_SCORE elsewhere),
    so the stuff filter can follow the classes kept for an image; bg_threshold: when set, background
    is scored by this constant instead of prototypes (paper A.2, "w/o bg prototypes"); bank: the
    full vocabulary a restricted one was cut from (`index` points into it).
    """

    names: list[str]
    protos: torch.Tensor
    owner: torch.Tensor
    labels: list[int]
    provenance: list[Provenance]
    index: torch.Tensor
    stuff_sim: torch.Tensor
    stuff_threshold: float | None = 0.85
    bg_threshold: float | None = None
    bank: Vocabulary | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.protos.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Vocabulary:
        return replace(self, protos=self.protos.to(device, dtype), owner=self.owner.to(device),
                       index=self.index.to(device), stuff_sim=self.stuff_sim.to(device),
                       bank=None if self.bank is None else self.bank.to(device, dtype))  # fmt: skip

    def source(self, index: int) -> Provenance:
        """Provenance of the prototype at position `index` of the full vocabulary."""
        return (self.bank or self).provenance[index]

    def restrict(self, keep: list[int]) -> Vocabulary:
        """Only the classes `keep` (0-based): their fg prototypes and, as background, their bg
        prototypes that pass the stuff filter against the stuff classes among `keep`."""
        if self.bank is not None:
            return self.bank.restrict(keep)
        cols = torch.tensor(sorted(set(keep)), dtype=torch.long, device=self.protos.device)
        in_keep = torch.zeros(len(self.names), dtype=torch.bool, device=self.protos.device)
        in_keep[cols] = True
        owner_cls = torch.tensor([p.cls for p in self.provenance], dtype=torch.long, device=self.protos.device)
        rows = in_keep[owner_cls]
        if self.stuff_threshold is not None:
            rows &= self.stuff_sim[:, cols].max(dim=1).values <= self.stuff_threshold
        sel = torch.nonzero(rows).flatten()
        old_labels = [self.labels[o] for o in self.owner[sel].tolist()]
        labels = sorted(set(old_labels) | ({0} if self.bg_threshold is not None else set()))
        pos = {lab: i for i, lab in enumerate(labels)}
        return Vocabulary(
            self.names, self.protos[sel],
            torch.tensor([pos[lab] for lab in old_labels], dtype=torch.long, device=self.protos.device),
            labels, [self.provenance[i] for i in sel.tolist()], self.index[sel], self.stuff_sim[sel],
            self.stuff_threshold, self.bg_threshold, self,
        )  # fmt: skip


def _max_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a.float(), dim=1) @ F.normalize(b.float(), dim=1).T).max(dim=1).values


def assemble_vocabulary(
    classes: list[ClassPrototypes],
    kinds: tuple[str, ...] = ("class", "instance", "part"),
    background: bool = True,
    stuff_filter: bool = True,
    stuff_threshold: float = 0.85,
    bg_threshold: float | None = None,
) -> Vocabulary:
    """The vocabulary of `classes`: fg prototypes of the given kinds, plus a background label.

    background=False labels every pixel with a named class (paper A.3). With `bg_threshold`, the
    background is every pixel whose best fg similarity is below it, and no bg prototypes are used.
    Otherwise the background owns the bg prototypes of the thing classes; stuff classes keep fg
    prototypes only, and with `stuff_filter` a thing's bg prototype is dropped when its cosine
    to any stuff class's fg prototype exceeds `stuff_threshold` (`restrict` re-applies this to
    the stuff classes kept for one image).
    """
    if not classes:
        raise ValueError("a vocabulary needs at least one class")
    dim = _dim(classes)
    prov: list[Provenance] = []
    blocks: list[np.ndarray] = []
    for group in ("bg", "fg") if background and bg_threshold is None else ("fg",):
        for ci, c in enumerate(classes):
            if group == "bg" and c.kind == "stuff":
                continue  # stuff classes keep fg prototypes only
            table = c.bg if group == "bg" else c.fg
            for kind in kinds:
                arr = np.asarray(table.get(kind, np.zeros((0, dim))), np.float32).reshape(-1, dim)
                prov += [Provenance(ci, group, kind, r) for r in range(arr.shape[0])]
                blocks.append(arr)
    owners = [0 if p.group == "bg" else p.cls + 1 for p in prov]
    if not any(owners):
        raise ValueError("no foreground prototypes of the requested kinds in any class")
    protos = F.normalize(torch.from_numpy(np.concatenate(blocks)), dim=1)
    stuff_sim = torch.full((len(prov), len(classes)), NO_SCORE)
    is_bg = torch.tensor([p.group == "bg" for p in prov])
    for ci, c in enumerate(classes):
        fg = _stack([c.fg], kinds)
        if c.kind == "stuff" and is_bg.any() and fg.shape[0]:
            stuff_sim[is_bg, ci] = _max_cosine(protos[is_bg], fg)
    labels = sorted(set(owners) | ({0} if background and bg_threshold is not None else set()))
    pos = {lab: i for i, lab in enumerate(labels)}
    full = Vocabulary(
        [c.name for c in classes], protos, torch.tensor([pos[o] for o in owners], dtype=torch.long), labels,
        prov, torch.arange(len(prov)), stuff_sim, stuff_threshold if stuff_filter else None,
        bg_threshold if background else None,
    )  # fmt: skip
    return full.restrict(list(range(len(classes))))


def _dim(classes: list[ClassPrototypes]) -> int:
    for c in classes:
        for arr in c.fg.values():
            if np.ndim(arr) == 2 and np.shape(arr)[0]:
                return int(np.shape(arr)[1])
    raise ValueError("no foreground prototypes in any class")


def _stack(tables: list[dict[str, np.ndarray]], kinds: tuple[str, ...]) -> torch.Tensor:
    arrs = [np.asarray(t[k], np.float32) for t in tables for k in kinds if k in t and np.size(t[k])]
    if not arrs:
        return torch.zeros(0, 1)
    return torch.from_numpy(np.concatenate(arrs))


def match(features: torch.Tensor, vocab: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
    """Per label, the best cosine over its prototypes.

    features: (B,D,h,w) float, fp32 or fp16/bf16: half features are matched in their dtype with fp32
    accumulation (`mm_f32`). Returns scores (B,L,h,w) float32 in [-1,1] (L = len(vocab.labels))
    and best (B,L,h,w) int64, the winning prototype's `vocab.index` (-1 for a thresholded background).
    """
    norm = torch.linalg.vector_norm(features, dim=1, keepdim=True, dtype=torch.float32).clamp_min(1e-12)
    f = features / norm.to(features.dtype)
    protos = vocab.protos.to(f.device, f.dtype)
    b, _, h, w = f.shape
    sims = torch.stack([mm_f32(protos, fi.flatten(1)) for fi in f]).view(b, -1, h, w)
    scores = torch.full((b, len(vocab.labels), h, w), NO_SCORE, device=f.device)
    best = torch.full((b, len(vocab.labels), h, w), -1, dtype=torch.long, device=f.device)
    owner = vocab.owner.to(f.device)
    counts = torch.bincount(owner, minlength=len(vocab.labels)).tolist()
    start = 0
    for lab, n in enumerate(counts):  # prototypes are sorted by owner: one slice per label
        if n:
            val, idx = sims[:, start : start + n].max(dim=1)
            scores[:, lab], best[:, lab] = val, vocab.index.to(f.device)[start + idx]
        start += n
    if vocab.bg_threshold is not None and vocab.labels and vocab.labels[0] == 0:
        scores[:, 0] = vocab.bg_threshold
    return scores, best


def window_boxes(height: int, width: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y0,x0,y1,x1) windows of side `window` every `stride` px, the last flush with the border.

    Together they cover every pixel; along a side shorter than the window there is one window,
    clipped to the image (the caller pads it).
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got {window} and {stride}")

    def starts(n: int) -> list[int]:
        if n <= window:
            return [0]
        s = list(range(0, n - window + 1, stride))
        return s if s[-1] == n - window else s + [n - window]

    return [(y, x, min(y + window, height), min(x + window, width)) for y in starts(height) for x in starts(width)]


Extract = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class _Canvas:
    """One image's running window sums: label scores, window counts and, for --explain, the winners."""

    total: torch.Tensor  # (L,H,W)
    count: torch.Tensor  # (1,H,W)
    best_sim: torch.Tensor | None
    best_idx: torch.Tensor | None

    @classmethod
    def blank(cls, labels: int, height: int, width: int, device: torch.device, with_best: bool) -> _Canvas:
        shape = (labels, height, width)
        return cls(
            torch.zeros(shape, device=device), torch.zeros(1, height, width, device=device),
            torch.full(shape, NO_SCORE, device=device) if with_best else None,
            torch.full(shape, -1, dtype=torch.long, device=device) if with_best else None,
        )  # fmt: skip

    def add(self, box: tuple[int, int, int, int], scores: torch.Tensor, best: torch.Tensor | None) -> None:
        """scores (L,ph,pw) of the padded window at `box`; best (L,ph,pw) prototype indices or None."""
        y0, x0, y1, x1 = box
        s = scores[:, : y1 - y0, : x1 - x0]
        self.total[:, y0:y1, x0:x1] += s
        self.count[:, y0:y1, x0:x1] += 1
        if self.best_sim is not None:
            region = self.best_sim[:, y0:y1, x0:x1]
            better = s > region
            region[better] = s[better]
            self.best_idx[:, y0:y1, x0:x1][better] = best[:, : y1 - y0, : x1 - x0][better]

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.total / self.count, self.best_idx


def _windows(image: torch.Tensor, stride_px: int, windows: tuple[int, ...] | None, stride: int):
    """(padded shape, box, crop) of every window of `image` (3,H,W), each pass of sizes in turn.

    Crops are padded (replicate) up to a multiple of `stride_px`; without windows, one whole-image crop.
    """
    _, height, width = image.shape
    passes = [(w, window_boxes(height, width, w, stride)) for w in windows] if windows else [(None, [(0, 0, height, width)])]
    for size, boxes in passes:
        ph, pw = (-(-n // stride_px) * stride_px for n in ((size, size) if size else (height, width)))
        for y0, x0, y1, x1 in boxes:
            crop = F.pad(image[:, y0:y1, x0:x1], (0, pw - (x1 - x0), 0, ph - (y1 - y0)), mode="replicate")
            yield (ph, pw), (y0, x0, y1, x1), crop


@dataclass
class WindowBatch:
    """One extractor call of the sliding-window pass: windows of one padded size, from any images.

    shape: the padded window size (ph, pw) in px; jobs: (image index, (y0,x0,y1,x1) box) per window;
    features: (B,D,ph/stride_px,pw/stride_px), the extractor's output for those windows.
    """

    shape: tuple[int, int]
    jobs: list[tuple[int, tuple[int, int, int, int]]]
    features: torch.Tensor


def window_features(
    images: list[torch.Tensor],
    extract: Extract,
    stride_px: int,
    windows: tuple[int, ...] | None = (448, 336),
    stride: int = 224,
    batch: int = 8,
) -> Iterator[WindowBatch]:
    """The backbones' half of `slide_match_many`: every window of every image through `extract`,
    windows of one size sharing batches of at most `batch` (in first-seen order)."""
    by_shape: dict[tuple[int, int], list] = {}  # first-seen order: one image reproduces the pass order
    for i, image in enumerate(images):
        for shape, box, crop in _windows(image, stride_px, windows, stride):
            by_shape.setdefault(shape, []).append((i, box, crop))
    for shape, jobs in by_shape.items():
        for k in range(0, len(jobs), batch):
            chunk = jobs[k : k + batch]
            yield WindowBatch(shape, [(i, box) for i, box, _ in chunk], extract(torch.stack([crop for _, _, crop in chunk])))


def blank_canvases(sizes: list[tuple[int, int]], vocabs: list[Vocabulary], device: torch.device,
                   with_best: bool = False) -> list[_Canvas]:  # fmt: skip
    """One empty score canvas per image of (H,W) `sizes`, with its vocabulary's labels."""
    return [_Canvas.blank(len(v.labels), h, w, device, with_best) for (h, w), v in zip(sizes, vocabs, strict=True)]


def match_windows(canvases: list[_Canvas], wb: WindowBatch, vocabs: list[Vocabulary], with_best: bool = False) -> None:
    """The matching half: add a batch's window scores to its images' canvases, each window matched
    against its own image's vocabulary (consecutive windows of one image together)."""
    start = 0
    while start < len(wb.jobs):
        i = wb.jobs[start][0]
        stop = start
        while stop < len(wb.jobs) and wb.jobs[stop][0] == i:
            stop += 1
        scores, best = match(wb.features[start:stop], vocabs[i])
        up = F.interpolate(scores, size=wb.shape, mode="bilinear", align_corners=False)
        best_up = F.interpolate(best.float(), size=wb.shape, mode="nearest").long() if with_best else None
        for j in range(start, stop):
            canvases[i].add(wb.jobs[j][1], up[j - start], None if best_up is None else best_up[j - start])
        start = stop


def slide_match_many(
    images: list[torch.Tensor],
    vocabs: list[Vocabulary],
    extract: Extract,
    stride_px: int,
    windows: tuple[int, ...] | None = (448, 336),
    stride: int = 224,
    batch: int = 8,
    with_best: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """`slide_match` over several images at once: windows of the same size from all images share
    the extractor's batches (the backbones' cost), and each window is matched against its own
    image's vocabulary, so per-image category filtering still applies. Results in input order.
    """
    sizes = [(im.shape[1], im.shape[2]) for im in images]
    canvases = blank_canvases(sizes, vocabs, images[0].device if images else torch.device("cpu"), with_best)
    for wb in window_features(images, extract, stride_px, windows, stride, batch):
        match_windows(canvases, wb, vocabs, with_best)
    return [c.result() for c in canvases]


def slide_match(
    image: torch.Tensor,
    extract: Extract,
    vocab: Vocabulary,
    stride_px: int,
    windows: tuple[int, ...] | None = (448, 336),
    stride: int = 224,
    batch: int = 8,
    with_best: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Average label scores over sliding windows of each size (or one pass with windows=None).

    image: (3,H,W) float RGB in [0,1]; extract maps (B,3,S,S) with S a multiple of `stride_px` to
    (B,D,S/stride_px,S/stride_px). Window scores are upsampled (bilinear) to the window's pixels
    and averaged where windows overlap. Returns scores (L,H,W) float32 and, with `with_best`, the
    prototype (`vocab.index`) with the highest similarity per label and pixel over all windows,
    (L,H,W) int64; else None.
    """
    return slide_match_many([image], [vocab], extract, stride_px, windows, stride, batch, with_best)[0]


def upsample_argmax(
    scores: torch.Tensor, height: int, width: int, best: torch.Tensor | None = None, band: int = 256
) -> tuple[np.ndarray, np.ndarray | None]:
    """Bilinear upsampling of scores (L,h,w) to (height,width) and the argmax, in bands of rows.

    Working band by band keeps memory at L×band×width whatever the image size; the result equals
    F.interpolate(..., align_corners=False) followed by argmax. Returns local labels (H,W) int64
    and, given best (L,h,w), the winning label's prototype per pixel (nearest), (H,W) int64.
    """
    _, h, w = scores.shape
    labels = np.empty((height, width), np.int64)
    winner = np.empty((height, width), np.int64) if best is not None else None
    scale = h / height
    for r0 in range(0, height, band):
        r1 = min(r0 + band, height)
        y = ((torch.arange(r0, r1, device=scores.device, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_min(0)
        y0 = y.floor().long().clamp_max(h - 1)
        y1 = (y0 + 1).clamp_max(h - 1)
        wy = (y - y0).clamp(0, 1).float()[None, :, None]
        rows = scores[:, y0] * (1 - wy) + scores[:, y1] * wy  # (L, band, w)
        full = F.interpolate(rows[None], size=(r1 - r0, width), mode="bilinear", align_corners=False)[0]
        lab = full.argmax(0)
        labels[r0:r1] = lab.cpu().numpy()
        if best is not None:
            ny = ((torch.arange(r0, r1, device=scores.device) * h) // height).clamp_max(h - 1)
            nx = ((torch.arange(width, device=scores.device) * w) // width).clamp_max(w - 1)
            picked = best[:, ny][:, :, nx]  # (L, band, W) nearest
            winner[r0:r1] = picked.gather(0, lab[None]).squeeze(0).cpu().numpy()
    return labels, winner
