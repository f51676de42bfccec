"""The paper's numbers a run is compared with, and whether a preset's scores can be compared at all."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import OvdiffError

if TYPE_CHECKING:
    from .datasets import SegDataset

# OVDiff's mIoU (%) in the paper: Table 1 (with background; mean ± σ over 5 seeds) and Table A.8
# (background excluded), SD1.5 + DINO + CLIP features, real weights.
PAPER_MIOU: dict[str, dict] = {
    "voc": {"miou": 66.3, "std": 0.2, "table": "Table 1"},
    "context": {"miou": 29.7, "std": 0.3, "table": "Table 1"},
    "object": {"miou": 34.6, "std": 0.3, "table": "Table 1"},
    "voc20": {"miou": 80.9, "std": None, "table": "Table A.8"},
    "context59": {"miou": 32.9, "std": None, "table": "Table A.8"},
    "ade": {"miou": 14.1, "std": None, "table": "Table A.8"},
    "stuff": {"miou": 20.3, "std": None, "table": "Table A.8"},
    "cityscapes": {"miou": 23.4, "std": None, "table": "Table A.8"},
}


def paper_reference(dataset: SegDataset) -> dict | None:
    """The paper's OVDiff mIoU for this benchmark as a fraction (every IoU of metrics.json is one; the
    paper prints percent), or None for a dataset of one's own classes."""
    ref = PAPER_MIOU.get(dataset.name)
    if ref is None or dataset.custom:
        return None
    std = None if ref["std"] is None else round(ref["std"] / 100, 6)
    return dict(
        ref,
        miou=round(ref["miou"] / 100, 6),
        std=std,
        setup="SD1.5 + DINO + CLIP, real weights (the sd15 preset's defaults)",
    )


NOT_COMPARABLE = {"tiny": "random weights", "full": "random weights", "procedural": "the procedural toy world"}


def weights_kind(preset: str | None) -> str | None:
    """The weights of a preset by name ("hub", "tiny", "full", "procedural"), None when unknown."""
    from ..models.presets import get_preset

    try:
        return get_preset(preset).weights if preset else None
    except OvdiffError:
        return None
