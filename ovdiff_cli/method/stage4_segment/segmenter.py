"""Paper §3 "Segmentation via prototype matching": the segmenter.

`Segmenter.predict` runs one image through the steps of OVDiff inference:
1. category pre-filter: the thing classes CLIP sees in the working image, plus every stuff class (optional);
2. resize so the short side is `short_side` (Lanczos, as the authors: `targets.working_image`);
3. matching: every sliding window and the whole image, resized to each extractor part's own input
   size, are matched against that part's prototypes of the kept classes; the per-part class score
   maps are averaged (late fusion), then averaged over the crops;
4. bilinear upsampling of the label scores to the image size, then the argmax with every score ≤ 0
   counted as 0 (ties to the background: where no label scores above 0, the authors' background).

`encode_image` runs only the backbones' half (the image side of step 1, and step 3's features) and
`Segmenter.predict_encoded` the rest, so one image's features serve any number of vocabularies.

The folder job around it (reading images, writing masks, engines, resuming) is `engines/folder.py`:
this module reads and writes no file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...config import SegmentConfig
from ...errors import OvdiffError
from ...types import ClassParts, ImageTextScorer, TextMemo, VocabMemo
from ..stage3_filter.prefilter import CategoryFilter
from .bank import NO_SCORE, Provenance, assemble_vocabulary
from .matching import (
    WindowBatch,
    blank_canvases,
    match_windows,
    slide_match_many,
    union_labels,
    upsample_argmax,
    window_features,
)
from .stream import Read, StreamedVocabulary
from .targets import working_image

if TYPE_CHECKING:
    from ..stage2_prototypes.features import Part

    Refiner = Callable[[np.ndarray, torch.Tensor], torch.Tensor]  # (image HxWx3 uint8, scores (L,h,w)) → refined scores


@dataclass
class Segmentation:
    """One image's result.

    labels: (H,W) int32, 0 = background, k = classes[k-1]. winner: (H,W) int32 index, in the full
    vocabulary (all parts, numbered part after part), of the prototype that decided each pixel
    (`Segmenter.source(i)`), -1 where a threshold decided the background (no label scored above 0,
    or none passed --no-bg-protos' fg threshold); only with `explain`. selected: 0-based indices of the classes the filter kept.
    timings: seconds spent in "filter", "features", "matching" and "upsample_io". scores: (K+1,h,w)
    float32 at the working size (`targets.working_size`), the crop-averaged late-fused score of label k (per part
    the cosine of its best prototype, -1 in a part without any), NO_SCORE (-2) for labels not scored
    (filtered out, or no background); only with `scores`. stats: label present → (pixels, mean
    winning score over them), as a result lists its segments (Ray workers send them too).
    """

    labels: np.ndarray
    selected: list[int]
    timings: dict[str, float]
    winner: np.ndarray | None = None
    scores: np.ndarray | None = None
    stats: dict[int, tuple[int, float]] = field(default_factory=dict)


@dataclass
class EncodedImage:
    """A target image with its backbone work done, to be matched against any vocabulary.

    image: HxWx3 uint8 RGB; work_size: (h,w) the image was resized to; windows: every part's
    features per crop batch (on the device), in the order `slide_match_many` forms them;
    embedding: (E,) the filter's image embedding (None without the filter); parts: the extractor
    parts' names, in spec order; settings: the SegmentConfig fields that shaped the crops,
    checked against the matcher's.
    """

    image: np.ndarray
    work_size: tuple[int, int]
    windows: list[WindowBatch]
    embedding: torch.Tensor | None
    parts: tuple[str, ...]
    settings: tuple
    seconds: dict[str, float]


def _window_settings(cfg: SegmentConfig) -> tuple:
    return (cfg.short_side, cfg.slide, tuple(cfg.windows), cfg.stride, cfg.filter_size)


class Segmenter:
    """Segments images against a fixed list of classes; build once, call `predict` per image.

    parts: the extractor parts (features.Part, in spec order) the classes' prototypes were built in;
    one vocabulary per part (`vocabs`) is matched on that part's own features, and prototypes are
    numbered globally (part after part) for --explain: `source(i)`. scorer: the category filter's
    image/text scorer (None: no filter, whatever `cfg.use_filter` says); texts: where the filter's
    text embeddings are kept between runs (`types.TextMemo`, e.g. the cache; None: memory only).
    refiner: `refine.PamrRefiner` or `RegionRefiner` (None: the paper). `compose.Stages.segmenter` builds one for a run.

    Classes given as heads (`engines.vocab.load_heads`: row counts, no arrays) with `read` (a class part's
    id → its arrays) are matched as `StreamedVocabulary`s: each image reads only the classes the filter
    keeps, so memory does not grow with the vocabulary, and the labels are those of the classes in memory.
    `memo` keeps what is computed once per vocabulary (the stuff scores, the filter's class-prompt matrix) under
    the vocabulary's id.
    """

    def __init__(
        self,
        parts: list[Part],
        classes: list[ClassParts],
        cfg: SegmentConfig,
        device: torch.device,
        scorer: ImageTextScorer | None = None,
        texts: TextMemo | None = None,
        window_batch: int | None = None,
        merge_crops: bool | None = None,
        refiner: Refiner | None = None,
        read: Read | None = None,
        memo: VocabMemo | None = None,
    ):
        if not classes:
            raise OvdiffError("no classes to segment with")
        names = [p.name for p in parts]
        for c in classes:
            if set(names) - set(c.parts):
                raise OvdiffError(
                    f"class {c.name!r} has no prototypes for part(s) {', '.join(sorted(set(names) - set(c.parts)))}"
                )
        self.cfg, self.device, self.parts = cfg, device, parts
        heads = all(p.rows and not p.fg for c in classes for p in c.parts.values())
        if heads and read is None:
            raise OvdiffError("classes without their prototypes (heads) need a cache to read them from")
        settings = {
            "kinds": cfg.proto_kinds,
            "background": cfg.background,
            "stuff_filter": cfg.stuff_filter,
            "stuff_threshold": cfg.stuff_threshold,
            "bg_threshold": None if cfg.bg_prototypes else cfg.fg_threshold,
        }
        self.vocabs = [
            StreamedVocabulary([c.parts[n] for c in classes], read, memo=memo, device=device, **settings)
            if heads
            else assemble_vocabulary([c.parts[n] for c in classes], **settings)
            for n in names
        ]
        # what explanations read of a class (name, kind, ids, sources), without its arrays: the vocabularies hold
        # the prototypes, so a caller that lets go of `classes` keeps one copy (1,000 classes: 4.5 GiB, not 9)
        self.classes = (
            list(classes)  # heads hold no arrays already
            if heads
            else [
                ClassParts(c.name, c.kind, {n: replace(p, fg={}, bg={}) for n, p in c.parts.items()}) for c in classes
            ]
        )
        sizes = [len(v.bank or v) for v in self.vocabs]
        self.offsets = [sum(sizes[:j]) for j in range(len(sizes))]
        self._device_vocabs = [v.to(device) for v in self.vocabs]
        stuff = [c.kind == "stuff" for c in classes]
        self.filter = (  # stuff classes bypass it: with fewer than two things there is nothing to choose
            CategoryFilter(scorer, texts, [c.name for c in classes], cfg.eta, cfg.filter_size, stuff=stuff, vocab=memo)
            if scorer is not None and cfg.use_filter and stuff.count(False) > 1
            else None
        )
        # On a GPU all crops of a chunk (windows of both sizes and the whole image) share each part's
        # forward passes: one launch of a backbone per chunk instead of one per crop size. On a CPU
        # the passes stay per crop size (the same speed there, and the goldens' batches).
        self.merge_crops = device.type == "cuda" if merge_crops is None else merge_crops
        self.window_batch = window_batch if window_batch is not None else (32 if self.merge_crops else 8)
        self.refiner = refiner

    def _resizes(self) -> list | None:
        return [p.resize for p in self.parts] if self.merge_crops else None

    def source(self, index: int) -> tuple[str, Provenance]:
        """(part, provenance) of prototype `index` in the global numbering of `Segmentation.winner`."""
        for j in reversed(range(len(self.parts))):
            if index >= self.offsets[j]:
                return self.parts[j].name, self.vocabs[j].source(index - self.offsets[j])
        raise IndexError(index)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def predict(self, image: np.ndarray, explain: bool = False, scores: bool = False) -> Segmentation:
        """image HxWx3 uint8 RGB → Segmentation (labels at the image's size)."""
        return self.predict_many([image], explain, scores)[0]

    def predict_many(self, images: list[np.ndarray], explain: bool = False, scores: bool = False) -> list[Segmentation]:
        """Several HxWx3 uint8 RGB images at once: their windows share the extractor's batches.

        Results equal `predict` image by image; the shared feature and matching time is split
        evenly between the images in their timings. `scores` keeps each image's label scores.
        """
        for image in images:
            _check_image(image)
        times = [{"filter": 0.0, "features": 0.0, "matching": 0.0, "upsample_io": 0.0} for _ in images]
        selected, vocabs, xs = [], [], []
        for image, t in zip(images, times, strict=True):
            # 2. the working image, which step 1 sees too (as the authors' filter does)
            work = working_image(image, self.cfg.short_side)
            xs.append(to_tensor(work, self.device))
            # 1. category pre-filter
            t0 = time.perf_counter()
            keep = self.filter.select(work) if self.filter is not None else list(range(len(self.classes)))
            selected.append(keep)
            vocabs.append([v.restrict(keep) for v in self._device_vocabs])
            t["filter"] = time.perf_counter() - t0

        # 3. each part on every window and the whole image, at its own input size (feature time measured apart)
        feature_time = 0.0

        def timed(part):
            def extract(crops: torch.Tensor) -> torch.Tensor:
                nonlocal feature_time
                t = time.perf_counter()
                out = part(crops) if self.merge_crops else part.window(crops)
                self._sync()
                feature_time += time.perf_counter() - t
                return out

            return extract

        t0 = time.perf_counter()
        windows = tuple(self.cfg.windows) if self.cfg.slide else None
        results = slide_match_many(
            xs,
            vocabs,
            [timed(p) for p in self.parts],
            self.offsets,
            windows,
            self.cfg.stride,
            self.window_batch,
            with_best=explain,
            resizes=self._resizes(),
        )
        self._sync()
        matching_time = time.perf_counter() - t0 - feature_time
        # 4. upsample to each image's size, argmax
        out = []
        for image, (score, labels, best), keep, t in zip(images, results, selected, times, strict=True):
            t["features"] = feature_time / len(images)
            t["matching"] = matching_time / len(images)
            out.append(self._finish(image, score, labels, best, keep, t, scores))
        return out

    def _finish(self, image, score, labels, best, keep, t, keep_scores: bool) -> Segmentation:
        """Step 4: upsample to the image's size, argmax, labels (`union_labels`) in the full class list.

        With a background (`cfg.background`), a pixel where no label scores above 0 is background,
        as the authors label it (`upsample_argmax`'s floor); without one (the no-background
        benchmarks, paper A.3) every pixel takes its best class.

        With a refiner (`--refine`, beyond the paper) the scores are refined first; the kept scores
        and the best prototype per label (--explain) are then those of the refined map."""
        if self.refiner is not None:
            t0 = time.perf_counter()
            score = self.refiner(image, score)
            self._sync()
            t["refine"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.cfg.background and (
            not labels or labels[0] != 0
        ):  # no bg prototype left: background still wins where nothing scores > 0
            labels = [0, *labels]
            score = torch.cat([score.new_full((1, *score.shape[1:]), NO_SCORE), score])
            best = None if best is None else torch.cat([best.new_full((1, *best.shape[1:]), -1), best])
        floor = 0 if self.cfg.background else None  # labels are sorted: the background is local label 0
        local, winner, means = upsample_argmax(score, image.shape[0], image.shape[1], best, floor=floor)
        full = None
        if keep_scores:
            full = np.full((len(self.classes) + 1, *score.shape[1:]), NO_SCORE, np.float32)
            full[labels] = score.float().cpu().numpy()
        areas = np.bincount(local.ravel(), minlength=len(means))
        stats = {int(labels[j]): (int(areas[j]), float(means[j])) for j in np.flatnonzero(areas).tolist()}
        labels = np.asarray(labels, dtype=np.int32)[local]
        t["upsample_io"] = time.perf_counter() - t0
        return Segmentation(labels, keep, t, None if winner is None else winner.astype(np.int32), full, stats)

    # -- encode once, match many (paper §3: the backbones see an image once, whatever the vocabulary)

    def predict_encoded(self, enc: EncodedImage, explain: bool = False, scores: bool = False) -> Segmentation:
        """`predict` on an encoded image, running no backbone but the filter's text side (cached)."""
        parts = tuple(p.name for p in self.parts)
        if enc.parts != parts or enc.settings != _window_settings(self.cfg):
            raise OvdiffError(
                f"image encoded with extractor {'+'.join(enc.parts)} and window settings {enc.settings}; these classes "
                f"use {'+'.join(parts)} and {_window_settings(self.cfg)}: encode it with the same settings"
            )
        t = {"filter": 0.0, "features": 0.0, "matching": 0.0, "upsample_io": 0.0}
        t0 = time.perf_counter()
        if self.filter is not None:
            embedding = enc.embedding
            if embedding is None:  # encoded without the filter: its input is the working image
                embedding = self.filter.embed(working_image(enc.image, self.cfg.short_side))
            keep = self.filter.select(enc.image, embedding)
        else:
            keep = list(range(len(self.classes)))
        vocabs = [v.restrict(keep) for v in self._device_vocabs]
        labels = union_labels(vocabs)
        t["filter"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        canvas = blank_canvases([enc.work_size], [labels], self.device, explain)
        for wb in enc.windows:
            match_windows(canvas, wb, [vocabs], [labels], self.offsets, explain)
        score, best = canvas[0].result()
        self._sync()
        t["matching"] = time.perf_counter() - t0
        return self._finish(enc.image, score, labels, best, keep, t, scores)


def to_tensor(work: np.ndarray, device: torch.device) -> torch.Tensor:
    """A working image (HxWx3 uint8, `targets.working_image`) → (3,h,w) float32 in [0,1] on `device`."""
    return torch.from_numpy(np.require(work, requirements=["C", "W"])).to(device).permute(2, 0, 1).float() / 255


def encode_image(
    parts: list[Part],
    scorer: ImageTextScorer | None,
    cfg: SegmentConfig,
    image: np.ndarray,
    device: torch.device,
    window_batch: int | None = None,
) -> EncodedImage:
    """Run the backbones on one HxWx3 uint8 image, as `Segmenter.predict` does: the filter's image
    embedding (with a scorer) and every crop's features in each part (`Part.window`, at the part's
    own input size), for `Segmenter.predict_encoded` with any classes built in those parts."""
    _check_image(image)
    t0 = time.perf_counter()
    work = working_image(image, cfg.short_side)
    embedding = None
    if scorer is not None and cfg.use_filter:
        from ..stage3_filter.prefilter import image_embedding

        embedding = image_embedding(scorer, work, cfg.filter_size)
    t1 = time.perf_counter()
    x = to_tensor(work, device)
    windows = tuple(cfg.windows) if cfg.slide else None
    merge = device.type == "cuda"  # as `Segmenter` batches crops on this device
    batches = list(
        window_features(
            [x],
            [p if merge else p.window for p in parts],
            windows,
            cfg.stride,
            window_batch or (32 if merge else 8),
            [p.resize for p in parts] if merge else None,
        )
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return EncodedImage(
        image,
        (x.shape[1], x.shape[2]),
        batches,
        embedding,
        tuple(p.name for p in parts),
        _window_settings(cfg),
        {"filter": t1 - t0, "features": time.perf_counter() - t1},
    )


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
