"""Vision transformers: OpenAI CLIP ViT-B/16 (open_clip), DINO ViT-B/8 and MAE (timm).

Each loader takes one spec string (open_clip's idea): a built-in name with tag, an `hf-hub:`
id, or a local weights file; `tiny` and `random` build the same classes with seeded random weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError

CLIP_SPEC = "ViT-B-16:openai"
DINO_SPEC = "vit_base_patch8_224.dino"
MAE_SPEC = "vit_large_patch16_224.mae"


@dataclass
class ClipModel:
    """An open_clip CLIP model with its tokenizer (text prompts → ids)."""

    model: Any
    tokenizer: Any
    source: str


_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin")


def _weights_file(path: Path) -> Path:
    """A weights file, or the one inside a downloaded repository folder (`hf download … --local-dir`)."""
    if path.is_dir():
        for name in _WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no weights file ({', '.join(_WEIGHT_FILES)}) in {path}")
    return path


def _prepare(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return model


def load_clip(spec: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> ClipModel:
    """`ViT-B-16:openai`, `hf-hub:org/repo`, a local weights file, `tiny` or `random`."""
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-16")  # ships its vocabulary: no download
    torch.manual_seed(seed)
    if spec == "tiny":
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        model = CLIP(
            embed_dim=32,
            vision_cfg=CLIPVisionCfg(layers=3, width=64, head_width=32, patch_size=16, image_size=224),
            text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
            quick_gelu=True,
        )
    elif spec == "random":
        import logging

        level = logging.root.level  # open_clip warns on the root logger that no weights were loaded: intended here
        logging.root.setLevel(logging.ERROR)
        try:
            model = open_clip.create_model("ViT-B-16", pretrained=None)
        finally:
            logging.root.setLevel(level)
    else:
        try:
            if spec.startswith("hf-hub:"):
                model = open_clip.create_model(spec)
            elif Path(spec).expanduser().exists():
                model = open_clip.create_model("ViT-B-16", pretrained=str(_weights_file(Path(spec).expanduser())))
            else:
                name, _, tag = spec.partition(":")
                model = open_clip.create_model(name, pretrained=tag or "openai")
        except Exception as e:
            repo = "timm/vit_base_patch16_clip_224.openai" if spec == CLIP_SPEC else None
            raise ModelLoadError("CLIP", "clip", spec, e, repo) from e
    return ClipModel(_prepare(model, device, dtype), tokenizer, spec)


def load_timm_vit(spec: str, kind: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """A timm ViT (`kind` is "dino" or "mae") that runs at any input size (`dynamic_img_size`)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    patch = 8 if kind == "dino" else 16
    if spec == "tiny":
        model = VisionTransformer(
            img_size=224, patch_size=patch, embed_dim=64, depth=2, num_heads=2, num_classes=0, dynamic_img_size=True
        )
    elif spec == "random":
        name = DINO_SPEC if kind == "dino" else MAE_SPEC
        model = timm.create_model(name.split(".")[0], pretrained=False, num_classes=0, dynamic_img_size=True)
    else:
        try:
            local = Path(spec).expanduser()
            if local.exists():
                name = DINO_SPEC if kind == "dino" else MAE_SPEC
                model = timm.create_model(
                    name,
                    pretrained=True,
                    num_classes=0,
                    dynamic_img_size=True,
                    pretrained_cfg_overlay=dict(file=str(_weights_file(local))),
                )
            else:
                model = timm.create_model(spec, pretrained=True, num_classes=0, dynamic_img_size=True)
        except Exception as e:
            raise ModelLoadError(kind.upper(), kind, spec, e, f"timm/{spec}") from e
    return _prepare(model, device, dtype)
