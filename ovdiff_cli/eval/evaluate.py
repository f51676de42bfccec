"""The eval loop (paper §4, App. A.3): score a predictor on a benchmark split, and write the report.

A predictor is any function `(image, info) -> labels`: image HxWx3 uint8 RGB as stored, labels (H,W)
integers in the dataset's class-index space (255 = no class). The model, the CLI and the progress
bar live elsewhere; this module only scores, so any segmenter (or a folder of saved masks, see
`predictions_from_dir`) can be compared under the same protocol.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..classnames import IGNORE_INDEX, NO_CLASS
from ..errors import InvalidSetting, OvdiffError
from ..io.legend import LEGEND_FILE
from ..io.palette import rgb_to_labels
from ..limits import in_range
from .datasets import ItemInfo, SegDataset, load_image
from .legends import UNNAMED, legend_lookup
from .metrics import ConfusionMatrix
from .paper import weights_kind

if TYPE_CHECKING:
    from ..config import SegmentConfig
    from ..method.stage4_segment.segmenter import Segmenter

Predict = Callable[[np.ndarray, ItemInfo], np.ndarray]
OnImage = Callable[[int, int, float], None]  # (images done, total, running mIoU)


@dataclass
class EvalResult:
    """Scores of one run over a split. IoUs and accuracies are fractions in [0,1]; NaN = undefined."""

    dataset: str
    classes: list[str]
    per_class_iou: np.ndarray  # (C,) float64
    miou: float
    pixel_accuracy: float
    n_images: int
    seconds_per_image: float  # mean time spent inside predict()
    per_image_miou: dict[str, float]  # image id -> mIoU over the classes in its gt or prediction
    confusion: np.ndarray  # (C, C+1) int64, see metrics.ConfusionMatrix
    predictions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # best/worst images' labels

    def ranked(self) -> list[tuple[str, float]]:
        """(id, mIoU) of images with a defined score, best first (ties in split order)."""
        scored = [(i, m) for i, m in self.per_image_miou.items() if not math.isnan(m)]
        return sorted(scored, key=lambda x: -x[1])

    def best(self, k: int = 3) -> list[tuple[str, float]]:
        return self.ranked()[:k]

    def worst(self, k: int = 3) -> list[tuple[str, float]]:
        return self.ranked()[::-1][:k]

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes null; the confusion matrix and kept predictions are left out."""
        return {
            "dataset": self.dataset,
            "n_images": self.n_images,
            "miou": json_number(self.miou),
            "pixel_accuracy": json_number(self.pixel_accuracy),
            "seconds_per_image": json_number(self.seconds_per_image),
            "per_class_iou": {c: json_number(v) for c, v in zip(self.classes, self.per_class_iou, strict=True)},
            "best": [{"id": i, "miou": json_number(m)} for i, m in self.best()],
            "worst": [{"id": i, "miou": json_number(m)} for i, m in self.worst()],
            "per_image_miou": {i: json_number(m) for i, m in self.per_image_miou.items()},
        }


