"""ConfusionMatrix against a naive per-pixel loop written independently here."""

from __future__ import annotations

import numpy as np
import pytest

from ovdiff_cli.eval.metrics import ConfusionMatrix


def naive_scores(pairs: list[tuple[np.ndarray, np.ndarray]], n: int, ignore: int = 255):
    """mmseg's definitions, pixel by pixel: areas of gt, prediction and their intersection per class."""
    inter = [0] * n
    area_gt = [0] * n
    area_pred = [0] * n
    correct = total = 0
    for pred, gt in pairs:
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist(), strict=True):
            if g == ignore:
                continue
            total += 1
            area_gt[g] += 1
            if 0 <= p < n:
                area_pred[p] += 1
                if p == g:
                    inter[g] += 1
                    correct += 1
    iou = []
    for c in range(n):
        union = area_gt[c] + area_pred[c] - inter[c]
        iou.append(inter[c] / union if union else float("nan"))
    valid = [v for v in iou if v == v]
    return np.array(iou), sum(valid) / len(valid), correct / total


def random_pair(rng: np.random.Generator, n: int, shape=(23, 31), p_ignore=0.15, p_void=0.05):
    gt = rng.integers(0, n, shape)
    gt[rng.random(shape) < p_ignore] = 255
    pred = np.where(rng.random(shape) < 0.5, gt, rng.integers(0, n, shape))
    pred[rng.random(shape) < p_void] = 255  # "no class" predictions count as misses
    pred[gt == 255] = rng.integers(0, n, int((gt == 255).sum()))
    return pred, gt


@pytest.mark.parametrize("n", [2, 7, 21, 171])
def test_matches_naive_loop(n):
    rng = np.random.default_rng(n)
    pairs = [random_pair(rng, n) for _ in range(4)]
    cm = ConfusionMatrix(n)
    for pred, gt in pairs:
        cm.update(pred, gt.astype(np.uint8))
    iou, miou, acc = naive_scores(pairs, n)
    np.testing.assert_allclose(cm.iou(), iou, atol=1e-6, equal_nan=True)
    assert cm.miou() == pytest.approx(miou, abs=1e-6)
    assert cm.pixel_accuracy() == pytest.approx(acc, abs=1e-6)


def test_nan_only_for_classes_absent_from_both():
    gt = np.array([[0, 0, 1, 255]])
    pred = np.array([[0, 2, 1, 3]])  # class 2 predicted but absent from gt; class 3 only at an ignored pixel
    cm = ConfusionMatrix(4).update(pred, gt)
    iou = cm.iou()
    assert iou[0] == pytest.approx(0.5) and iou[1] == 1.0
    assert iou[2] == 0.0  # predicted, never in gt: IoU 0, counted in the mean (mmseg)
    assert np.isnan(iou[3])  # ignored pixels do not count at all
    assert cm.miou() == pytest.approx(0.5)
    assert cm.pixel_accuracy() == pytest.approx(2 / 3)


def test_void_prediction_is_a_miss():
    cm = ConfusionMatrix(3).update(np.array([[255, 1]]), np.array([[1, 1]]))
    assert cm.iou()[1] == 0.5 and cm.pixel_accuracy() == 0.5
    assert cm.matrix.sum() == 1 and cm.counts.sum() == 2


def test_accumulates_and_adds():
    rng = np.random.default_rng(0)
    a, b = random_pair(rng, 5), random_pair(rng, 5)
    whole = ConfusionMatrix(5).update(*a).update(*b)
    parts = ConfusionMatrix(5).update(*a)
    parts += ConfusionMatrix(5).update(*b)
    np.testing.assert_array_equal(whole.counts, parts.counts)


def test_empty_and_errors():
    cm = ConfusionMatrix(3)
    assert np.isnan(cm.miou()) and np.isnan(cm.pixel_accuracy()) and np.isnan(cm.iou()).all()
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.zeros((1, 1)), np.full((1, 1), 3))
