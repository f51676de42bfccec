"""The report of an evaluation: metrics.json (`metrics_document`), and report.html with the per-class IoU bars, the
confusion picture and the best and worst images as overlays (`write_report`)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..classnames import IGNORE_INDEX
from ..io.palette import colorize
from .datasets import SegDataset, load_image
from .evaluate import NO_CLASS, EvalResult, aggregate, json_number
from .paper import NOT_COMPARABLE, paper_reference

if TYPE_CHECKING:
    pass


PANEL_WIDTH = 256  # px of each half of an overlay in the report (keeps the HTML small)


def _display(labels: np.ndarray, has_background: bool, ignore: int = IGNORE_INDEX) -> np.ndarray:
    """Dataset indices → VOC palette indices as `ovdiff segment` writes them (class k of a list
    without background is colour k+1), so colours agree across voc and voc20; no class and the
    ground truth's `ignore` value become 255."""
    out = np.asarray(labels).astype(np.int64)
    out[(out == NO_CLASS) | (out == ignore)] = IGNORE_INDEX
    if not has_background:
        out = np.where(out == IGNORE_INDEX, IGNORE_INDEX, out + 1)
    return out


def overlay(
    image: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray,
    has_background: bool,
    alpha: float = 0.5,
    ignore: int = IGNORE_INDEX,
) -> np.ndarray:
    """HxWx3 image blended with the coloured prediction (left) and ground truth (right), side by side;
    `ignore` is the ground truth's unlabelled value."""
    img = image.astype(np.float32)
    halves = []
    for lab, off in ((pred, IGNORE_INDEX), (gt, ignore)):
        col = colorize(_display(lab, has_background, off)).astype(np.float32)
        halves.append(((1 - alpha) * img + alpha * col).clip(0, 255).astype(np.uint8))
    gap = np.full((img.shape[0], 8, 3), 255, dtype=np.uint8)
    return np.concatenate([halves[0], gap, halves[1]], axis=1)


