"""The local engine: a list of images streamed through one segmenter in this process, a small group at a time.

Each group (`image_batch` images, whose windows share the extractor's batches) is read, segmented and
written before the next is read, so memory does not grow with the inputs; a bad image is recorded and
skipped (`predict_group` retries a failed group image by image, so it fails alone). The Ray engine's
workers segment their groups with the same `predict_group`, so both write the same outputs.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io.images import InputImage, check_segmentable, load_image
from ..io.outputs import FAILURES, JobSummary, OutputWriter, describe

if TYPE_CHECKING:
    from ..io.masks import MaskWriter
    from ..method.stage4_segment.segmenter import Segmentation, Segmenter


def segment_paths(
    segmenter: Segmenter,
    inputs: Iterable[InputImage],
    out_dir: Path,
    overlay: bool = False,
    explainer: Callable[[InputImage, np.ndarray, Segmentation, Path], None] | None = None,
    on_image: Callable[[InputImage, Segmentation | None, str | None], None] | None = None,
    image_batch: int = 4,
    writer: MaskWriter | None = None,
) -> JobSummary:
    """Segment each input into `out_dir/<name>.png` (+ overlays/<name>.jpg, explain/…); skip bad images.

    Inputs are read `image_batch` at a time and segmented together (their windows share the
    extractor's batches); memory is bounded by that group, whatever the number of inputs.
    `on_image(item, segmentation, error)` is called after each input (segmentation None and an error
    message when it failed). `writer` picks the mask format (default: PNG); it is closed at the end.
    """
    out = OutputWriter([c.name for c in segmenter.classes], out_dir, overlay, explainer, on_image, writer)
    stream = iter(inputs)
    while group := list(itertools.islice(stream, max(1, image_batch))):
        loaded: list[tuple[InputImage, np.ndarray, float]] = []
        for item in group:
            t0 = time.perf_counter()
            try:
                image = check_segmentable(load_image(item.path), item.path)
                loaded.append((item, image, time.perf_counter() - t0))
            except FAILURES as e:
                out.failed(item, describe(item, e))
        segs = (
            predict_group(segmenter, [image for _, image, _ in loaded], explainer is not None, out.masks.save_scores)
            if loaded
            else []
        )
        for (item, image, io_time), seg in zip(loaded, segs, strict=True):
            if isinstance(seg, Exception):
                out.failed(item, describe(item, seg))
            else:
                out.write(item, seg, image, io_time)
        del loaded, segs  # the next group replaces this one: memory does not grow with the inputs
    return out.finish()


def predict_group(
    segmenter: Segmenter, images: list[np.ndarray], explain: bool, scores: bool = False
) -> list[Segmentation | Exception]:
    """Segment a group together; if that fails, image by image, so one bad image fails alone."""
    try:
        return segmenter.predict_many(images, explain, scores)
    except FAILURES as e:
        if len(images) == 1:
            return [e]
    out: list[Segmentation | Exception] = []
    for image in images:
        try:
            out.append(segmenter.predict(image, explain, scores))
        except FAILURES as e:
            out.append(e)
    return out