def json_number(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def check_prediction(pred: np.ndarray, gt: np.ndarray, num_classes: int, source: str) -> np.ndarray:
    """The prediction as int64 if it fits the ground truth; else a one-line error naming `source`."""
    pred = np.asarray(pred)
    if pred.shape != gt.shape:
        raise OvdiffError(
            f"{source}: prediction has shape {pred.shape} but the ground truth has shape {gt.shape} (H,W): "
            "predictions must have the image's size"
        )
    if pred.dtype.kind not in "uib":
        raise OvdiffError(f"{source}: prediction has dtype {pred.dtype}: expected integer labels")
    pred = pred.astype(np.int64)
    bad = ((pred < NO_CLASS) | (pred >= num_classes)) & (pred != IGNORE_INDEX)
    if bad.any():
        vals = sorted({int(v) for v in np.unique(pred[bad])[:5]})
        raise OvdiffError(
            f"{source}: prediction has labels {vals} outside 0..{num_classes - 1} (and {IGNORE_INDEX} or "
            f"{NO_CLASS} = no class)"
        )
    return pred


def evaluate(dataset: SegDataset, predict: Predict, on_image: OnImage | None = None, keep: int = 3) -> EvalResult:
    """Run `predict` on every image of `dataset` and score it with one confusion matrix over the split.

    `on_image(done, total, running_miou)` is called after each image (the CLI draws its progress bar
    from it). The predictions of the `keep` best and worst images are kept for the report.
    """
    n = dataset.num_classes
    total = ConfusionMatrix(n, dataset.ignore_index)
    per_image: dict[str, float] = {}
    kept: dict[str, np.ndarray] = {}
    predict_seconds = 0.0
    for done, item in enumerate(dataset, start=1):
        image = load_image(item.image_path)
        if item.label.shape != image.shape[:2]:  # the dataset is off, not the prediction: say so
            (h, w), (ih, iw) = item.label.shape, image.shape[:2]
            raise OvdiffError(
                f"image {item.id}: the ground-truth label {item.info.label_path} is {w}x{h} but the image is "
                f"{iw}x{ih}: the dataset's label does not fit its image"
            )
        t0 = time.perf_counter()
        raw = predict(image, item.info)
        predict_seconds += time.perf_counter() - t0
        pred = check_prediction(raw, item.label, n, f"image {item.id}")
        cm = ConfusionMatrix(n, dataset.ignore_index).update(pred, item.label)
        total += cm
        per_image[item.id] = cm.miou()
        if keep > 0 and not math.isnan(per_image[item.id]):
            kept[item.id] = pred.astype(np.int32)
            kept = _extremes(kept, per_image, keep)
        if on_image is not None:
            on_image(done, len(dataset), total.miou())
    count = len(per_image)
    return EvalResult(
        dataset=dataset.name,
        classes=list(dataset.classes),
        per_class_iou=total.iou(),
        miou=total.miou(),
        pixel_accuracy=total.pixel_accuracy(),
        n_images=count,
        seconds_per_image=predict_seconds / count if count else float("nan"),
        per_image_miou=per_image,
        confusion=total.counts.copy(),
        predictions=kept,
    )


def _extremes(kept: dict[str, np.ndarray], scores: dict[str, float], k: int) -> dict[str, np.ndarray]:
    """Keep only the k best and k worst of the kept predictions (bounded memory over a long split)."""
    order = sorted(kept, key=lambda i: -scores[i])
    wanted = set(order[:k]) | set(order[-k:])
    return {i: p for i, p in kept.items() if i in wanted}


def benchmark_classes(dataset: SegDataset) -> list[str]:
    """The classes a model builds for a benchmark: every named class, background excluded."""
    return list(dataset.classes[1:] if dataset.has_background else dataset.classes)


def protocol_config(cfg: SegmentConfig, dataset: SegDataset) -> SegmentConfig:
    """The segment settings a benchmark is scored under: without background, named classes only and
    no bg prototypes (paper A.3); with background, `cfg` as given."""
    return replace(cfg, background=dataset.has_background, bg_prototypes=dataset.has_background and cfg.bg_prototypes)


def segmenter_predictor(segmenter: Segmenter, dataset: SegDataset) -> Predict:
    """A Predict over a segmenter built for `benchmark_classes(dataset)` under `protocol_config`.

    Segment labels are 0 = background, k = the k-th class; dataset indices are shifted by one when the
    benchmark has no background class.
    """
    shift = 0 if dataset.has_background else 1

    def predict(image: np.ndarray, info: ItemInfo) -> np.ndarray:
        return segmenter.predict(image).labels - shift

    return predict


def predictions_from_dir(pred_dir: Path | str, dataset: SegDataset, offset: int | None = None) -> Predict:
    """A predictor that reads saved masks `<pred_dir>/<id>.png` instead of running a model.

    Masks may be index PNGs (the value is the label), palette PNGs (the palette index is the label)
    or RGB PNGs in VOC colours (mapped back through the VOC palette); 8-bit masks use 255 for no class,
    16-bit ones (as `ovdiff segment` writes beyond 254 classes) have no such value. When `ovdiff
    segment`'s legend (classes.json) lies beside the masks, its names say which dataset class each
    value is (`legend_lookup`). Otherwise the dataset index is `value - offset`, and values below
    `offset` are no class; by default `offset` is 0 for benchmarks with a background class and 1 for
    the others (`ovdiff segment` writes 0 = background and the k-th listed class as k).
    """
    root = Path(pred_dir).expanduser()
    if not root.is_dir():
        raise OvdiffError(f"prediction folder {root} not found")
    if offset is not None:
        in_range("offset", offset, " (mask values are 0..254)")
    lut = None
    if (root / LEGEND_FILE).is_file():
        if offset is not None:
            raise InvalidSetting(
                "offset", f"and the legend {root / LEGEND_FILE} both say what mask values mean: leave the offset out"
            )
        lut = legend_lookup(root / LEGEND_FILE, dataset)
    off = (0 if dataset.has_background else 1) if offset is None else offset

    def predict(image: np.ndarray, info: ItemInfo) -> np.ndarray:
        path = root / f"{info.id}.png"
        if not path.is_file():
            raise OvdiffError(f"prediction {path} not found: expected one <id>.png per image of {dataset.name}")
        raw = read_mask_png(path)
        values = raw.astype(np.int64)
        if lut is not None:
            labels = lut[np.clip(values, 0, len(lut) - 1)]
            if (labels == UNNAMED).any():
                raise OvdiffError(
                    f"prediction {path} has value {int(values[labels == UNNAMED].max())}, which its legend {root / LEGEND_FILE} does not name"
                )
            return labels
        labels = values - off
        labels[((values == IGNORE_INDEX) & (raw.dtype == np.uint8)) | (labels < 0)] = NO_CLASS
        bad = labels >= dataset.num_classes
        if bad.any():
            raise OvdiffError(
                f"prediction {path} has value {int(values[bad].max())}, too large for the {dataset.num_classes} "
                f"classes of {dataset.name} with label offset {off}: check the offset and the class list"
            )
        return labels

    return predict


def read_mask_png(path: Path | str) -> np.ndarray:
    """(H,W) labels of an index, palette or VOC-coloured RGB PNG."""
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA"):
                return rgb_to_labels(np.asarray(im.convert("RGB")), source=str(path))
            if im.mode == "LA":
                im = im.convert("L")
            arr = np.asarray(im)
    except OSError as e:
        raise OvdiffError(f"cannot read mask {path}: {e}") from e
    if arr.ndim != 2:
        raise OvdiffError(f"mask {path} has shape {arr.shape}: expected one channel")
    return arr


def aggregate(results: list[EvalResult]) -> dict:
    """Mean ± σ over runs (e.g. seeds): σ is numpy's std with ddof=0 (population), as the paper's ±."""
    if not results:
        raise ValueError("aggregate needs at least one result")
    first = results[0]
    for r in results[1:]:
        if r.dataset != first.dataset or r.classes != first.classes:
            raise OvdiffError("cannot aggregate runs on different datasets or class lists")

    def stat(values: list[float]) -> dict | None:
        arr = np.array(values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0)), "n": int(arr.size)} if arr.size else None

    per_class = np.stack([r.per_class_iou for r in results])
    return {
        "dataset": first.dataset,
        "n_runs": len(results),
        "std": "population (numpy std, ddof=0)",
        "miou": stat([r.miou for r in results]),
        "pixel_accuracy": stat([r.pixel_accuracy for r in results]),
        "per_class_iou": {c: stat(list(per_class[:, j])) for j, c in enumerate(first.classes)},
        "runs_miou": [json_number(r.miou) for r in results],
    }


