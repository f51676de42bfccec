"""Segment Anything through transformers' `mask-generation` pipeline, by hub id or local directory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelLoadError

if TYPE_CHECKING:
    import torch

SAM_SPEC = "facebook/sam-vit-base"  # the default of --sam-model


def load_sam(spec: str, device: torch.device, dtype: torch.dtype):
    """The pipeline for `spec`, or a ModelLoadError saying how to get the weights."""
    from transformers import pipeline

    try:
        return pipeline("mask-generation", model=spec, device=device, dtype=dtype)
    except Exception as e:  # hub, network, file and format errors all end the same way for the user
        raise ModelLoadError("SAM", "sam", spec, e) from e
