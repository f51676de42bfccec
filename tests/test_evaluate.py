"""The eval loop, saved-mask predictors, seed aggregation and the report, on small fake VOC trees."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import VOC_SAMPLE
from PIL import Image

from ovdiff_cli.errors import OvdiffError
from ovdiff_cli.eval.datasets import load_dataset
from ovdiff_cli.eval.evaluate import EvalResult, aggregate, evaluate, predictions_from_dir
from ovdiff_cli.eval.report import write_report
from ovdiff_cli.io.palette import colorize, voc_palette


def naive_miou(pairs, n):
    """Split-level IoU by set counting per class, written independently of metrics.py."""
    ious = []
    for c in range(n):
        inter = union = 0
        for pred, gt in pairs:
            valid = gt != 255
            inter += int(((pred == c) & (gt == c) & valid).sum())
            union += int((((pred == c) | (gt == c)) & valid).sum())
        ious.append(inter / union if union else np.nan)
    return float(np.nanmean(ious)), np.array(ious)


def fake_voc(base: Path, n_images: int = 4, seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """A VOC2012 tree of random palette label maps (0..20, some 255) and flat images."""
    rng = np.random.default_rng(seed)
    root = base / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    labels = {}
    for k in range(n_images):
        i = f"2007_{k:06d}"
        h, w = 12 + k, 16
        lab = rng.integers(0, 21, (h, w)).astype(np.uint8)
        lab[rng.random((h, w)) < 0.1] = 255
        im = Image.frombytes("P", (w, h), lab.tobytes())
        im.putpalette(voc_palette().ravel().tolist())
        im.save(root / "SegmentationClass" / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        labels[i] = lab
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(labels) + "\n")
    return root, labels


def random_preds(labels: dict[str, np.ndarray], n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, lab in labels.items():
        noisy = rng.integers(0, n, lab.shape)
        out[i] = np.where(rng.random(lab.shape) < 0.6, np.where(lab == 255, noisy, lab), noisy).astype(np.uint8)
    return out


def test_perfect_predictor_scores_one(tmp_path):
    root, labels = fake_voc(tmp_path)
    ds = load_dataset("voc", root)
    calls = []
    res = evaluate(ds, lambda img, info: labels[info.id], on_image=lambda *a: calls.append(a))
    assert res.miou == pytest.approx(1.0) and res.pixel_accuracy == pytest.approx(1.0)
    assert res.n_images == 4 and [c[:2] for c in calls] == [(k, 4) for k in range(1, 5)]
    assert calls[-1][2] == pytest.approx(1.0)


def test_random_predictions_match_naive(tmp_path):
    root, labels = fake_voc(tmp_path)
    preds = random_preds(labels, 21)
    seen_shapes = []

    def predict(image, info):
        seen_shapes.append(image.shape)
        assert image.dtype == np.uint8
        return preds[info.id]

    res = evaluate(load_dataset("voc", root), predict)
    miou, ious = naive_miou([(preds[i], labels[i]) for i in labels], 21)
    assert res.miou == pytest.approx(miou, abs=1e-6)
    np.testing.assert_allclose(res.per_class_iou, ious, atol=1e-6, equal_nan=True)
    assert seen_shapes == [(*lab.shape, 3) for lab in labels.values()]
    for i in labels:
        assert res.per_image_miou[i] == pytest.approx(naive_miou([(preds[i], labels[i])], 21)[0], abs=1e-6)
    assert [i for i, _ in res.best(1)] == [max(labels, key=lambda i: res.per_image_miou[i])]
    assert set(res.predictions) == {i for i, _ in res.best() + res.worst()}


@pytest.mark.parametrize("kind", ["index", "palette", "rgb"])
def test_predictions_from_dir(tmp_path, kind):
    root, labels = fake_voc(tmp_path)
    preds = random_preds(labels, 21)
    pred_dir = tmp_path / "preds"
    pred_dir.mkdir()
    for i, p in preds.items():
        if kind == "index":
            im = Image.fromarray(p)
        elif kind == "palette":
            im = Image.frombytes("P", (p.shape[1], p.shape[0]), p.tobytes())
            im.putpalette(voc_palette().ravel().tolist())
        else:
            im = Image.fromarray(colorize(p))
        im.save(pred_dir / f"{i}.png")
    ds = load_dataset("voc", root)
    res = evaluate(ds, predictions_from_dir(pred_dir, ds))
    miou, ious = naive_miou([(preds[i].astype(int), labels[i]) for i in labels], 21)
    assert res.miou == pytest.approx(miou, abs=1e-6)
    np.testing.assert_allclose(res.per_class_iou, ious, atol=1e-6, equal_nan=True)


def test_predictions_from_dir_offset_for_no_background(tmp_path):
    root, labels = fake_voc(tmp_path)
    preds = random_preds(labels, 21)  # segment-style: 0 = background, k = k-th of the 20 classes
    pred_dir = tmp_path / "preds"
    pred_dir.mkdir()
    for i, p in preds.items():
        Image.fromarray(p).save(pred_dir / f"{i}.png")
    ds = load_dataset("voc20", root)
    res = evaluate(ds, predictions_from_dir(pred_dir, ds))
    shift = lambda a: np.where((a == 0) | (a == 255), 255, a.astype(int) - 1)  # noqa: E731
    miou, _ = naive_miou([(shift(preds[i]), shift(labels[i])) for i in labels], 20)
    assert res.miou == pytest.approx(miou, abs=1e-6)
    # offset 0 on a background dataset reproduces voc's scores from the same files
    voc = load_dataset("voc", root)
    assert evaluate(voc, predictions_from_dir(pred_dir, voc, offset=0)).miou == pytest.approx(
        naive_miou([(preds[i], labels[i]) for i in labels], 21)[0], abs=1e-6
    )


def test_prediction_errors(tmp_path):
    root, labels = fake_voc(tmp_path, n_images=2)
    ds = load_dataset("voc", root)
    pred_dir = tmp_path / "preds"
    pred_dir.mkdir()
    first = next(iter(labels))
    Image.fromarray(labels[first]).save(pred_dir / f"{first}.png")
    with pytest.raises(OvdiffError, match=str(pred_dir / "2007_000001.png")):
        evaluate(ds, predictions_from_dir(pred_dir, ds))
    with pytest.raises(OvdiffError, match="shape"):
        evaluate(ds, lambda img, info: np.zeros((3, 3), np.uint8))
    with pytest.raises(OvdiffError, match=r"\[21\]"):
        evaluate(ds, lambda img, info: np.full(labels[info.id].shape, 21))
    with pytest.raises(OvdiffError, match="dtype"):
        evaluate(ds, lambda img, info: np.zeros(labels[info.id].shape, np.float32))
    with pytest.raises(OvdiffError, match="not found"):
        predictions_from_dir(tmp_path / "nowhere", ds)
    Image.fromarray(np.full((*labels[first].shape, 3), (1, 2, 3), np.uint8)).save(pred_dir / f"{first}.png")
    with pytest.raises(OvdiffError, match="not in the VOC palette"):
        evaluate(ds, predictions_from_dir(pred_dir, ds))


def test_write_report(tmp_path):
    root, labels = fake_voc(tmp_path, n_images=7)
    ds = load_dataset("voc", root)
    preds = random_preds(labels, 21)
    res = evaluate(ds, lambda img, info: preds[info.id])
    json_path, html_path = write_report(res, tmp_path / "out", ds)
    metrics = json.loads(json_path.read_text())
    assert metrics["miou"] == pytest.approx(res.miou) and metrics["n_images"] == 7
    assert len(metrics["per_class_iou"]) == 21 and metrics["classes"][16] == "potted plant"
    assert [b["id"] for b in metrics["best"]] == [i for i, _ in res.best()]
    page = html_path.read_text()
    for name in ds.classes:
        assert name in page
    assert page.count("data:image/png;base64,") == 7  # 3 best + 3 worst + the confusion matrix


def test_aggregate_population_std(tmp_path):
    root, labels = fake_voc(tmp_path)
    ds = load_dataset("voc", root)
    runs = [evaluate(ds, lambda img, info, s=s: random_preds(labels, 21, seed=s)[info.id]) for s in (1, 2, 3)]
    agg = aggregate(runs)
    mious = [r.miou for r in runs]
    assert agg["n_runs"] == 3
    assert agg["miou"]["mean"] == pytest.approx(np.mean(mious))
    assert agg["miou"]["std"] == pytest.approx(np.std(mious, ddof=0))
    assert agg["per_class_iou"]["dog"]["mean"] == pytest.approx(np.mean([r.per_class_iou[12] for r in runs]))
    _, html_path = write_report(runs[0], tmp_path / "out", ds, runs=runs)
    assert "±" in html_path.read_text()
    other = EvalResult("voc20", ["a"], np.array([1.0]), 1.0, 1.0, 1, 0.0, {}, np.zeros((1, 2), np.int64))
    with pytest.raises(OvdiffError):
        aggregate([runs[0], other])


@pytest.mark.skipif(not VOC_SAMPLE.is_dir(), reason="shared VOC sample not present")
def test_real_sample_end_to_end(tmp_path):
    root = tmp_path / "VOC2012"
    shutil.copytree(VOC_SAMPLE, root)
    ds = load_dataset("voc", root)
    gt = ds[0].label
    # Everything labelled "dog": IoU(dog) = dog pixels / labelled pixels; background and chair score 0.
    res = evaluate(ds, lambda img, info: np.full(img.shape[:2], 12))
    labelled = int((gt != 255).sum())
    assert res.per_class_iou[12] == pytest.approx((gt == 12).sum() / labelled)
    assert res.per_class_iou[0] == 0 and res.per_class_iou[9] == 0
    assert res.miou == pytest.approx(res.per_class_iou[12] / 3)
    # The ground-truth palette PNG itself, read back as a prediction, scores 100.
    pred_dir = tmp_path / "preds"
    shutil.copytree(root / "SegmentationClass", pred_dir)
    res = evaluate(ds, predictions_from_dir(pred_dir, ds))
    assert res.miou == 1.0
    _, html_path = write_report(res, tmp_path / "out", ds)
    assert "2007_000063" in html_path.read_text()