def _png_b64(rgb: np.ndarray, width: int) -> str:
    im = Image.fromarray(rgb)
    if im.width > width:
        im = im.resize((width, max(1, round(im.height * width / im.width))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def metrics_document(
    result: EvalResult,
    dataset: SegDataset,
    runs: list[EvalResult] | None = None,
    run_protocol: dict | None = None,
    seconds_per_image: float | None = None,
) -> dict:
    """metrics.json (and `ovdiff eval --json`): scores (IoUs as fractions), class names, mean ± σ over
    `runs`, the protocol and the paper's number for the benchmark (None when there is none).
    seconds_per_image: the segmenting time per image when the masks were made elsewhere (saved masks)."""
    metrics = result.to_dict()
    if seconds_per_image is not None:
        metrics["seconds_per_image"] = json_number(seconds_per_image)
    elif (run_protocol or {}).get("predictions"):
        metrics["seconds_per_image"] = None  # reading saved masks is not segmenting them
    metrics["classes"] = list(result.classes)
    if runs:
        metrics["aggregate"] = aggregate(runs)
    metrics["paper"] = paper_reference(dataset)
    metrics["protocol"] = run_protocol
    return metrics


def write_report(
    result: EvalResult,
    out_dir: Path | str,
    dataset: SegDataset,
    runs: list[EvalResult] | None = None,
    run_protocol: dict | None = None,
    seconds_per_image: float | None = None,
) -> tuple[Path, Path]:
    """Write `metrics.json` and a self-contained `report.html` into `out_dir`; return their paths.
    seconds_per_image: as `metrics_document`.

    The report gives the protocol (see `protocol`), the paper's number beside ours when the paper
    has one, the confusion matrix as a picture, and the best and worst images' predictions that
    `evaluate` kept, each against its image and ground truth. `runs` (several seeds) adds mean ± σ.
    """
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    metrics = metrics_document(result, dataset, runs, run_protocol, seconds_per_image)
    summary = metrics.get("aggregate")
    json_path = out / "metrics.json"
    json_path.write_text(json.dumps(metrics, indent=2))

    figures: dict[str, str] = {}
    for i, _ in result.best() + result.worst():
        if i in figures or i not in result.predictions:
            continue
        item = dataset[i]
        pic = overlay(
            load_image(item.image_path),
            result.predictions[i],
            item.label,
            dataset.has_background,
            ignore=dataset.ignore_index,
        )
        figures[i] = _png_b64(pic, 2 * PANEL_WIDTH + 8)
    html_path = out / "report.html"
    confusion = _png_b64(confusion_picture(result.confusion, result.classes), 10_000)
    html_path.write_text(
        _html(
            result, dataset, figures, summary, metrics["paper"], run_protocol, confusion, metrics["seconds_per_image"]
        )
    )
    return json_path, html_path


def confusion_picture(counts: np.ndarray, classes: list[str]) -> np.ndarray:
    """The confusion matrix as a heat map: rows = ground truth, columns = prediction (the last one
    "none": no class predicted), each row normalised to its pixels; names on the left. → HxWx3 uint8."""
    from PIL import ImageDraw

    from ..io.images import _font

    n = len(classes)
    rows = counts.astype(np.float64)
    rows = np.divide(rows, rows.sum(1, keepdims=True), out=np.zeros_like(rows), where=rows.sum(1, keepdims=True) > 0)
    cell = int(np.clip(640 // max(n + 1, 1), 2, 20))
    font = _font()
    named = cell >= 8
    left = (max(int(font.getlength(c)) for c in [*classes, "none"]) + 8) if named else 4
    top = 16
    heat = (255 * (1 - rows)).round().astype(np.uint8)  # white = 0, dark blue = the whole row
    rgb = np.stack([heat, heat, np.full_like(heat, 255) - (255 - heat) // 3], -1)
    grid = np.kron(rgb, np.ones((cell, cell, 1), np.uint8))
    title = "rows: ground truth (each sums to 1); columns: prediction, same order, last = none"
    width = max(left + grid.shape[1] + 4, int(font.getlength(title)) + 8)
    canvas = Image.new("RGB", (width, top + grid.shape[0] + 4), "white")
    canvas.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill="black", font=font)
    if named:
        for i, name in enumerate(classes):
            draw.text((2, top + i * cell + (cell - 10) // 2), name, fill="black", font=font)
    return np.asarray(canvas)


def _brief(value: object) -> str:
    """A protocol value on one table line: lists joined, dicts as key=value."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_brief(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return "–" if value is None else str(value)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _html(
    result: EvalResult,
    dataset: SegDataset,
    figures: dict[str, str],
    summary: dict | None,
    paper: dict | None = None,
    run_protocol: dict | None = None,
    confusion: str = "",
    seconds_per_image: float | None = None,
) -> str:
    esc = html.escape
    pal = colorize(_display(np.arange(result.per_class_iou.size), dataset.has_background))
    rows = []
    for j, (name, iou) in enumerate(zip(result.classes, result.per_class_iou, strict=True)):
        width = 0.0 if math.isnan(iou) else 100 * iou
        colour = "#%02x%02x%02x" % tuple(int(c) for c in pal[j])  # noqa: UP031
        extra = ""
        if summary and summary["per_class_iou"].get(name):
            s = summary["per_class_iou"][name]
            extra = f" <span class=sd>({_pct(s['mean'])} ± {_pct(s['std'])})</span>"
        rows.append(
            f"<tr><td class=name>{esc(name)}</td><td class=track><div class=bar "
            f'style="width:{width:.1f}%;background:{colour}"></div></td><td class=val>{_pct(iou)}{extra}</td></tr>'
        )
    head = f"mIoU <b>{_pct(result.miou)}</b> · pixel accuracy {_pct(result.pixel_accuracy)} · {result.n_images} images"
    head += f" · {seconds_per_image:.3f} s/image" if seconds_per_image is not None else ""
    if summary and summary["miou"]:
        m = summary["miou"]
        head += f"<br>{summary['n_runs']} runs: mIoU {_pct(m['mean'])} ± {_pct(m['std'])} (population σ)"
    if paper:
        sd = f" ± {_pct(paper['std'])}" if paper["std"] is not None else ""
        head += f"<br>paper ({esc(paper['table'])}, {esc(paper['setup'])}): mIoU <b>{_pct(paper['miou'])}{sd}</b>"
    kind = NOT_COMPARABLE.get((run_protocol or {}).get("weights"))
    if kind:
        head += (
            f"<br><b class=warn>preset {esc(str(run_protocol['preset']))} uses {kind}: these scores check the "
            "pipeline, they are not comparable to the paper's</b>"
        )
    proto_rows = "".join(
        f"<tr><td class=name>{esc(k)}</td><td>{esc(_brief(v))}</td></tr>" for k, v in (run_protocol or {}).items()
    )
    proto = f"<h2>Protocol</h2><table class=proto>{proto_rows}</table>" if proto_rows else ""
    matrix = (
        f"<h2>Confusion matrix</h2><img alt='confusion matrix' src='data:image/png;base64,{confusion}'>"
        if confusion
        else ""
    )

    def gallery(title: str, picks: list[tuple[str, float]], skip: frozenset[str] | set[str] = frozenset()) -> str:
        cells = [
            f"<figure><img alt='{esc(i)}' src='data:image/png;base64,{figures[i]}'>"
            f"<figcaption>{esc(i)} · mIoU {_pct(m)}</figcaption></figure>"
            for i, m in picks
            if i in figures and i not in skip
        ]
        return (
            f"<h2>{title}</h2><p class=note>left: prediction · right: ground truth</p>{''.join(cells)}" if cells else ""
        )

    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ovdiff eval: {esc(result.dataset)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}}
td{{padding:1px 6px;font-size:13px}} .proto td{{vertical-align:top}} .name{{text-align:right;white-space:nowrap}} .track{{width:420px;background:#eee}}
.bar{{height:12px}} .val{{font-variant-numeric:tabular-nums}} .sd,.note{{color:#777}}
figure{{display:inline-block;margin:0 1em 1em 0}} figcaption{{font-size:13px}}
</style></head><body>
<h1>{esc(dataset.title)}</h1><p>{head}</p>
<h2>IoU per class (%)</h2><table>{"".join(rows)}</table>
{matrix}
{proto}
{gallery("Best images", result.best())}
{gallery("Worst images", result.worst(), {i for i, _ in result.best()})}
</body></html>
"""
