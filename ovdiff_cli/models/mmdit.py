"""SD3's components (MM-DiT joint attention): real weights by hub id or folder, or a tiny random config.

The T5 text encoder is left out (diffusers' SD3 pipeline supports this and pads its part of the
prompt with zeros): it is the largest of the three, and the class tokens' positions are those of the
two CLIP encoders, which come first in the joint text sequence. `tiny` builds the same classes with
a few channels, shaped as diffusers' own SD3 pipeline tests shape theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ModelLoadError
from .freeze import freeze


@dataclass
class SD3Components:
    transformer: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    scheduler: Any
    source: str
    revision: str | None = None

    def pipeline(self):
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(
            transformer=self.transformer,
            scheduler=self.scheduler,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
            text_encoder_3=None,
            tokenizer_3=None,
        )


def _freeze(parts: SD3Components, device: torch.device, dtype: torch.dtype) -> SD3Components:
    freeze([(m, dtype) for m in (parts.transformer, parts.text_encoder, parts.text_encoder_2, parts.vae)], device)
    return parts


def tiny_sd3(seed: int, device: torch.device, dtype: torch.dtype) -> SD3Components:
    """SD3's classes with a few channels and seeded random weights (two CLIP encoders of width 32)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    from .tokenizer import offline_clip_tokenizer, tiny_clip_text_config

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=64,
        pooled_projection_dim=64,
        out_channels=4,
    )  # (64 = the two CLIPs' 32 + 32)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    text = tiny_clip_text_config("gelu")
    parts = SD3Components(
        transformer,
        vae,
        CLIPTextModelWithProjection(text),
        CLIPTextModelWithProjection(text),
        offline_clip_tokenizer(),
        offline_clip_tokenizer(),
        FlowMatchEulerDiscreteScheduler(),
        f"random:tiny:seed{seed}",
    )
    return _freeze(parts, device, dtype)


def load_sd3(spec: str, device: torch.device, dtype: torch.dtype) -> SD3Components:
    """Real SD3.x weights (gated on the hub) from a hub id or a local diffusers directory, without T5."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    try:
        kw = {"torch_dtype": dtype}
        parts = SD3Components(
            SD3Transformer2DModel.from_pretrained(spec, subfolder="transformer", **kw),
            AutoencoderKL.from_pretrained(spec, subfolder="vae", **kw),
            CLIPTextModelWithProjection.from_pretrained(spec, subfolder="text_encoder", **kw),
            CLIPTextModelWithProjection.from_pretrained(spec, subfolder="text_encoder_2", **kw),
            CLIPTokenizer.from_pretrained(spec, subfolder="tokenizer"),
            CLIPTokenizer.from_pretrained(spec, subfolder="tokenizer_2"),
            FlowMatchEulerDiscreteScheduler.from_pretrained(spec, subfolder="scheduler"),
            spec,
        )
    except Exception as e:
        raise ModelLoadError("SD3", "generator", spec, e) from e
    return _freeze(parts, device, dtype)
