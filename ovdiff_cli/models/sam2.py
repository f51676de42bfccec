"""SAM 2 (the region source of `segment --refine sam2`) through transformers' `mask-generation` pipeline,
by hub id or local directory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelLoadError

if TYPE_CHECKING:
    import torch

SAM2_SPEC = "facebook/sam2.1-hiera-large"  # the default of --sam2-model (CorrCLIP's SAM 2 size)


def load_sam2(spec: str, device: torch.device, dtype: torch.dtype):
    """The automatic mask generation pipeline for `spec`, or a ModelLoadError saying how to get the weights."""
    from transformers import pipeline

    try:
        return pipeline("mask-generation", model=spec, device=device, dtype=dtype)
    except Exception as e:  # hub, network, file and format errors all end the same way for the user
        raise ModelLoadError("SAM 2", "sam2", spec, e) from e
