"""Paper §3 "Segmentation via prototype matching" (App. C.5): matching features against prototypes.

Pure torch, over the `PrototypeBank`s of `bank`. In each part a label scores, per pixel, the cosine of
its most similar prototype; as the authors do, the parts' score maps are averaged (late fusion),
then averaged over sliding windows and a whole-image pass, upsampled, and the argmax taken (scores
≤ 0 counted as 0, ties to the background, as the authors: `upsample_argmax`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..precision import mm_f32
from .bank import NO_SCORE, PrototypeBank


def match(features: torch.Tensor, vocab: PrototypeBank) -> tuple[torch.Tensor, torch.Tensor]:
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
MISSING = -1.0  # a part's score for a label it has no prototypes of (the lowest cosine, as sdov)


@dataclass
class _Canvas:
    """One image's running sums: label scores, score-map counts and, for --explain, the winners."""

    total: torch.Tensor  # (L,H,W)
    count: torch.Tensor  # (1,H,W)
    best_sim: torch.Tensor | None
    best_idx: torch.Tensor | None

    @classmethod
    def blank(cls, labels: int, height: int, width: int, device: torch.device, with_best: bool) -> _Canvas:
        shape = (labels, height, width)
        return cls(
            torch.zeros(shape, device=device),
            torch.zeros(1, height, width, device=device),
            torch.full(shape, NO_SCORE, device=device) if with_best else None,
            torch.full(shape, -1, dtype=torch.long, device=device) if with_best else None,
        )

    def add(
        self,
        box: tuple[int, int, int, int],
        scores: torch.Tensor,
        best: torch.Tensor | None = None,
        best_sim: torch.Tensor | None = None,
    ) -> None:
        """scores (L,h,w) of the crop at `box` (its size); best (L,h,w) prototype indices and
        best_sim (L,h,w) their similarities, or None."""
        y0, x0, y1, x1 = box
        self.total[:, y0:y1, x0:x1] += scores
        self.count[:, y0:y1, x0:x1] += 1
        if self.best_sim is not None:
            region = self.best_sim[:, y0:y1, x0:x1]
            better = best_sim > region
            region[better] = best_sim[better]
            self.best_idx[:, y0:y1, x0:x1][better] = best[better]

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.total / self.count, self.best_idx


def crops(image: torch.Tensor, windows: tuple[int, ...] | None, stride: int):
    """(box, crop) of every window of `image` (3,H,W), each size in turn, then the whole image.

    Windows are clipped to the image where it is smaller than them. The whole-image pass is one
    more score map averaged with the windows (sdov predict.py); without windows it is the only one.
    """
    _, height, width = image.shape
    for size in windows or ():
        for y0, x0, y1, x1 in window_boxes(height, width, size, stride):
            yield (y0, x0, y1, x1), image[:, y0:y1, x0:x1]
    yield (0, 0, height, width), image


def union_labels(vocabs: list[PrototypeBank]) -> list[int]:
    """The labels of one image over all parts' vocabularies, sorted."""
    return sorted(set().union(*(v.labels for v in vocabs)))


@dataclass
class WindowBatch:
    """One batch of crops through every part: crops of one size (the whole image is one more crop), from any images.

    shape: the crop size (h, w) in px; jobs: (image index, (y0,x0,y1,x1) box) per crop; features:
    per part, (B,D,h',w') that part's features of the crops (at the part's own input size).
    """

    shape: tuple[int, int]
    jobs: list[tuple[int, tuple[int, int, int, int]]]
    features: list[torch.Tensor]


Resize = Callable[[torch.Tensor], torch.Tensor]  # one crop (3,h,w) → the part's input (3,h',w')


def window_features(
    images: list[torch.Tensor],
    extracts: list[Extract],
    windows: tuple[int, ...] | None = (448, 336),
    stride: int = 224,
    batch: int = 8,
    resizes: list[Resize | None] | None = None,
) -> Iterator[WindowBatch]:
    """The backbones' half of `slide_match_many`: every crop (`crops`) of every image through each
    part's `extracts[j]`, crops of one size sharing batches of at most `batch` (in first-seen order).

    With `resizes[j]` (a part's own input size: `Part.resize`), `extracts[j]` takes crops already
    resized, and crops of different sizes that resize alike share its forward passes: a square-input
    part (SD, CLIP) then runs all the windows and the whole image of a chunk of `batch` crops in one
    pass. The batches yielded, and the order of their crops, are the same either way.
    """
    by_shape: dict[tuple[int, int], list] = {}  # first-seen order: one image reproduces the pass order
    for i, image in enumerate(images):
        for box, crop in crops(image, windows, stride):
            by_shape.setdefault(tuple(crop.shape[-2:]), []).append((i, box, crop))
    if not resizes or not any(resizes):
        for shape, jobs in by_shape.items():
            for k in range(0, len(jobs), batch):
                chunk = jobs[k : k + batch]
                stack = torch.stack([crop for _, _, crop in chunk])
                yield WindowBatch(shape, [(i, box) for i, box, _ in chunk], [extract(stack) for extract in extracts])
        return
    every = [job for jobs in by_shape.values() for job in jobs]
    for k in range(0, len(every), batch):
        chunk = every[k : k + batch]
        feats = [
            _part_features([c for _, _, c in chunk], extract, resize)
            for extract, resize in zip(extracts, resizes, strict=True)
        ]
        start = 0
        while start < len(chunk):  # one batch per run of crops of one size, as without `resizes`
            shape, stop = tuple(chunk[start][2].shape[-2:]), start
            while stop < len(chunk) and tuple(chunk[stop][2].shape[-2:]) == shape:
                stop += 1
            yield WindowBatch(
                shape, [(i, box) for i, box, _ in chunk[start:stop]], [_rows(f[start:stop]) for f in feats]
            )
            start = stop


