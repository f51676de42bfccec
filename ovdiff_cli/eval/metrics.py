"""mIoU from a confusion matrix accumulated over a whole split, as mmsegmentation computes it.

mmseg's rules, kept exactly so that our numbers compare with the paper's tables:
- pixels whose ground truth is `ignore_index` are dropped, whatever was predicted there;
- a prediction outside 0..C-1 at a labelled pixel (e.g. 255, "no class") is a miss: it counts in
  that class's ground-truth area but in no class's predicted area;
- IoU_c = intersection / union; it is NaN when class c is absent from both ground truth and
  prediction (union 0), and mIoU is the mean over the non-NaN classes. A class predicted but absent
  from the ground truth has IoU 0 and does lower the mean;
- pixel accuracy ("aAcc") = correctly labelled pixels / labelled pixels.
"""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Counts of (ground truth, prediction) pixel pairs; pure numpy.

    `counts` is (C, C+1) int64: row = ground-truth class, column = predicted class, and the last
    column = predictions outside 0..C-1 at labelled pixels.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> ConfusionMatrix:
        """Add one image: pred and gt are (H,W) integer label maps of the same shape. Returns self."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
        n = self.num_classes
        keep = gt != self.ignore_index
        g = gt[keep].astype(np.int64)
        p = pred[keep].astype(np.int64)
        if g.size and (g.min() < 0 or g.max() >= n):
            raise ValueError(f"ground truth has labels outside 0..{n - 1} other than {self.ignore_index}")
        p[(p < 0) | (p >= n)] = n
        self.counts += np.bincount(g * (n + 1) + p, minlength=n * (n + 1)).reshape(n, n + 1)
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if other.num_classes != self.num_classes:
            raise ValueError("cannot add confusion matrices of different sizes")
        self.counts += other.counts
        return self

    @property
    def matrix(self) -> np.ndarray:
        """(C,C) counts between classes, without the out-of-range predictions column."""
        return self.counts[:, : self.num_classes]

    def intersection(self) -> np.ndarray:
        return np.diag(self.matrix).copy()

    def gt_area(self) -> np.ndarray:
        return self.counts.sum(axis=1)

    def pred_area(self) -> np.ndarray:
        return self.matrix.sum(axis=0)

    def union(self) -> np.ndarray:
        return self.gt_area() + self.pred_area() - self.intersection()

    def iou(self) -> np.ndarray:
        """(C,) float64 IoU per class; NaN where the class is in neither ground truth nor prediction."""
        inter, union = self.intersection().astype(np.float64), self.union().astype(np.float64)
        out = np.full(self.num_classes, np.nan)
        np.divide(inter, union, out=out, where=union > 0)
        return out

    def miou(self) -> float:
        """Mean IoU over classes with a defined IoU; NaN when there is none (nothing counted yet)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.counts.sum()
        return float(self.intersection().sum() / total) if total else float("nan")
