"""Stable Diffusion v1.5 components: real weights by hub id or local directory, or seeded random weights.

Every variant is the same set of diffusers/transformers classes, so sampling and feature
extraction never know which one they got.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ModelLoadError

SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"

# SD v1.5's noise schedule (its scheduler_config.json), used by the random-weight variants.
_SD15_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
)


@dataclass
class SDComponents:
    """The parts of a Stable Diffusion pipeline, loaded once per run."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    source: str  # hub id, local path, or "random:<config>"
    revision: str | None = None

    def pipeline(self):
        """A stock `StableDiffusionPipeline` over these parts (no safety checker: support sets are internal)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def dpm_solver(config: dict | None = None):
    """DPM-Solver++ multistep, the paper's sampler (App. C.5)."""
    from diffusers import DPMSolverMultistepScheduler

    cfg = dict(_SD15_SCHEDULE if config is None else config)
    cfg.update(algorithm_type="dpmsolver++", solver_order=2)
    return DPMSolverMultistepScheduler.from_config(cfg)


def _finish(parts: SDComponents, device: torch.device, dtype: torch.dtype) -> SDComponents:
    for m in (parts.unet, parts.vae, parts.text_encoder):
        m.to(device=device)
        if dtype != torch.float32:
            m.to(dtype=dtype)
        m.eval()
        m.requires_grad_(False)
    return parts


def random_sd(size: str, seed: int, device: torch.device, dtype: torch.dtype) -> SDComponents:
    """SD v1.5's classes with seeded random weights: `tiny` (seconds on a CPU) or `full` (real FLOPs)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import offline_clip_tokenizer, tiny_clip_text_config

    torch.manual_seed(seed)
    down = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    up = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    if size == "tiny":
        text_cfg = tiny_clip_text_config("quick_gelu")
        unet = UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(16, 16, 32, 32),
            layers_per_block=1,
            down_block_types=down,
            up_block_types=up,
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            norm_num_groups=4,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.18215,
        )
    elif size == "full":
        text_cfg = CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=768,
            hidden_act="quick_gelu",
        )
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.18215,
        )
    else:
        raise ValueError(f"unknown random SD size {size!r}")
    parts = SDComponents(
        unet=unet,
        vae=vae,
        text_encoder=CLIPTextModel(text_cfg),
        tokenizer=offline_clip_tokenizer(),
        scheduler=dpm_solver(),
        source=f"random:{size}:seed{seed}",
    )
    return _finish(parts, device, dtype)


def load_sd(spec: str, device: torch.device, dtype: torch.dtype, revision: str | None = None) -> SDComponents:
    """Real weights from a hub id or a local diffusers directory (honours HF_HOME / HF_HUB_OFFLINE)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        kw = dict(revision=revision)
        tokenizer = CLIPTokenizer.from_pretrained(spec, subfolder="tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(spec, subfolder="text_encoder", **kw)
        unet = UNet2DConditionModel.from_pretrained(spec, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(spec, subfolder="vae", **kw)
        from diffusers import DPMSolverMultistepScheduler

        sched_cfg = DPMSolverMultistepScheduler.load_config(spec, subfolder="scheduler", **kw)
    except Exception as e:  # hub, network, file and format errors all end the same way for the user
        raise ModelLoadError("Stable Diffusion", "sd", spec, e) from e
    parts = SDComponents(unet, vae, text_encoder, tokenizer, dpm_solver(sched_cfg), source=spec, revision=revision)
    return _finish(parts, device, dtype)


def looks_local(spec: str) -> bool:
    """Whether a model spec names a path rather than a hub id ("org/name") or a built-in name."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec
