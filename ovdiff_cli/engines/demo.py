"""The offline demo: the whole method end to end on the procedural world, scored under eval's protocol.

Held-out scenes with known truth are drawn in the VOC layout, the world's classes are built from
procedurally generated support sets, the scenes are segmented into palette PNGs with overlays by
`ovdiff segment`'s folder job (`engines.folder`), and those saved masks are scored exactly as
`ovdiff eval --pred` scores any tool's masks. The first scenes, their masks and their truth side by
side make `figure.png` (the README's picture).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import OvdiffError
from ..limits import in_range

if TYPE_CHECKING:
    from ..eval.datasets import SegDataset
    from ..eval.evaluate import EvalResult
    from ..io.outputs import JobSummary
    from .folder import OnEvent, OnImage, Session


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
    session: Session, root: Path, n_images: int, on_event: OnEvent | None = None, on_image: OnImage | None = None
) -> DemoRun:
    """Draw `n_images` scenes under `root`/data, build the classes and segment the scenes into `root`/masks
    (the folder job of `ovdiff segment`, with overlays), score the saved masks and draw the figure.

    session: a pipeline of the procedural preset (`api.Pipeline`); on_event, on_image: as `segment_folder`'s.
    """
    from ..eval.datasets import load_dataset
    from ..eval.evaluate import evaluate, predictions_from_dir, protocol
    from ..eval.report import write_report
    from ..io.images import save_picture
    from ..io.outdir import check_out_dir
    from ..procedural import LABELLED, write_voc
    from .folder import FolderJob, segment_folder

    specs = session.stages.specs
    if specs.preset.weights != "procedural":
        raise OvdiffError(
            f"the demo needs the procedural world, whose truth is known (got preset {specs.preset.name!r})"
        )
    in_range("images", n_images)
    root = check_out_dir(root, "the demo")
    data, masks = root / "data", root / "masks"
    seed = session.run_config.seed
    write_voc(data, n_images, seed)
    names = list(LABELLED)
    done = segment_folder(
        session, names, [str(data / "VOC2012" / "JPEGImages")], masks, FolderJob(overlay=True), on_event, on_image
    )
    summary = done.summary
    if summary.failures:
        raise OvdiffError(f"{len(summary.failures)} demo image(s) failed: {summary.failures[0][1]}")
    dataset = load_dataset("voc", data, custom_classes=names)
    result = evaluate(dataset, predictions_from_dir(masks, dataset))  # the saved masks, under eval's protocol
    record = protocol(
        dataset,
        [seed],
        specs.preset.name,
        specs.identity(),
        session.sample_config,
        session.proto_config,
        session.segment_config,
        predictions=str(masks),
    )
    _, report = write_report(
        result, root / "report", dataset, run_protocol=record, seconds_per_image=summary.seconds_per_image
    )  # segmenting, not reading the masks back
    figure = root / "figure.png"
    save_picture(demo_figure(dataset, masks), figure)
    return DemoRun(data, masks, report, dataset, result, summary, figure)


COLUMNS = ("input", "ovdiff's mask", "ground truth")
IGNORED = "ignored boundary"


def demo_figure(dataset: SegDataset, masks: Path, rows: int = 3) -> np.ndarray:
    """The first `rows` scenes, each as image | ovdiff's mask | ground truth (VOC colours), white gaps
    between panels, under the columns' titles and above a colour key (background black, each class,
    the ignored boundary cream) → HxWx3 uint8: the picture reads without its caption."""
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
    panel_width = (lines[0].shape[1] - 24) // 3
    key = [(tuple(int(c) for c in colorize(np.array(k))), name) for k, name in enumerate(dataset.classes)]
    key.append((tuple(int(c) for c in colorize(np.array(255))), IGNORED))
    body = np.concatenate([x for line in lines for x in (line, gap)][:-1], axis=0)
    return np.concatenate([titles(COLUMNS, panel_width, 12, width), body, colour_key(key, width)], axis=0)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def titles(names: tuple[str, ...], panel_width: int, gap: int, width: int, size: int = 16) -> np.ndarray:
    """A white strip with each name centred over its column (columns `panel_width` wide, `gap` apart)."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, size + 12), (255, 255, 255))
    draw, font = ImageDraw.Draw(strip), _font(size)
    for k, name in enumerate(names):
        centre = k * (panel_width + gap) + panel_width / 2
        draw.text((centre - font.getlength(name) / 2, 3), name, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def colour_key(entries: list[tuple[tuple[int, int, int], str]], width: int, size: int = 14) -> np.ndarray:
    """A white strip of swatches and names, left to right, wrapped to `width`."""
    from PIL import Image, ImageDraw

    font, line = _font(size), size + 10
    placed, x, y = [], 6, 8
    for colour, name in entries:
        room = size + 6 + font.getlength(name) + 16
        if x + room > width and x > 6:
            x, y = 6, y + line
        placed.append((x, y, colour, name))
        x += room
    strip = Image.new("RGB", (width, y + line + 4), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for x, y, colour, name in placed:
        draw.rectangle([x, y, x + size, y + size], fill=colour, outline=(90, 90, 90))
        draw.text((x + size + 6, y - 1), name, fill=(0, 0, 0), font=font)
    return np.asarray(strip)
