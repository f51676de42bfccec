"""Today's dense feature extractors beyond the paper's (DINOv2, DINOv3, SigLIP2, PE-Core, C-RADIO), by spec.

Each family is one extractor part (`--extractor sd+dinov2+clip`) whose model is a timm ViT named by
one spec string under the part's own role (`--part-model dinov2=SPEC`): a timm name with tag (the
hub copy at `timm/NAME`), `hf-hub:org/repo`, a local weights file or downloaded folder (read into the
family's default architecture), `tiny` (the same timm class with a few channels, seeded random
weights: CI runs every family's real code path offline) or `random` (full size, random weights).
timm holds them all, including the SigLIP2 and PE-Core towers that open_clip builds its models from.

`FAMILIES` is the one table of patch size, inference input size and tokens; README's model table
repeats it. "keys" are the last block's attention keys of the patch tokens (as the paper reads
DINO); "outputs" are the last block's patch outputs after the final norm, for the families whose
attention applies rotary position embeddings to the keys (DINOv3, PE-Core) or whose training target
is its outputs (C-RADIO, distilled from several teachers' output tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import InputSize
from ..errors import ModelLoadError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DenseFamily:
    """One extractor family: its part name, default spec (timm name.tag), patch size, input size at
    inference (`config.InputSize`), tokens read ("keys" or "outputs") and licence/gating note."""

    part: str
    spec: str
    patch: int
    inputs: InputSize
    tokens: str
    licence: str

    @property
    def arch(self) -> str:
        """The timm architecture without its pretrained tag (what `tiny`, `random` and local files build)."""
        return self.spec.split(".")[0]


FAMILIES: dict[str, DenseFamily] = {
    f.part: f
    for f in (
        DenseFamily(
            "dinov2", "vit_base_patch14_dinov2.lvd142m", 14, InputSize(cap=448, long_cap=800), "keys", "Apache-2.0"
        ),
        DenseFamily(
            "dinov2reg",
            "vit_base_patch14_reg4_dinov2.lvd142m",
            14,
            InputSize(cap=448, long_cap=800),
            "keys",
            "Apache-2.0; 4 register tokens, dropped with the class token",
        ),
        DenseFamily(
            "dinov3",
            "vit_base_patch16_dinov3.lvd1689m",
            16,
            InputSize(cap=448, long_cap=800),
            "outputs",
            "DINOv3 licence; gated on the hub (accept the terms on Meta's repository first)",
        ),
        DenseFamily("siglip2", "vit_base_patch16_siglip_224.v2_webli", 16, InputSize(square=448), "keys", "Apache-2.0"),
        DenseFamily(
            "pecore",
            "vit_pe_core_base_patch16_224.fb",
            16,
            InputSize(square=448),
            "outputs",
            "Apache-2.0 (Perception Encoder)",
        ),
        DenseFamily(
            "radio",
            "vit_base_patch16_radio_v3.c_radio",
            16,
            InputSize(square=448),
            "outputs",
            "NVIDIA Open Model License (C-RADIOv3)",
        ),
    )
}
TINY = dict(embed_dim=64, depth=2, num_heads=2)  # every family's tiny config: the same class, a few channels


def weights_file(path: Path) -> Path:
    """A weights file, or the one inside a downloaded timm repository folder."""
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no weights file (model.safetensors, pytorch_model.bin) in {path}")
    return path


def load_dense(part: str, spec: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """The timm ViT of extractor family `part` named by `spec`, runnable at any input size that is a
    multiple of its patch (`dynamic_img_size`), frozen, in eval mode, on `device` in `dtype`."""
    import timm
    import torch

    family = FAMILIES[part]
    torch.manual_seed(seed)
    common = dict(num_classes=0, dynamic_img_size=True)
    try:
        if spec == "tiny":
            model = timm.create_model(family.arch, pretrained=False, **common, **TINY)
        elif spec == "random":
            model = timm.create_model(family.arch, pretrained=False, **common)
        elif Path(spec).expanduser().exists():
            file = weights_file(Path(spec).expanduser())
            model = timm.create_model(
                family.spec, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), **common
            )
        else:
            model = timm.create_model(spec, pretrained=True, **common)
    except Exception as e:
        repo = spec.removeprefix("hf-hub:") if spec.startswith("hf-hub:") else f"timm/{spec}"
        raise ModelLoadError(part, part, spec, e, repo) from e
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
