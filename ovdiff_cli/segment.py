"""The segmenter (paper §3 "Segmentation via prototype matching") and the folder-streaming job.

`Segmenter.predict` runs one image through the steps of OVDiff inference:
1. category pre-filter: the classes CLIP sees in the image (optional);
2. resize so the short side is `short_side` (TCL/OVDiff inference; long side at most 2048/448 of it);
3. sliding-window matching of dense features against the kept classes' prototypes;
4. bilinear upsampling of the label scores to the image size, then argmax.

`segment_paths` streams a list of inputs through it, one image in memory at a time: each image is
read, segmented and written before the next is read, and a bad image is recorded and skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import SegmentConfig
from .errors import OvdiffError
from .filter import CategoryFilter
from .imageio import ImageError, InputImage, load_image, overlay_picture, save_json, save_mask, save_picture
from .matching import assemble_vocabulary, slide_match, upsample_argmax
from .types import ClassPrototypes

LONG_SIDE_RATIO = 2048 / 448  # mmseg's Resize(scale=(2048, 448), keep_ratio=True)


@dataclass
class Segmentation:
    """One image's result.

    labels: (H,W) int32, 0 = background, k = classes[k-1]. winner: (H,W) int32 index of the
    prototype that decided each pixel (`Segmenter.vocab.provenance[i]`), -1 where the background
    was thresholded; only with `explain`. selected: 0-based indices of the classes the filter kept.
    timings: seconds spent in "filter", "features", "matching" and "upsample_io".
    """

    labels: np.ndarray
    selected: list[int]
    timings: dict[str, float]
    winner: np.ndarray | None = None


def working_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the short side at `short_side` and the long side at most LONG_SIDE_RATIO times it."""
    scale = min(short_side / min(height, width), short_side * LONG_SIDE_RATIO / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


class Segmenter:
    """Segments images against a fixed list of classes; build once, call `predict` per image."""

    def __init__(self, hub, classes: list[ClassPrototypes], cfg: SegmentConfig, extractor_spec: str, cache=None,
                 window_batch: int = 8):  # fmt: skip
        if not classes:
            raise OvdiffError("no classes to segment with: give --classes")
        if len(classes) > 254:
            raise OvdiffError(f"{len(classes)} classes given; masks hold at most 254 (palette PNG indices)")
        self.hub, self.cfg, self.classes = hub, cfg, classes
        self.extractor = hub.extractor(extractor_spec)
        self.vocab = assemble_vocabulary(
            classes, cfg.proto_kinds, background=cfg.background, stuff_filter=cfg.stuff_filter,
            stuff_threshold=cfg.stuff_threshold, bg_threshold=None if cfg.bg_prototypes else cfg.fg_threshold,
        )  # fmt: skip
        self._device_vocab = self.vocab.to(hub.device)
        self.filter = (
            CategoryFilter(hub.scorer(), cache, [c.name for c in classes], cfg.eta, cfg.filter_size)
            if cfg.use_filter and len(classes) > 1
            else None
        )
        self.window_batch = window_batch

    def _sync(self) -> None:
        if self.hub.device.type == "cuda":
            torch.cuda.synchronize(self.hub.device)

    def predict(self, image: np.ndarray, explain: bool = False) -> Segmentation:
        """image HxWx3 uint8 RGB → Segmentation (labels at the image's size)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
        times = {"filter": 0.0, "features": 0.0, "matching": 0.0, "upsample_io": 0.0}
        height, width = image.shape[:2]
        # 1. category pre-filter
        t0 = time.perf_counter()
        selected = self.filter.select(image) if self.filter is not None else list(range(len(self.classes)))
        vocab = self._device_vocab.restrict(selected)
        times["filter"] = time.perf_counter() - t0
        # 2. resize to the working size
        h, w = working_size(height, width, self.cfg.short_side)
        work = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR)) if (h, w) != (height, width) else image
        x = torch.from_numpy(np.ascontiguousarray(work)).to(self.hub.device).permute(2, 0, 1).float() / 255

        # 3. sliding-window matching (feature time measured apart)
        def extract(crops: torch.Tensor) -> torch.Tensor:
            t = time.perf_counter()
            out = self.extractor(crops)
            self._sync()
            times["features"] += time.perf_counter() - t
            return out

        t0 = time.perf_counter()
        windows = tuple(self.cfg.windows) if self.cfg.slide else None
        scores, best = slide_match(x, extract, vocab, self.extractor.stride, windows, self.cfg.stride,
                                   self.window_batch, with_best=explain)  # fmt: skip
        self._sync()
        times["matching"] = time.perf_counter() - t0 - times["features"]
        # 4. upsample to the image size, argmax
        t0 = time.perf_counter()
        local, winner = upsample_argmax(scores, height, width, best)
        labels = np.asarray(vocab.labels, dtype=np.int32)[local]
        times["upsample_io"] = time.perf_counter() - t0
        return Segmentation(labels, selected, times, None if winner is None else winner.astype(np.int32))


# --------------------------------------------------------------------------- the folder job


@dataclass
class JobSummary:
    """What a `segment_paths` run did: images written, failures (input, reason), time spent."""

    written: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.written if self.written else float("nan")


def legend(names: list[str], background: bool) -> dict:
    """The classes.json legend: palette index → class name and VOC colour."""
    from .palette import voc_palette

    pal = voc_palette()
    entries = ([("background", 0)] if background else []) + [(n, k + 1) for k, n in enumerate(names)]
    return {
        "format": "palette PNG: pixel value = index below; colours are the PASCAL VOC palette",
        "labels": [{"index": i, "name": n, "color": [int(c) for c in pal[i]]} for n, i in entries],
    }


def segment_paths(
    segmenter: Segmenter,
    inputs: Iterable[InputImage],
    out_dir: Path,
    overlay: bool = False,
    explainer: Callable[[InputImage, np.ndarray, Segmentation, Path], None] | None = None,
    on_image: Callable[[InputImage, str | None], None] | None = None,
) -> JobSummary:
    """Segment each input into `out_dir/<name>.png` (+ overlays/<name>.jpg, explain/…); skip bad images.

    `on_image(item, error)` is called after each input (error None when it was written).
    """
    out_dir = Path(out_dir)
    names = {0: "background", **{k + 1: c.name for k, c in enumerate(segmenter.classes)}}
    summary = JobSummary(timings={k: 0.0 for k in ("filter", "features", "matching", "upsample_io")})
    start = time.perf_counter()
    for item in inputs:
        error = None
        try:
            t0 = time.perf_counter()
            image = load_image(item.path)
            io_time = time.perf_counter() - t0
            seg = segmenter.predict(image, explain=explainer is not None)
            t0 = time.perf_counter()
            save_mask(seg.labels, out_dir / f"{item.name}.png")
            if overlay:
                save_picture(overlay_picture(image, seg.labels, names), out_dir / "overlays" / f"{item.name}.jpg")
            if explainer is not None:
                explainer(item, image, seg, out_dir / "explain")
            seg.timings["upsample_io"] += io_time + time.perf_counter() - t0
            for k, v in seg.timings.items():
                summary.timings[k] = summary.timings.get(k, 0.0) + v
            summary.written += 1
        except (ImageError, OSError, ValueError, torch.OutOfMemoryError) as e:
            error = str(e) if isinstance(e, ImageError) else f"{item.path}: {type(e).__name__}: {e}"
            summary.failures.append((str(item.path), error))
            if isinstance(e, torch.OutOfMemoryError):
                torch.cuda.empty_cache()
        if on_image is not None:
            on_image(item, error)
    summary.seconds = time.perf_counter() - start
    return summary


def save_legend(names: list[str], background: bool, out_dir: Path) -> Path:
    path = Path(out_dir) / "classes.json"
    save_json(legend(names, background), path)
    return path
