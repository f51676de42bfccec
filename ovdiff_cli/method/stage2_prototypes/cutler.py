"""Paper §3 "Class prototypes" (App. C.5): Γ as the authors run it, CutLER's Cascade Mask R-CNN.

The authors' `utils/cutler.py` runs CutLER's `cascade_mask_rcnn_R_50_FPN.yaml` with the released
`cutler_cascade_final.pth` on each support image (a 0–255 RGB float tensor) and keeps the
detections scoring above 0.35, pasted at the image's resolution; the complement of their union is the
background proposal. This module is that inference, rule by rule, written with torchvision's ops
over the network of `models.cutler` (detectron2's defaults unless CutLER's config sets them):

1. resize: torchvision's `Resize(800, max_size=1333)` on the tensor (bilinear, no antialiasing);
   normalise with ImageNet's mean/std in RGB 0–255; pad bottom/right to a multiple of 32;
2. RPN: anchors of sizes 32..512 on p2..p6 (aspect ratios 0.5, 1, 2; offset 0), the 1000 best logits of
   each level, decoded with weights (1,1,1,1), clipped, empty boxes dropped, NMS 0.65 across levels
   (batched by level), the best 1000 kept;
3. cascade: three stages on ROIAlignV2 7×7 pools (level by sqrt(area): 4 + log2(s/224), clamped to 2..5);
   the stages decode with weights (10,10,5,5), (20,20,10,10), (30,30,15,15); stage k's clipped boxes
   feed stage k+1 (nothing dropped); the score is the mean of the three stages' softmax foreground
   probabilities, the boxes the last stage's;
4. detections: scores > 0.35, NMS 0.5, the best 100;
5. masks: ROIAlignV2 14×14 pools of the detections, sigmoid of the head's 28×28 logits, boxes scaled to
   the image, masks pasted by bilinear sampling (`grid_sample`, align_corners False) and kept ≥ 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .masks import BG_BELOW, FG_ABOVE, with_background

if TYPE_CHECKING:
    from ..models.cutler import CutlerNet

PIXEL_MEAN = (123.675, 116.280, 103.530)  # RGB, 0–255 (CutLER's config)
PIXEL_STD = (58.395, 57.120, 57.375)
MIN_SIZE, MAX_SIZE = 800, 1333  # INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST
SIZE_DIVISIBILITY = 32  # the FPN's
ANCHOR_SIZES = (32, 64, 128, 256, 512)  # one per level p2..p6
ASPECT_RATIOS = (0.5, 1.0, 2.0)
STRIDES = (4, 8, 16, 32, 64)
RPN_TOPK, RPN_NMS = 1000, 0.65  # PRE_NMS_TOPK_TEST = POST_NMS_TOPK_TEST; CutLER's RPN.NMS_THRESH
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
STAGE_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
SCALE_CLAMP = math.log(1000.0 / 16)  # the largest log-scale a delta may apply
SCORE_THRESHOLD = 0.35  # the authors' confidence threshold (utils/cutler.py)
NMS_THRESHOLD = 0.5  # ROI_HEADS.NMS_THRESH_TEST
DETECTIONS = 100  # TEST.DETECTIONS_PER_IMAGE
MASK_THRESHOLD = 0.5
CANONICAL_SIZE, CANONICAL_LEVEL = 224, 4


@dataclass
class Detections:
    """One image's detections: boxes (R,4) x0,y0,x1,y1 at the image's size, scores (R,), masks (R,H,W) bool."""

    boxes: torch.Tensor
    scores: torch.Tensor
    masks: torch.Tensor


# --------------------------------------------------------------------------- pure rules


def resized_size(h: int, w: int, short: int = MIN_SIZE, max_size: int = MAX_SIZE) -> tuple[int, int]:
    """torchvision `Resize(short, max_size)`'s output (h, w): the short side to `short`, the long side
    truncated, both scaled down again (truncating) when the long side would pass `max_size`."""
    lo, hi = (w, h) if w <= h else (h, w)
    new_lo, new_hi = short, int(short * hi / lo)
    if new_hi > max_size:
        new_lo, new_hi = int(max_size * new_lo / new_hi), max_size
    return (new_hi, new_lo) if w <= h else (new_lo, new_hi)


def cell_anchors(size: float, ratios: tuple[float, ...] = ASPECT_RATIOS) -> torch.Tensor:
    """(A,4) anchors centred on 0 of area size², h/w = ratio, in ratio order."""
    rows = []
    for r in ratios:
        w = math.sqrt(size * size / r)
        h = r * w
        rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(rows, dtype=torch.float32)


def grid_anchors(h: int, w: int, stride: int, size: float) -> torch.Tensor:
    """(h·w·A, 4) anchors of one level, location-major (row by row), the cell anchors at each location."""
    ys, xs = torch.meshgrid(
        torch.arange(0, h * stride, stride, dtype=torch.float32),
        torch.arange(0, w * stride, stride, dtype=torch.float32),
        indexing="ij",
    )
    shifts = torch.stack([xs.reshape(-1), ys.reshape(-1)] * 2, dim=1)
    return (shifts[:, None, :] + cell_anchors(size)[None]).reshape(-1, 4)


def decode(deltas: torch.Tensor, boxes: torch.Tensor, weights: tuple[float, float, float, float]) -> torch.Tensor:
    """Box regression: (R,4) deltas (dx,dy,dw,dh) applied to (R,4) boxes, each divided by its weight;
    dw/dh are clamped at `SCALE_CLAMP` before the exponential."""
    boxes = boxes.to(deltas.dtype)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = torch.clamp(deltas[:, 2] / ww, max=SCALE_CLAMP)
    dh = torch.clamp(deltas[:, 3] / wh, max=SCALE_CLAMP)
    px, py = dx * widths + cx, dy * heights + cy
    pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], dim=1)


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boxes clamped to an (h, w) image: x to [0, w], y to [0, h]."""
    h, w = size
    x = boxes[:, 0::2].clamp(0, w)
    y = boxes[:, 1::2].clamp(0, h)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def nonempty(boxes: torch.Tensor) -> torch.Tensor:
    """(R,) bool: width and height both above 0."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def rpn_proposals(
    logits: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor], size: tuple[int, int]
) -> torch.Tensor:
    """The RPN's proposals of one image: per level its `RPN_TOPK` best logits (R_l,), their anchors
    decoded; then all levels, clipped to `size`, empty ones dropped, NMS `RPN_NMS` within each level,
    the best `RPN_TOPK` in score order. Returns (P,4)."""
    from torchvision.ops import batched_nms

    boxes, scores, levels = [], [], []
    for i, (lg, dl, an) in enumerate(zip(logits, deltas, anchors, strict=True)):
        top, idx = lg.topk(min(RPN_TOPK, lg.numel()))
        boxes.append(decode(dl[idx], an[idx], RPN_WEIGHTS))
        scores.append(top)
        levels.append(torch.full_like(top, i, dtype=torch.int64))
    b, s, lv = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
    finite = torch.isfinite(b).all(dim=1) & torch.isfinite(s)
    b, s, lv = b[finite], s[finite], lv[finite]
    b = clip_boxes(b, size)
    keep = nonempty(b)
    b, s, lv = b[keep], s[keep], lv[keep]
    return b[batched_nms(b, s, lv, RPN_NMS)[:RPN_TOPK]]


def box_levels(boxes: torch.Tensor, min_level: int = 2, max_level: int = 5) -> torch.Tensor:
    """(R,) FPN level index (0 = p2) of each box: floor(4 + log2(sqrt(area) / 224 + 1e-8)), clamped."""
    side = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level = torch.floor(CANONICAL_LEVEL + torch.log2(side / CANONICAL_SIZE + 1e-8))
    return level.clamp(min_level, max_level).to(torch.int64) - min_level


def roi_pool(features: list[torch.Tensor], boxes: torch.Tensor, side: int) -> torch.Tensor:
    """ROIAlignV2 (aligned, adaptive sampling) of one image's boxes from p2..p5 → (R,C,side,side)."""
    from torchvision.ops import roi_align

    levels = box_levels(boxes)
    out = features[0].new_zeros((len(boxes), features[0].shape[1], side, side))
    for i, (f, stride) in enumerate(zip(features[:4], STRIDES[:4], strict=True)):
        idx = torch.nonzero(levels == i).flatten()
        if len(idx):
            rois = torch.cat([boxes.new_zeros((len(idx), 1)), boxes[idx]], dim=1).to(f.dtype)
            out[idx] = roi_align(f, rois, (side, side), spatial_scale=1.0 / stride, sampling_ratio=0, aligned=True)
    return out


