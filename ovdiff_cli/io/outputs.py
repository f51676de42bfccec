"""What the folder job writes for each image, whatever engine segmented it: the mask in its format, the
overlay and explanation pictures, and the job's summary (`segment --json`'s report).

Each image's files appear together, only when all are complete (`io.images.staged`); an image whose
outputs cannot be written is recorded as failed, and the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .images import ImageError, InputImage, load_image, overlay_picture, save_picture, staged
from .masks import MaskWriter

if TYPE_CHECKING:
    from ..method.stage4_segment.segmenter import Segmentation

FAILURES = (ImageError, OSError, ValueError, torch.OutOfMemoryError)


def describe(item: InputImage, e: Exception) -> str:
    """One line on why `item` failed (a device out of memory is emptied first, so the next group may fit)."""
    if isinstance(e, torch.OutOfMemoryError):
        torch.cuda.empty_cache()
    return str(e) if isinstance(e, ImageError) else f"{item.path}: {type(e).__name__}: {e}"


@dataclass
class JobSummary:
    """What a `segment_paths` run did: images written, failures (input, reason), time spent, and per
    written image its input, mask file and segments (`image_record`)."""

    written: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    images: list[dict] = field(default_factory=list)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.written if self.written else float("nan")


class OutputWriter:
    """Writes each image's outputs into `out_dir` and keeps the job's summary, whatever engine segmented it.

    `on_image(item, segmentation, error)` is called after each input (segmentation None and an error
    message when it failed). `masks` writes the masks in their format (default: PNG); closed by `finish`.
    """

    def __init__(
        self,
        class_names: list[str],
        out_dir: Path,
        overlay: bool = False,
        explainer: Callable[[InputImage, np.ndarray, Segmentation, Path], None] | None = None,
        on_image: Callable[[InputImage, Segmentation | None, str | None], None] | None = None,
        masks: MaskWriter | None = None,
    ):
        self.out_dir, self.overlay, self.explainer, self.on_image = Path(out_dir), overlay, explainer, on_image
        self.masks = masks or MaskWriter(self.out_dir, len(class_names))
        self.names = {0: "background", **{k + 1: n for k, n in enumerate(class_names)}}
        self.summary = JobSummary(timings=dict.fromkeys(("filter", "features", "matching", "upsample_io"), 0.0))
        self._start = time.perf_counter()

    def failed(self, item: InputImage, error: str) -> None:
        self.summary.failures.append((str(item.path), error))
        if self.on_image is not None:
            self.on_image(item, None, error)

    def write(self, item: InputImage, seg: Segmentation, image: np.ndarray | None = None, io_time: float = 0.0) -> None:
        """The mask (and overlay, explanation) of one image; `image` is read again if they need it and it is None."""
        try:
            t0 = time.perf_counter()
            with staged():  # the image's files appear together, only when all are complete
                self.masks.write(item.name, seg.labels, seg.scores, output_file_name(item), seg.stats)
                if image is None and (self.overlay or self.explainer is not None):
                    image = load_image(item.path)
                if self.overlay:
                    save_picture(
                        overlay_picture(image, seg.labels, self.names), self.out_dir / "overlays" / f"{item.name}.jpg"
                    )
                if self.explainer is not None:
                    self.explainer(item, image, seg, self.out_dir / "explain")
            seg.timings["upsample_io"] += io_time + time.perf_counter() - t0
        except FAILURES as e:
            self.masks.discard(item.name)
            self.failed(item, describe(item, e))
            return
        for k, v in seg.timings.items():
            self.summary.timings[k] = self.summary.timings.get(k, 0.0) + v
        self.summary.written += 1
        self.summary.images.append(image_record(item, self.masks.path(item.name), seg, self.names))
        if self.on_image is not None:
            self.on_image(item, seg, None)

    def finish(self) -> JobSummary:
        self.masks.close()
        self.summary.seconds = time.perf_counter() - self._start
        return self.summary


def output_file_name(item: InputImage) -> str:
    """The image's file name with its extension, under the folder its outputs mirror (COCO's file_name)."""
    return (Path(item.name).parent / item.path.name).as_posix()


def image_record(item: InputImage, mask: Path, seg: Segmentation, names: dict[int, str]) -> dict:
    """One image of `segment --json`: input, mask file, classes present, and per label present (background
    too) its area in pixels and mean winning score (None where unknown)."""
    areas = np.bincount(seg.labels.ravel())
    present = np.flatnonzero(areas).tolist()
    segments = [
        {
            "label": names[k],
            "index": k,
            "area": int(areas[k]),
            "score": round(seg.stats[k][1], 6) if k in seg.stats else None,
        }
        for k in present
    ]
    return {
        "input": str(item.path),
        "mask": str(mask),
        "classes": [names[k] for k in present if k > 0],
        "segments": segments,
    }


def job_report(
    summary: JobSummary, items: list[InputImage], names: list[str], out_dir: Path, fmt: str, skipped: int = 0
) -> dict:
    """`ovdiff segment --json`: the end-of-run table as one JSON-ready dict (seconds per written image);
    images: those this run took, skipped: those --skip-existing found done."""
    per = summary.written or 1
    return {
        "out": str(out_dir),
        "format": fmt,
        "legend": str(Path(out_dir) / "classes.json"),
        "classes": list(names),
        "images": len(items),
        "skipped": skipped,
        "written": summary.written,
        "failed": len(summary.failures),
        "failures": [{"input": path, "error": error} for path, error in summary.failures],
        "seconds": summary.seconds,
        "seconds_per_image": summary.seconds_per_image if summary.written else None,
        "stage_seconds_per_image": {k: v / per for k, v in summary.timings.items()},
        "per_image": summary.images,
    }
