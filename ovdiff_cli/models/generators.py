"""Support-set generators beyond SD1.5, by spec (`--generator FAMILY[=HUB_ID_OR_DIR]`).

Without `--generator` the paper's SD1.5 (`--sd-model`, models/sd.py) draws the support sets, as
before. A family here names the diffusers pipeline, a default hub id and whether it is a Turbo
(adversarially distilled: 1–4 steps, no classifier-free guidance, so no negative prompt):

- `sd-turbo`: SD 2.1's UNet, `StableDiffusionPipeline`, the SD1.5 code path with Turbo settings;
- `sdxl`, `sdxl-turbo`: `StableDiffusionXLPipeline`, two CLIP text encoders whose token states are
  concatenated, so a class name has the same token positions in both;
- `sd3`: `StableDiffusion3Pipeline` (MM-DiT joint attention, models/mmdit.py, method/beyond/mmdit.py);
- `flux-schnell` (also `flux`), `flux-dev`: `FluxPipeline` (MM-DiT with double- and single-stream
  blocks, T5 prompt tokens; models/flux.py, method/beyond/flux.py). schnell is the Turbo of the two (1–4
  steps, no guidance); dev takes FLUX's embedded guidance (one pass, no negative prompt), 3.5 by default.

`tiny` weights (the `tiny` preset) build the same diffusers/transformers classes with a few channels,
shaped as diffusers' own pipeline tests shape theirs; there is no full-size random copy of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidSetting, ModelLoadError
from .freeze import freeze


@dataclass(frozen=True)
class GeneratorFamily:
    name: str
    pipeline: str  # "sd", "sdxl", "sd3" or "flux"
    hub_id: str
    turbo: bool
    licence: str
    guidance: float | None = None  # its default guidance where the paper's 8.0 does not suit it


GENERATORS: dict[str, GeneratorFamily] = {
    g.name: g
    for g in (
        GeneratorFamily("sd-turbo", "sd", "stabilityai/sd-turbo", True, "Stability AI Community licence"),
        GeneratorFamily("sdxl", "sdxl", "stabilityai/stable-diffusion-xl-base-1.0", False, "CreativeML Open RAIL++-M"),
        GeneratorFamily("sdxl-turbo", "sdxl", "stabilityai/sdxl-turbo", True, "Stability AI Community licence"),
        GeneratorFamily(
            "sd3",
            "sd3",
            "stabilityai/stable-diffusion-3-medium-diffusers",
            False,
            "Stability AI Community licence; gated: accept the terms on the hub first",
        ),
        GeneratorFamily(
            "flux-schnell",
            "flux",
            "black-forest-labs/FLUX.1-schnell",
            True,
            "Apache-2.0; gated: accept the terms on the hub first",
        ),
        GeneratorFamily(
            "flux-dev",
            "flux",
            "black-forest-labs/FLUX.1-dev",
            False,
            "FLUX.1 [dev] Non-Commercial License; gated: accept the terms on the hub first",
            guidance=3.5,
        ),
    )
}
ALIASES = {"flux": "flux-schnell"}  # another name of a family: the same support sets
MMDIT_PIPELINES = (
    "sd3",
    "flux",
)  # joint attention, flow-matching Euler sampler (method/beyond/mmdit.py's FLOW_SCHEDULER)
TURBO_STEPS = 4  # a Turbo family's default steps (it takes 1–4)


def parse_generator(spec: str, weights: str) -> tuple[GeneratorFamily, str]:
    """`sdxl-turbo` or `sdxl-turbo=HUB_ID_OR_DIR` on a preset with `weights` → (family, source): the
    given hub id or folder, else the family's hub id (`hub`) or `tiny` (random-weight presets)."""
    name, _, source = spec.partition("=")
    name = name.strip().lower()
    family = GENERATORS.get(ALIASES.get(name, name))
    if family is None:
        raise InvalidSetting(
            "generator", f"{spec!r}: use one of {', '.join([*GENERATORS, *ALIASES])}, optionally =HUB_ID_OR_DIR"
        )
    if source.strip():
        return family, source.strip()
    if weights == "hub":
        return family, family.hub_id
    if weights == "tiny":
        return family, "tiny"
    raise InvalidSetting(
        "generator",
        f"{name}: no random-weight copy for preset weights {weights!r}; use the tiny preset or real weights",
    )


@dataclass
class SDXLComponents:
    """The parts of an SDXL pipeline, loaded once per run."""

    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    scheduler: Any
    source: str
    revision: str | None = None

    def pipeline(self):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet,
            scheduler=self.scheduler,
        )


def _freeze(parts: SDXLComponents, device: torch.device, dtype: torch.dtype) -> SDXLComponents:
    # SDXL's VAE overflows in fp16 (its config says force_upcast): it decodes in fp32
    vae_dtype = torch.float32 if getattr(parts.vae.config, "force_upcast", False) else dtype
    freeze(
        [(parts.unet, dtype), (parts.text_encoder, dtype), (parts.text_encoder_2, dtype), (parts.vae, vae_dtype)],
        device,
    )
    return parts


def tiny_sdxl(seed: int, device: torch.device, dtype: torch.dtype) -> SDXLComponents:
    """SDXL's classes with a few channels and seeded random weights (two text encoders of width 32)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from .sd import dpm_solver
    from .tokenizer import offline_clip_tokenizer, tiny_clip_text_config

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=1,
    )  # (80 = 6 size/crop ids × 8 + the pooled text embedding's 32)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.13025,
    )
    text = tiny_clip_text_config("gelu")
    parts = SDXLComponents(
        unet,
        vae,
        CLIPTextModel(text),
        CLIPTextModelWithProjection(text),
        offline_clip_tokenizer(),
        offline_clip_tokenizer(),
        dpm_solver(),
        f"random:tiny:seed{seed}",
    )
    return _freeze(parts, device, dtype)


def load_sdxl(spec: str, device: torch.device, dtype: torch.dtype) -> SDXLComponents:
    """Real SDXL / SDXL-Turbo weights from a hub id or a local diffusers directory."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from .sd import dpm_solver

    try:
        kw = {"torch_dtype": dtype}
        parts = SDXLComponents(
            UNet2DConditionModel.from_pretrained(spec, subfolder="unet", **kw),
            AutoencoderKL.from_pretrained(spec, subfolder="vae"),
            CLIPTextModel.from_pretrained(spec, subfolder="text_encoder", **kw),
            CLIPTextModelWithProjection.from_pretrained(spec, subfolder="text_encoder_2", **kw),
            CLIPTokenizer.from_pretrained(spec, subfolder="tokenizer"),
            CLIPTokenizer.from_pretrained(spec, subfolder="tokenizer_2"),
            dpm_solver(DPMSolverMultistepScheduler.load_config(spec, subfolder="scheduler")),
            spec,
        )
    except Exception as e:
        raise ModelLoadError("SDXL", "generator", spec, e) from e
    return _freeze(parts, device, dtype)
