"""CutLER's detector, the paper's Γ (Wang et al. 2023), as a plain PyTorch network read from its release.

The released `cutler_cascade_final.pth` is a detectron2 checkpoint ({"model": state dict, ...}) of a
class-agnostic Cascade Mask R-CNN: ResNet-50 (STRIDE_IN_1X1 False, SyncBN), an FPN with SyncBN,
a standard RPN head, three cascade box heads (2 FCs each, class-agnostic regression) and a 4-conv
mask head (CutLER's `cascade_mask_rcnn_R_50_FPN.yaml` over detectron2's `Base-RCNN-FPN.yaml`). The
modules here carry exactly its parameter names, so the state dict loads as published, with no
detectron2: batch norms are inference-only (running statistics, eps 1e-5, as SyncBN in eval mode).
Widths are read from the checkpoint's shapes, so a tiny random-weight detector in the same key
layout (`random_cutler("tiny")`, what tests and the tiny preset use) loads through the same path.
The detector's inference rules (anchors, proposals, cascade, NMS, mask paste) are `method.stage2_prototypes.cutler`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingCheckpoint, OvdiffError
from .checkpoints import CUTLER_SPEC, CUTLER_URL, url_dir

BLOCKS = (3, 4, 6, 3)  # ResNet-50's bottleneck blocks in res2..res5
NUM_ANCHORS = 3  # aspect ratios 0.5, 1, 2 at one size per level
CASCADE_STAGES = 3
BOX_POOL, MASK_POOL = 7, 14  # ROIAlignV2 output sides of the box and mask heads
# keys a detectron2 checkpoint may hold that carry no weight: BN step counters and (older detectron2) buffers
IGNORED_KEYS = ("num_batches_tracked", "pixel_mean", "pixel_std", "cell_anchors")


@dataclass(frozen=True)
class Widths:
    """Channel widths of the detector; stage i of res2..res5 has `bottleneck * 2**i` / `out * 2**i`."""

    stem: int = 64
    bottleneck: int = 64
    out: int = 256
    fpn: int = 256
    fc: int = 1024
    mask: int = 256


FULL = Widths()
TINY = Widths(stem=8, bottleneck=8, out=16, fpn=16, fc=32, mask=16)


class FrozenNorm(nn.Module):
    """Batch norm at inference: y = (x − running_mean) / sqrt(running_var + eps) · weight + bias."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((channels,), value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


class ConvNorm(nn.Conv2d):
    """A bias-free convolution followed by its norm, as detectron2's `Conv2d(..., norm=...)` (keys `.weight`, `.norm.*`)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.norm = FrozenNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck with the stride on the 3×3 conv (STRIDE_IN_1X1 False)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int):
        super().__init__()
        if cin != cout:
            self.shortcut = ConvNorm(cin, cout, 1, stride)
        self.conv1 = ConvNorm(cin, mid, 1)
        self.conv2 = ConvNorm(mid, mid, 3, stride)
        self.conv3 = ConvNorm(mid, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y))
        y = self.conv3(y)
        return torch.relu(y + (self.shortcut(x) if hasattr(self, "shortcut") else x))


class Stem(nn.Module):
    def __init__(self, cout: int):
        super().__init__()
        self.conv1 = ConvNorm(3, cout, 7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(torch.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class BottomUp(nn.Module):
    """ResNet-50 to res5; returns res2..res5 (strides 4, 8, 16, 32)."""

    def __init__(self, w: Widths):
        super().__init__()
        self.stem = Stem(w.stem)
        cin = w.stem
        for i, n in enumerate(BLOCKS):
            mid, cout = w.bottleneck * 2**i, w.out * 2**i
            blocks = [Bottleneck(cin if b == 0 else cout, mid, cout, 2 if (b == 0 and i > 0) else 1) for b in range(n)]
            self.add_module(f"res{i + 2}", nn.Sequential(*blocks))
            cin = cout

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i in range(len(BLOCKS)):
            x = getattr(self, f"res{i + 2}")(x)
            outs.append(x)
        return outs


class Backbone(nn.Module):
    """ResNet-50 + FPN (sum fusion, nearest ×2 top-down, p6 = p5 max-pooled with stride 2)."""

    def __init__(self, w: Widths):
        super().__init__()
        self.bottom_up = BottomUp(w)
        for i in range(len(BLOCKS)):
            self.add_module(f"fpn_lateral{i + 2}", ConvNorm(w.out * 2**i, w.fpn, 1))
            self.add_module(f"fpn_output{i + 2}", ConvNorm(w.fpn, w.fpn, 3))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N,3,H,W) normalised, H and W multiples of 32 → [p2, p3, p4, p5, p6]."""
        res = self.bottom_up(x)
        top = self.fpn_lateral5(res[-1])
        outs = [self.fpn_output5(top)]
        for level in (4, 3, 2):
            top = getattr(self, f"fpn_lateral{level}")(res[level - 2]) + nn.functional.interpolate(
                top, scale_factor=2.0, mode="nearest"
            )
            outs.insert(0, getattr(self, f"fpn_output{level}")(top))
        return outs + [nn.functional.max_pool2d(outs[-1], kernel_size=1, stride=2)]


