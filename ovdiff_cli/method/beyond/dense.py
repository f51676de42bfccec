"""Paper §3 "Class prototypes", beyond the paper: the dense parts of today's extractor families.

`models.dense.FAMILIES` says which tokens each family gives: the last block's keys (DINOv2, SigLIP2:
`features.TimmKeysPart`, as the paper reads DINO) or its patch outputs after the final norm (DINOv3,
PE-Core, C-RADIO: `TimmOutputsPart` below). Either way prefix tokens (class, registers) are dropped
and the grid has the patch as its stride; `Part` normalises each location as for the paper's parts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...models.dense import FAMILIES
from ..stage2_prototypes.features import TimmKeysPart, TimmPart

if TYPE_CHECKING:
    import torch

    from ...types import Extractor


class TimmOutputsPart(TimmPart):
    """Patch outputs of a timm ViT's last block after its final norm; stride = patch."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] → (B,C,H/p,W/p) normed outputs of the last block (prefix tokens dropped)."""
        import torch

        m = self.model
        with torch.inference_mode():
            (out,) = m.forward_intermediates(
                self.model_input(images),
                indices=[len(m.blocks) - 1],
                norm=True,
                stop_early=True,
                intermediates_only=True,
                output_fmt="NCHW",
            )
            return out


def dense_backbone(part: str, model: torch.nn.Module, device: torch.device) -> Extractor:
    """The backbone of extractor family `part` over its loaded timm model: keys or outputs, as `FAMILIES` says."""
    cls = TimmKeysPart if FAMILIES[part].tokens == "keys" else TimmOutputsPart
    return cls(model, part, device)
