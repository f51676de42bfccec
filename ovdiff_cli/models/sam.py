"""Segment Anything through transformers' `mask-generation` pipeline, by hub id or local directory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelLoadError

if TYPE_CHECKING:
    import torch

SAM_SPEC = "facebook/sam-vit-base"  # the default of --sam-model


def load_sam(spec: str, device: torch.device, dtype: torch.dtype):
    """The pipeline for `spec`, or a ModelLoadError saying how to get the weights (or do without them)."""
    from transformers import pipeline

    from .sd import weights_hint

    try:
        return pipeline("mask-generation", model=spec, device=device, dtype=dtype)
    except Exception as e:  # hub, network, file and format errors all end the same way for the user
        hint = weights_hint("SAM", spec, e, "--sam-model DIR")
        raise ModelLoadError(f"{hint}; or use --mask-proposer ncut, which needs no extra weights") from e