class RPNHead(nn.Module):
    def __init__(self, w: Widths):
        super().__init__()
        self.conv = nn.Conv2d(w.fpn, w.fpn, 3, padding=1)
        self.objectness_logits = nn.Conv2d(w.fpn, NUM_ANCHORS, 1)
        self.anchor_deltas = nn.Conv2d(w.fpn, NUM_ANCHORS * 4, 1)

    def forward(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One level (N,C,h,w) → objectness (N, h·w·A) and deltas (N, h·w·A, 4), location-major."""
        t = torch.relu(self.conv(p))
        n, _, h, w = p.shape
        logits = self.objectness_logits(t).permute(0, 2, 3, 1).reshape(n, -1)
        deltas = self.anchor_deltas(t).view(n, NUM_ANCHORS, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        return logits, deltas


class ProposalGenerator(nn.Module):
    def __init__(self, w: Widths):
        super().__init__()
        self.rpn_head = RPNHead(w)


class BoxHead(nn.Module):
    """FastRCNNConvFCHead with two FCs: flatten, fc1, ReLU, fc2, ReLU."""

    def __init__(self, w: Widths):
        super().__init__()
        self.fc1 = nn.Linear(w.fpn * BOX_POOL * BOX_POOL, w.fc)
        self.fc2 = nn.Linear(w.fc, w.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1)))))


class BoxPredictor(nn.Module):
    """One foreground class plus background (softmax logits) and class-agnostic box deltas."""

    def __init__(self, w: Widths):
        super().__init__()
        self.cls_score = nn.Linear(w.fc, 2)
        self.bbox_pred = nn.Linear(w.fc, 4)


class MaskHead(nn.Module):
    """MaskRCNNConvUpsampleHead: four 3×3 convs, a 2× deconvolution, one 1×1 class-agnostic predictor."""

    def __init__(self, w: Widths):
        super().__init__()
        for i in range(4):
            self.add_module(f"mask_fcn{i + 1}", nn.Conv2d(w.fpn if i == 0 else w.mask, w.mask, 3, padding=1))
        self.deconv = nn.ConvTranspose2d(w.mask, w.mask, 2, stride=2)
        self.predictor = nn.Conv2d(w.mask, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R,C,14,14) pooled features → (R,1,28,28) mask logits."""
        for i in range(4):
            x = torch.relu(getattr(self, f"mask_fcn{i + 1}")(x))
        return self.predictor(torch.relu(self.deconv(x)))


class RoIHeads(nn.Module):
    def __init__(self, w: Widths):
        super().__init__()
        self.box_head = nn.ModuleList(BoxHead(w) for _ in range(CASCADE_STAGES))
        self.box_predictor = nn.ModuleList(BoxPredictor(w) for _ in range(CASCADE_STAGES))
        self.mask_head = MaskHead(w)


class CutlerNet(nn.Module):
    """The detector's layers under the checkpoint's names (`backbone.*`, `proposal_generator.*`, `roi_heads.*`).

    It computes, it does not decide: `method.stage2_prototypes.cutler.detect` runs the inference rules over these calls.
    """

    def __init__(self, widths: Widths = FULL):
        super().__init__()
        self.widths = widths
        self.backbone = Backbone(widths)
        self.proposal_generator = ProposalGenerator(widths)
        self.roi_heads = RoIHeads(widths)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N,3,H,W) normalised images, sides multiples of 32 → FPN levels p2..p6 (strides 4..64)."""
        return self.backbone(images)

    def rpn(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One FPN level → objectness logits (N, h·w·A) and anchor deltas (N, h·w·A, 4)."""
        return self.proposal_generator.rpn_head(level)

    def box_stage(self, stage: int, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cascade stage `stage` on (R,C,7,7) pooled features → class logits (R,2) [fg, bg] and deltas (R,4)."""
        x = self.roi_heads.box_head[stage](pooled)
        predictor = self.roi_heads.box_predictor[stage]
        return predictor.cls_score(x), predictor.bbox_pred(x)

    def mask_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """(R,C,14,14) pooled features → (R,1,28,28) mask logits."""
        return self.roi_heads.mask_head(pooled)


# --------------------------------------------------------------------------- checkpoints


def widths_of(state: dict[str, torch.Tensor]) -> Widths:
    """The widths a detectron2-layout state dict was built with, read from six of its shapes."""
    probes = {
        "stem": "backbone.bottom_up.stem.conv1.weight",
        "bottleneck": "backbone.bottom_up.res2.0.conv1.weight",
        "out": "backbone.bottom_up.res2.0.conv3.weight",
        "fpn": "backbone.fpn_output2.weight",
        "fc": "roi_heads.box_head.0.fc1.weight",
        "mask": "roi_heads.mask_head.mask_fcn1.weight",
    }
    missing = [k for k in probes.values() if k not in state]
    if missing:
        raise ValueError(f"no key {missing[0]}")
    return Widths(**{field: int(state[key].shape[0]) for field, key in probes.items()})


def check_layout(net: CutlerNet, state: dict[str, torch.Tensor]) -> None:
    """ValueError unless `state` has exactly the network's keys (beyond `IGNORED_KEYS`) with its shapes."""
    expected = net.state_dict()
    given = {k: v for k, v in state.items() if not any(part in k for part in IGNORED_KEYS)}
    for key in expected:
        if key not in given:
            raise ValueError(f"no key {key}")
        if tuple(given[key].shape) != tuple(expected[key].shape):
            raise ValueError(f"{key} has shape {tuple(given[key].shape)}, expected {tuple(expected[key].shape)}")
    extra = sorted(set(given) - set(expected))
    if extra:
        raise ValueError(f"unexpected key {extra[0]} ({len(extra)} in all)")


def net_from_state(state: dict[str, torch.Tensor]) -> CutlerNet:
    """A CutlerNet holding `state` (a detectron2-layout state dict of any widths), fp32, in eval mode."""
    net = CutlerNet(widths_of(state))
    check_layout(net, state)
    own = net.state_dict()
    net.load_state_dict({k: state[k].to(torch.float32) for k in own}, strict=True)
    return net.eval()


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The "model" state dict of a detectron2 .pth file, loaded without running pickled code."""
    import numpy as np

    # numpy scalars and dtypes: what a detectron2 checkpoint's bookkeeping may hold beside its tensors
    safe = [np.dtype, type(np.dtype("float64")), type(np.dtype("int64")), _numpy_scalar()]
    with torch.serialization.safe_globals(safe):
        data = torch.load(path, map_location="cpu", weights_only=True)
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise ValueError("it holds no state dict")
    return {k: torch.as_tensor(v) for k, v in state.items()}


def _numpy_scalar():
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return core.multiarray.scalar


def save_checkpoint(net: CutlerNet, path: Path) -> Path:
    """Write `net` as detectron2 writes a checkpoint ({"model": state dict, "iteration": n}): the format
    `read_checkpoint` reads. Tests write their tiny detector this way."""
    state = net.state_dict()
    for key in [k for k in state if k.endswith(".running_var")]:  # SyncBN's counter, as the release holds it
        state[key.removesuffix("running_var") + "num_batches_tracked"] = torch.tensor(0)
    torch.save({"model": state, "iteration": 0}, path)
    return Path(path)


def random_cutler(size: str, seed: int) -> CutlerNet:
    """The detector with seeded random weights: `tiny` (TINY widths: tests, the tiny preset) or `full`.

    Norms get random statistics too, so every key carries a value; the box predictors start as
    detectron2 initialises them (std 0.01 / 0.001) with the classifier leaning to the foreground and
    the mask logits biased up, so that a random detector still detects blobs (at random places)."""
    g = torch.Generator().manual_seed(seed)
    net = CutlerNet(TINY if size == "tiny" else FULL)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("norm.weight"):  # residual branches start small, so features stay O(1)
                t.copy_((1 + 0.1 * torch.randn(t.shape, generator=g)) * (0.1 if "conv3" in name else 1.0))
            elif name == "roi_heads.mask_head.predictor.bias":  # masks fill most of their box, as trained ones do
                t.fill_(2.0)
            elif name.endswith("cls_score.bias"):
                t.copy_(torch.tensor([1.0, 0.0]))
            elif name.endswith(".bias") and ("box_predictor" in name or "rpn_head" in name):
                t.zero_()
            elif "box_predictor" in name or "rpn_head" in name:  # detectron2's initialisation of these layers
                t.copy_(torch.randn(t.shape, generator=g) * (0.001 if "bbox_pred" in name else 0.01))
            elif t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=g) * math.sqrt(2.0 / t[0].numel()))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return net.eval()


def checkpoint_path(spec: str) -> Path:
    """The file a --mask-model spec names: the release by its name (where `ovdiff models download` puts it,
    `weights.url_dir()`), a .pth path, or a folder holding the release's file (`models download --to`)."""
    if spec in (CUTLER_SPEC, f"{CUTLER_SPEC}.pth"):
        return url_dir() / f"{CUTLER_SPEC}.pth"
    path = Path(spec).expanduser()
    return path / f"{CUTLER_SPEC}.pth" if path.is_dir() else path


def load_cutler(spec: str, device: torch.device, weights_seed: int = 0) -> CutlerNet:
    """The detector named by `spec`: `tiny` / `random` (seeded random weights), the release's name, or a
    .pth path. A missing file is one line saying how to get it; a file of another layout names the key."""
    if spec in ("tiny", "random"):
        return random_cutler("tiny" if spec == "tiny" else "full", weights_seed).to(device)
    path = checkpoint_path(spec)
    if not path.is_file():
        raise MissingCheckpoint(str(path), CUTLER_URL)
    try:
        return net_from_state(read_checkpoint(path)).to(device)
    except Exception as e:  # unpickling, format and layout errors: one line naming the file
        cause = " ".join(str(e).split())[:300] or type(e).__name__
        raise OvdiffError(f"{path} is not CutLER's Cascade Mask R-CNN checkpoint: {cause}") from e