def cascade_scores(stage_probs: list[torch.Tensor]) -> torch.Tensor:
    """The detection score: the mean over stages of each stage's softmax probabilities (R,2) → (R,2)."""
    return sum(stage_probs) / len(stage_probs)


def final_detections(
    boxes: torch.Tensor, fg_scores: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast R-CNN's inference on one image: finite rows, boxes clipped to `size`, scores above
    `SCORE_THRESHOLD`, NMS at `NMS_THRESHOLD`, the best `DETECTIONS`. Returns (boxes (D,4), scores (D,))."""
    from torchvision.ops import nms

    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(fg_scores)
    boxes, fg_scores = clip_boxes(boxes[finite], size), fg_scores[finite]
    keep = fg_scores > SCORE_THRESHOLD
    boxes, fg_scores = boxes[keep], fg_scores[keep]
    keep = nms(boxes, fg_scores, NMS_THRESHOLD)[:DETECTIONS]
    return boxes[keep], fg_scores[keep]


def paste_masks(probs: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(R,M,M) mask probabilities placed in their (R,4) boxes on an (H,W) image → (R,H,W) bool.

    Each pixel centre is mapped into its box's [-1,1] frame and sampled bilinearly (zeros outside);
    kept where ≥ `MASK_THRESHOLD`.
    """
    h, w = size
    out = torch.zeros((len(boxes), h, w), dtype=torch.bool)
    ys, xs = torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5
    for i, (x0, y0, x1, y1) in enumerate(boxes.float().tolist()):  # one at a time: an image-sized grid each
        gy = ((ys - y0) / (y1 - y0) * 2 - 1)[:, None].expand(h, w)
        gx = ((xs - x0) / (x1 - x0) * 2 - 1)[None, :].expand(h, w)
        grid = torch.stack([gx, gy], dim=2)[None]
        pasted = F.grid_sample(probs[i][None, None].float(), grid, mode="bilinear", align_corners=False)
        out[i] = pasted[0, 0] >= MASK_THRESHOLD
    return out


# --------------------------------------------------------------------------- the detector


def prepare(
    image: np.ndarray, device: torch.device, test_size: tuple[int, int] = (MIN_SIZE, MAX_SIZE)
) -> tuple[torch.Tensor, tuple[int, int]]:
    """HxWx3 uint8 RGB → ((1,3,H',W') normalised and padded to multiples of 32, (h, w) resized size).

    test_size: (short side, long-side cap) of the resize, CutLER's (800, 1333) unless a preset scales it."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
    size = resized_size(*image.shape[:2], *test_size)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    mean = torch.tensor(PIXEL_MEAN, device=device)[None, :, None, None]
    std = torch.tensor(PIXEL_STD, device=device)[None, :, None, None]
    x = (x - mean) / std
    pad_h = -size[0] % SIZE_DIVISIBILITY
    pad_w = -size[1] % SIZE_DIVISIBILITY
    return F.pad(x, (0, pad_w, 0, pad_h)), size


@torch.no_grad()
def detect(net: CutlerNet, image: np.ndarray, test_size: tuple[int, int] = (MIN_SIZE, MAX_SIZE)) -> Detections:
    """CutLER's detections on one HxWx3 uint8 RGB image, boxes and masks at its own size (fp32);
    test_size as `prepare` takes it."""
    device = next(net.parameters()).device
    x, size = prepare(image, device, test_size)
    feats = net.features(x)
    logits, deltas, anchors = [], [], []
    for f, stride, anchor in zip(feats, STRIDES, ANCHOR_SIZES, strict=True):
        lg, dl = net.rpn(f)
        logits.append(lg[0])
        deltas.append(dl[0])
        anchors.append(grid_anchors(f.shape[2], f.shape[3], stride, anchor).to(device))
    boxes = rpn_proposals(logits, deltas, anchors, size)
    probs = []
    for k, weights in enumerate(STAGE_WEIGHTS):
        if k > 0:
            boxes = clip_boxes(boxes, size)
        cls, dl = net.box_stage(k, roi_pool(feats, boxes, 7))
        probs.append(F.softmax(cls, dim=-1))
        boxes = decode(dl, boxes, weights)
    boxes, scores = final_detections(boxes, cascade_scores(probs)[:, 0], size)
    mask_probs = torch.sigmoid(net.mask_logits(roi_pool(feats, boxes, 14)))[:, 0]
    h, w = image.shape[:2]
    scaled = clip_boxes(boxes * boxes.new_tensor([w / size[1], h / size[0]] * 2), (h, w))
    keep = nonempty(scaled)
    scaled, scores, mask_probs = scaled[keep], scores[keep], mask_probs[keep]
    return Detections(scaled.cpu(), scores.cpu(), paste_masks(mask_probs.cpu(), scaled.cpu(), (h, w)))


class CutlerProposer:
    """`cutler`: Γ by CutLER's detector (`detect`), the paper's and the authors' proposer.

    Proposals are the detections' masks at the support image's size, plus the complement of their union
    as the background; images without detections take the authors' fixed thresholds (0.2/0.5).
    """

    name = "cutler"
    uses_features = False

    def __init__(self, net: CutlerNet, test_size: tuple[int, int] = (MIN_SIZE, MAX_SIZE)):
        """net: the detector (`models.cutler.load_cutler`); test_size: its input resize (`prepare`)."""
        self.net, self.test_size = net, tuple(test_size)

    def thresholds(self, attributions: list[np.ndarray]) -> tuple[float, float]:
        return BG_BELOW, FG_ABOVE

    def propose(self, image: np.ndarray, features: torch.Tensor) -> list[np.ndarray]:
        """image HxWx3 uint8 (features unused) → HxW bool masks, the background last."""
        return with_background([m.numpy() for m in detect(self.net, image, self.test_size).masks if m.any()])
