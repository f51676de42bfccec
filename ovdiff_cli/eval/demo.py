"""The offline demo: the whole method end to end on the procedural world, scored under eval's protocol.

Held-out scenes with known truth are drawn in the VOC layout, the world's classes are built from
procedurally generated support sets, the scenes are segmented into palette PNGs with overlays, and
those saved masks are scored exactly as `ovdiff eval --pred` scores any tool's masks. The first
scenes, their masks and their truth side by side make `figure.png` (the README's picture).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import OvdiffError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..store.cache import Cache
    from ..config import ProtoConfig, SampleConfig, SegmentConfig
    from .datasets import SegDataset
    from .evaluate import EvalResult
    from ..io.outputs import JobSummary
    from ..types import StageSource
    from ..engines.vocab import OnEvent


@dataclass
class DemoRun:
    """Where the demo wrote its data, masks and report, and how the masks scored."""

    data: Path  # the VOC tree (data/VOC2012) and data/classes.txt
    masks: Path  # <id>.png, classes.json, overlays/
    report: Path  # report/report.html (metrics.json beside it)
    dataset: SegDataset
    result: EvalResult
    summary: JobSummary
    figure: Path  # figure.png: image | mask | truth for the first scenes


def run_demo(
    root: Path,
    stages: StageSource,
    cache: Cache,
    n_images: int,
    seed: int,
    sample_cfg: SampleConfig,
    proto_cfg: ProtoConfig,
    seg_cfg: SegmentConfig,
    on_event: OnEvent | None = None,
    on_image: Callable[..., None] | None = None,
) -> DemoRun:
    """Draw `n_images` scenes under `root`/data, build the classes, segment into `root`/masks, score them.

    on_event: as `ensure_classes`; on_image: as `segment_paths`.
    """
    from .datasets import load_dataset
    from .evaluate import evaluate, predictions_from_dir, protocol, write_report
    from ..io.images import discover
    from ..procedural import LABELLED, write_voc
    from ..engines.local import segment_paths
    from ..io.legend import save_legend
    from ..engines.vocab import ensure_classes

    if stages.specs.preset.weights != "procedural":
        raise OvdiffError(f"the demo needs the procedural world, whose truth is known (got preset {stages.specs.preset.name!r})")
    if n_images < 1:
        raise OvdiffError(f"the demo needs at least 1 image, got {n_images}")
    data, masks = Path(root) / "data", Path(root) / "masks"
    write_voc(data, n_images, seed)
    names = list(LABELLED)
    classes = ensure_classes(cache, stages, names, seed, sample_cfg, proto_cfg, on_event=on_event)
    segmenter = stages.segmenter(classes, seg_cfg, proto_cfg.extractor, cache)
    save_legend(names, True, masks)
    summary = segment_paths(segmenter, discover([str(data / "VOC2012" / "JPEGImages")]), masks, overlay=True,
                            on_image=on_image)  # fmt: skip
    if summary.failures:
        raise OvdiffError(f"{len(summary.failures)} demo image(s) failed: {summary.failures[0][1]}")
    dataset = load_dataset("voc", data, custom_classes=names)
    result = evaluate(dataset, predictions_from_dir(masks, dataset))  # the saved masks, under eval's protocol
    record = protocol(dataset, [seed], stages.specs.preset.name, stages.specs.identity(), sample_cfg, proto_cfg, seg_cfg,
                      predictions=str(masks))  # fmt: skip
    _, report = write_report(result, Path(root) / "report", dataset, run_protocol=record,
                             seconds_per_image=summary.seconds_per_image)  # segmenting, not reading the masks back
    from ..io.images import save_picture

    figure = Path(root) / "figure.png"
    save_picture(demo_figure(dataset, masks), figure)
    return DemoRun(data, masks, report, dataset, result, summary, figure)


def demo_figure(dataset: SegDataset, masks: Path, rows: int = 3) -> np.ndarray:
    """The first `rows` scenes, each as image | ovdiff's mask | ground truth (VOC colours, black =
    background, cream = ignored boundary), white gaps between panels → HxWx3 uint8."""
    from PIL import Image

    from ..io.images import load_image
    from ..io.palette import colorize

    lines = []
    for i in range(min(rows, len(dataset))):
        item = dataset[i]
        with Image.open(masks / f"{item.id}.png") as m:
            mask = np.asarray(m)
        panels = [load_image(item.info.image_path), colorize(mask), colorize(item.label)]
        gap = np.full((panels[0].shape[0], 12, 3), 255, np.uint8)
        lines.append(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1))
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines]
    gap = np.full((12, width, 3), 255, np.uint8)
    return np.concatenate([x for line in lines for x in (line, gap)][:-1], axis=0)