def _part_features(
    crops_: list[torch.Tensor], extract: Extract, resize: Resize | None
) -> list[tuple[torch.Tensor, int]]:
    """One part's features of crops of any sizes, per crop (output batch, row): one forward pass per
    input size (resized first with `resize`, else per crop size)."""
    inputs = [resize(c) if resize is not None else c for c in crops_]
    groups: dict[tuple[int, int], list[int]] = {}
    for n, x in enumerate(inputs):
        groups.setdefault(tuple(x.shape[-2:]), []).append(n)
    where: list[tuple[torch.Tensor, int]] = [None] * len(inputs)  # type: ignore[list-item]
    for idx in groups.values():
        out = extract(torch.stack([inputs[n] for n in idx]))
        for row, n in enumerate(idx):
            where[n] = (out, row)
    return where


def _rows(where: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """The features of a run of crops: a slice of one output batch when they are consecutive rows of it."""
    first, row = where[0]
    if all(o is first and r == row + n for n, (o, r) in enumerate(where)):
        return first[row : row + len(where)]
    return torch.stack([o[r] for o, r in where])


def blank_canvases(
    sizes: list[tuple[int, int]], labels: list[list[int]], device: torch.device, with_best: bool = False
) -> list[_Canvas]:
    """One empty score canvas per image of (H,W) `sizes`, over that image's `labels` (`union_labels`)."""
    return [_Canvas.blank(len(lab), h, w, device, with_best) for (h, w), lab in zip(sizes, labels, strict=True)]


def match_windows(
    canvases: list[_Canvas],
    wb: WindowBatch,
    vocabs: list[list[PrototypeBank]],
    labels: list[list[int]],
    offsets: list[int],
    with_best: bool = False,
) -> None:
    """The matching half: add a batch's fused crop scores (`_fuse`) to its images' canvases, each
    crop matched against its own image's vocabularies (consecutive crops of one image together)."""
    start = 0
    while start < len(wb.jobs):
        i = wb.jobs[start][0]
        stop = start
        while stop < len(wb.jobs) and wb.jobs[stop][0] == i:
            stop += 1
        fused, best, best_sim = _fuse(wb.features, start, stop, vocabs[i], labels[i], offsets, wb.shape, with_best)
        for j in range(start, stop):
            canvases[i].add(
                wb.jobs[j][1],
                fused[j - start],
                None if best is None else best[j - start],
                None if best_sim is None else best_sim[j - start],
            )
        start = stop


def slide_match_many(
    images: list[torch.Tensor],
    vocabs: list[list[PrototypeBank]],
    extracts: list[Extract],
    offsets: list[int],
    windows: tuple[int, ...] | None = (448, 336),
    stride: int = 224,
    batch: int = 8,
    with_best: bool = False,
    resizes: list[Resize | None] | None = None,
) -> list[tuple[torch.Tensor, list[int], torch.Tensor | None]]:
    """Late fusion over parts and crops: each part's class score maps, averaged over parts, then
    over the sliding windows and the whole image (paper App. C.5; sdov predict.py).

    images: (3,H,W) float RGB in [0,1]; vocabs[i][j]: image i's vocabulary in part j; extracts[j]
    maps crops (B,3,h,w) to part j's features (B,D,h',w') (at the part's own input size); offsets[j]:
    where part j's prototype indices start in the global numbering --explain reports. A label is
    scored in each part by its best prototype there (MISSING where a part has none), upsampled
    (bilinear) to the crop's pixels; crops of the same size from all images share the extractors'
    batches, and each is matched against its own image's vocabularies, so per-image category
    filtering still applies. Returns per image: scores (L,H,W) float32 over `union_labels`, those
    labels, and with `with_best` the winning prototype per label and pixel, (L,H,W) int64 global
    indices: the best-scoring prototype of the part with the highest score, over all crops.
    `resizes`: see `window_features` (crops of all sizes share a part's passes).
    """
    labels = [union_labels(v) for v in vocabs]
    sizes = [(im.shape[1], im.shape[2]) for im in images]
    canvases = blank_canvases(sizes, labels, images[0].device if images else torch.device("cpu"), with_best)
    for wb in window_features(images, extracts, windows, stride, batch, resizes):
        match_windows(canvases, wb, vocabs, labels, offsets, with_best)
    out = []
    for canvas, lab in zip(canvases, labels, strict=True):
        scores, best = canvas.result()
        out.append((scores, lab, best))
    return out


def _fuse(
    feats: list[torch.Tensor],
    start: int,
    stop: int,
    vocabs: list[PrototypeBank],
    labels: list[int],
    offsets: list[int],
    shape: tuple[int, int],
    with_best: bool,
):
    """Mean over parts of the crops' label scores (B,L,h,w) at the crops' size, and the winners."""
    fused = best = best_sim = None
    for f, vocab, offset in zip(feats, vocabs, offsets, strict=True):
        scores, idx = match(f[start:stop], vocab)
        up = F.interpolate(scores, size=shape, mode="bilinear", align_corners=False)
        rows = [labels.index(lab) for lab in vocab.labels]
        full = up.new_full((up.shape[0], len(labels), *shape), MISSING)
        full[:, rows] = up
        fused = full if fused is None else fused + full
        if with_best:  # a part without the label (MISSING) never beats one with it: cosines exceed -1
            idx_up = F.interpolate(idx.float(), size=shape, mode="nearest").long()
            ids = torch.full(full.shape, -1, dtype=torch.long, device=full.device)
            ids[:, rows] = torch.where(idx_up >= 0, idx_up + offset, idx_up)
            if best is None:
                best, best_sim = ids, full
            else:
                better = full > best_sim
                best_sim = torch.where(better, full, best_sim)
                best = torch.where(better, ids, best)
    return fused / len(feats), best, best_sim


def upsample_argmax(
    scores: torch.Tensor,
    height: int,
    width: int,
    best: torch.Tensor | None = None,
    band: int = 256,
    floor: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Bilinear upsampling of scores (L,h,w) to (height,width) and the argmax, in bands of rows.

    Working band by band keeps memory at L×band×width whatever the image size; the result equals
    F.interpolate(..., align_corners=False) followed by argmax. With `floor` (the local index of
    the background) the authors' rule applies: every score ≤ 0 counts as 0 before the argmax, so a
    pixel where no label scores above 0 is background (sdov `predict.py`, threshold 0), its winner
    -1 (a threshold decided, no prototype) and its winning score 0. Returns local labels (H,W)
    int64; given best (L,h,w), the winning label's prototype per pixel (nearest), (H,W) int64; and
    per local label its mean winning (upsampled, floored) score over the pixels it won, (L,)
    float64, NaN where it won none (a result's per-segment score, as Hugging Face's segmentation
    outputs carry one).
    """
    _, h, w = scores.shape
    labels = np.empty((height, width), np.int64)
    winner = np.empty((height, width), np.int64) if best is not None else None
    scale = h / height
    sums = torch.zeros(scores.shape[0], dtype=torch.float64, device=scores.device)
    counts = torch.zeros_like(sums)
    for r0 in range(0, height, band):
        r1 = min(r0 + band, height)
        y = ((torch.arange(r0, r1, device=scores.device, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_min(0)
        y0 = y.floor().long().clamp_max(h - 1)
        y1 = (y0 + 1).clamp_max(h - 1)
        wy = (y - y0).clamp(0, 1).float()[None, :, None]
        rows = scores[:, y0] * (1 - wy) + scores[:, y1] * wy  # (L, band, w)
        full = F.interpolate(rows[None], size=(r1 - r0, width), mode="bilinear", align_corners=False)[0]
        value, lab = full.max(0)
        low = None
        if floor is not None:
            low = value <= 0
            lab = torch.where(low, floor, lab)
            value = value.clamp_min(0)
        labels[r0:r1] = lab.cpu().numpy()
        sums += torch.bincount(lab.flatten(), weights=value.flatten().double(), minlength=sums.numel())
        counts += torch.bincount(lab.flatten(), minlength=sums.numel())
        if best is not None:
            ny = ((torch.arange(r0, r1, device=scores.device) * h) // height).clamp_max(h - 1)
            nx = ((torch.arange(width, device=scores.device) * w) // width).clamp_max(w - 1)
            picked = best[:, ny][:, :, nx]  # (L, band, W) nearest
            won = picked.gather(0, lab[None]).squeeze(0)
            winner[r0:r1] = (won if low is None else torch.where(low, -1, won)).cpu().numpy()
    means = (sums / counts).cpu().numpy()  # 0/0 = NaN for a label that won no pixel
    return labels, winner, means