# -- protocol and the paper's numbers -------------------------------------------------------------


def protocol(
    dataset: SegDataset,
    seeds: list[int] | None,
    preset: str | None,
    models: dict | None,
    sample: object | None = None,
    protos: object | None = None,
    segment: object | None = None,
    predictions: str | None = None,
) -> dict:
    """What a run measured and how, for metrics.json and report.html: dataset, split, images, class
    names, preset and model specs, seeds, window settings and the ovdiff version. The configs are
    the dataclasses the run used (None when scoring saved masks)."""
    from dataclasses import asdict

    from ..version import __version__

    layout = dataset.spec.layout
    return {
        "dataset": dataset.name,
        "title": dataset.title,
        "root": str(dataset.root),
        "split": layout.split_file or layout.image_dir,
        "n_images": len(dataset),
        "class_names": "custom" if dataset.custom else "raw" if dataset.raw_names else "paper (App. C.3)",
        "classes": list(dataset.classes),
        "kinds": None if predictions else dataset.kinds_record(),
        "has_background": dataset.has_background,
        "ignore_index": dataset.ignore_index,
        "metric": "mIoU from one confusion matrix over the split (mmseg)",
        "predictions": predictions,
        "preset": preset,
        "weights": weights_kind(preset),
        "models": models,
        "seeds": seeds,
        "sample": asdict(sample) if sample is not None else None,
        "protos": asdict(protos) if protos is not None else None,
        "segment": asdict(segment) if segment is not None else None,
        "ovdiff_version": __version__,
    }
