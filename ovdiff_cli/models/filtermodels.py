"""The category filter's image/text model by spec (`--filter-model`): OpenAI CLIP (the paper's), SigLIP2, PE-Core.

`clip` (the default) is the run's CLIP (`--clip-model`), as in the paper. `siglip2` and `pecore` name
open_clip's base models of those families (`FILTERS`); any other open_clip `NAME:TAG` or
`hf-hub:ORG/REPO` is used as given. On the random-weight presets a family name builds that family's
open_clip classes with seeded random weights: the full config on `sd15-random`, and on `tiny` the
same classes with a 2-block trunk and text tower of a few channels and the CLIP BPE tokenizer that
ships with open_clip (SigLIP2's own tokenizer is a hub download).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelLoadError
from .dense import TINY
from .vit import ClipModel

if TYPE_CHECKING:
    import torch

FILTERS = {"siglip2": "ViT-B-16-SigLIP2:webli", "pecore": "PE-Core-B-16:meta"}


def filter_source(spec: str | None, weights: str) -> str | None:
    """What a `--filter-model` spec loads on a preset with `weights` ("hub", "tiny", "full",
    "procedural"): an open_clip spec, `tiny:FAMILY` / `random:FAMILY`, or None for the run's CLIP."""
    if not spec or spec == "clip" or weights == "procedural":
        return None
    if spec in FILTERS:
        return {"hub": FILTERS[spec], "tiny": f"tiny:{spec}", "full": f"random:{spec}"}[weights]
    return spec


def _tiny(name: str, family_trunk: str):
    """open_clip's CustomTextCLIP of config `name` with a tiny trunk (timm class `family_trunk`) and text tower."""
    import open_clip
    import timm
    from open_clip.model import CustomTextCLIP

    cfg = open_clip.get_model_config(name)
    text = {k: v for k, v in cfg["text_cfg"].items() if k not in ("hf_tokenizer_name", "tokenizer_kwargs")}
    text.update(width=32, heads=2, layers=2, vocab_size=49408)
    embed = 32
    model = CustomTextCLIP(
        embed_dim=embed,
        vision_cfg=dict(cfg["vision_cfg"], timm_model_name="vit_tiny_patch16_224"),
        text_cfg=text,
        init_logit_bias=cfg.get("init_logit_bias"),
    )
    # the family's own trunk class at tiny size, pooled and projected to the embedding as open_clip does
    model.visual.trunk = timm.create_model(
        family_trunk, pretrained=False, num_classes=embed, global_pool=cfg["vision_cfg"]["timm_pool"], **TINY
    )
    return model, open_clip.tokenizer.SimpleTokenizer(context_length=text["context_length"])


def load_filter_model(source: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> ClipModel:
    """The open_clip model and tokenizer `filter_source` named, frozen on `device` in `dtype`."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    kind, _, family = source.partition(":")
    try:
        if kind in ("tiny", "random") and family in FILTERS:
            name, tag = FILTERS[family].split(":")
            if kind == "tiny":
                trunk = open_clip.get_model_config(name)["vision_cfg"]["timm_model_name"]
                model, tokenizer = _tiny(name, trunk)
            else:
                model = open_clip.create_model(name, pretrained=None)
                tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)
            cfg = open_clip.get_pretrained_cfg(name, tag)
            model.visual.image_mean, model.visual.image_std = cfg["mean"], cfg["std"]
        elif source.startswith("hf-hub:"):
            model, tokenizer = open_clip.create_model(source), open_clip.get_tokenizer(source)
        else:
            name, _, tag = source.partition(":")
            model, tokenizer = open_clip.create_model(name, pretrained=tag or None), open_clip.get_tokenizer(name)
    except Exception as e:
        raise ModelLoadError("category filter", "filter", source, e) from e
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return ClipModel(model, tokenizer, source)
