"""Paper §3 "Support set generation": Stable Diffusion draws each class's support set, with attribution maps.

Stable Diffusion draws N images of "A good picture of a <class>"; while it denoises, the
cross-attention probabilities of the class-name tokens are upsampled (bicubic, clamped at 0) per
layer, head and token and summed over them and over the steps (conditional branch only, as in DAAM
and the authors' `sd.py`): that sum is the attribution map A_n the masks stage uses to pick
foreground and background. Images are seeded one by one, so image i
of a class starts from the same noise whatever the vocabulary or an interruption in between (and,
with the same batch size, has the same pixels; other batch sizes may differ by float rounding).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from ...config import SCHEDULER, generator_fields
from ...errors import LongNameWarning, OvdiffError
from ...types import Sample

if TYPE_CHECKING:
    import torch

    from ...config import SampleConfig
    from ...models.sd import SDComponents


# --------------------------------------------------------------------------- seeds and keys


def image_seed(class_norm: str, base_seed: int, index: int) -> int:
    """Seed of image `index` of a class: a hash, so it depends on nothing but these three values."""
    digest = hashlib.sha256(json.dumps([class_norm, base_seed, index], ensure_ascii=False).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------- tokens


def class_token_indices(tokenizer, template: str, class_name: str) -> list[int]:
    """Positions of the class name's tokens in the tokenized prompt (CLIP: start-of-text is position 0;
    T5, FLUX's prompt tokenizer, has none).

    CLIP's BPE and T5's SentencePiece split on whitespace before merging, so the name tokenizes the
    same alone as inside the template; the match is checked against the full prompt all the same.
    Tokens cut off by the context (CLIP's 77) are dropped; a name cut off entirely is an error.
    """
    prefix = template.split("{}", 1)[0].rstrip()  # SentencePiece makes a token of a trailing space
    full = tokenizer(template.format(class_name), truncation=True, max_length=tokenizer.model_max_length).input_ids
    name_ids = tokenizer(class_name, add_special_tokens=False, verbose=False).input_ids
    lead = len(tokenizer("").input_ids) - 1  # special tokens before the text: all but end-of-text
    start = lead + len(tokenizer(prefix, add_special_tokens=False).input_ids)
    last = len(full) - 1  # end-of-text
    if not name_ids:
        raise OvdiffError(f"class name {class_name!r} has no tokens: use a word or phrase")
    if start >= last:
        raise OvdiffError(
            f"prompt template {template!r} is too long: the class name falls outside the "
            f"{tokenizer.model_max_length}-token context"
        )
    indices = list(range(start, min(start + len(name_ids), last)))
    if len(indices) < len(name_ids):
        note_long_name(class_name, len(name_ids), len(indices), tokenizer.model_max_length)
    if [full[i] for i in indices] != name_ids[: len(indices)]:
        raise OvdiffError(
            f"class name {class_name!r} does not tokenize the same inside {template!r}: separate '{{}}' with spaces"
        )
    return indices


_NOTED: set[str] = set()


def note_long_name(name: str, n_tokens: int, kept: int, context: int) -> None:
    """Say once per name, in our words, that the text encoder sees only the start of it."""
    import warnings

    if name in _NOTED:
        return
    _NOTED.add(name)
    shown = name if len(name) <= 60 else name[:57] + "..."
    warnings.warn(
        LongNameWarning(
            f"class name {shown!r} is {n_tokens} tokens; the text encoder reads {context} tokens per prompt, "
            f"so only its first {kept} are used: a shorter name is drawn and matched as well"
        ),
        stacklevel=2,
    )


# --------------------------------------------------------------------------- attention capture


class AttributionRecorder:
    """The class tokens' attribution map, summed as the authors' DAAM store does (sdov `sd.py`).

    Every captured layer's probability map of each head and class token is resized to size×size
    bicubically and clamped at 0 (bicubic overshoots below 0 beside sharp peaks; the clamp applies
    to each map before the sum, not to the sum), then added over heads, tokens, layers and steps.
    Levels smaller than `size` are upsampled, larger ones downsampled with antialiasing. `total`:
    (B, size, size) float32 once a layer was captured.
    """

    def __init__(self, token_indices: list[int], cfg: bool, size: int):
        self.token_indices, self.cfg, self.size = token_indices, cfg, size
        self.total: torch.Tensor | None = None

    def add(self, probs: torch.Tensor) -> None:
        """probs: (B, heads, n, tokens) softmax over the text tokens, conditional images only; the n
        query positions are a square grid (the sampled images are square: config.size is one side)."""
        import torch.nn.functional as F

        b, heads, n, _ = probs.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"cross-attention over {n} positions is not a square grid")
        m = probs[..., self.token_indices].float().permute(0, 1, 3, 2).reshape(b, -1, side, side)
        up = (
            F.interpolate(
                m, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=side > self.size
            )
            .clamp_(min=0)
            .sum(1)
        )
        self.total = up if self.total is None else self.total.add_(up)

    def maps(self) -> torch.Tensor:
        """(B, size, size) float32 >= 0: the sum so far."""
        if self.total is None:
            raise ValueError("no cross-attention was captured: the UNet has no attn2 layers")
        return self.total


class CapturingCrossAttnProcessor:
    """Cross-attention that also hands the conditional half's class-token probabilities to a recorder.

    The output is computed exactly as diffusers' AttnProcessor2_0 (fused scaled-dot-product attention);
    only the conditional images' probabilities are formed explicitly, in float32, for the recorder.
    Supports the layout of SD-style cross-attention (3-D hidden states, no group/spatial norm).
    """

    def __init__(self, recorder: AttributionRecorder):
        self.recorder = recorder

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        import torch.nn.functional as F

        from ..precision import bmm_f32

        if (
            encoder_hidden_states is None
            or hidden_states.ndim != 3
            or attn.spatial_norm is not None
            or attn.group_norm is not None
        ):
            raise ValueError("attribution capture supports SD-style cross-attention layers only")
        residual = hidden_states
        batch, n_tokens = encoder_hidden_states.shape[:2]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, n_tokens, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        cond = slice(batch // 2, batch) if self.recorder.cfg else slice(0, batch)
        scores = bmm_f32(query[cond], key[cond].transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            scores = scores + attention_mask[cond].float()
        self.recorder.add(scores.softmax(dim=-1))

        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def capture_processors(unet, recorder: AttributionRecorder) -> dict:
    """A processor for every attention layer: capture on cross-attention (attn2), fused SDPA elsewhere."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    return {
        name: CapturingCrossAttnProcessor(recorder) if name.endswith("attn2.processor") else AttnProcessor2_0()
        for name in unet.attn_processors
    }


# --------------------------------------------------------------------------- generator


def pipe_arguments(config: SampleConfig, class_name: str, seeds: list[int], cfg: bool | None) -> dict:
    """What every generator's diffusers pipeline draws one class's batch with: the class prompt per image, each
    image's own seeded CPU generator (the same images on every device), and under classifier-free guidance
    (`cfg`) the negative prompt; None leaves it out (FLUX, guidance-distilled, takes none)."""
    import torch

    args = {
        "prompt": [config.prompt_template.format(class_name)] * len(seeds),
        "height": config.size,
        "width": config.size,
        "num_inference_steps": config.steps,
        "guidance_scale": config.guidance_scale,
        "generator": [torch.Generator().manual_seed(s) for s in seeds],
    }
    if cfg is not None:
        args["negative_prompt"] = [config.negative_prompt] * len(seeds) if cfg else None
    return args


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(B,3,H,W) in [-1,1] → list of HxWx3 uint8."""
    import torch

    arr = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to("cpu", dtype=torch.uint8)
    return list(arr.permute(0, 2, 3, 1).numpy())


class SDGenerator:
    """Stable Diffusion v1.5 through the stock diffusers pipeline, with attribution capture.

    The UNet's attention processors are swapped in for one call and restored after it, because the
    same UNet also serves as a feature extractor.
    """

    def __init__(self, sd: SDComponents):
        self.sd = sd
        self.pipe = self.sd.pipeline()
        self.pipe.set_progress_bar_config(disable=True)

    def identity(self) -> dict:
        return generator_fields(self.sd.source, self.sd.revision, SCHEDULER)

    def token_indices(self, class_name: str, config: SampleConfig) -> list[int]:
        return class_token_indices(self.sd.tokenizer, config.prompt_template, class_name)

    def generate(self, class_name: str, seeds: list[int], config: SampleConfig) -> list[Sample]:
        """One batch: image i from `seeds[i]` (a CPU torch.Generator each, so the noise, and the image,
        is the same on every device).

        Returns images (size, size, 3) uint8 and attribution maps (attribution_size²) float32 >= 0.
        """
        import torch

        unet = self.sd.unet
        cfg = config.guidance_scale > 1 and unet.config.time_cond_proj_dim is None
        recorder = AttributionRecorder(self.token_indices(class_name, config), cfg, config.attribution_size)
        original = unet.attn_processors
        unet.set_attn_processor(capture_processors(unet, recorder))
        # The pipeline's own "Token indices sequence length …" and "part of your input was truncated":
        # note_long_name said it once, in our words.
        quiet = [
            logging.getLogger(n)
            for n in (
                "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
                "transformers.tokenization_utils_base",
            )
        ]
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(logging.ERROR)
        try:
            latents = self.pipe(**pipe_arguments(config, class_name, seeds, cfg), output_type="latent").images
        finally:
            for q, level in zip(quiet, levels, strict=True):
                q.setLevel(level)
            unet.set_attn_processor(original)
        with torch.inference_mode():
            # Decoded here, in the VAE's own dtype: it stays fp32 when the UNet runs fp16.
            vae = self.sd.vae
            images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        maps = recorder.maps().cpu().numpy().astype(np.float32)
        return [Sample(image=img, attribution=att) for img, att in zip(to_uint8(images), maps, strict=True)]

    def attribute(
        self, class_name: str, images: list[np.ndarray], config: SampleConfig, seeds: list[int]
    ) -> list[np.ndarray]:
        """Attribution maps of the user's photos (size×size×3 uint8): one UNet pass of each, noised to the
        paper's feature timestep (t=200, as `features.SDPart`) with noise from `seeds[i]`, conditioned on
        the prompt; the class tokens' cross-attention is captured as while sampling (no guidance: one
        branch). Returns (attribution_size²) float32 >= 0 maps."""
        import torch

        from ..stage2_prototypes.features import SD_TIMESTEP

        sd, unet, vae = self.sd, self.sd.unet, self.sd.vae
        recorder = AttributionRecorder(self.token_indices(class_name, config), False, config.attribution_size)
        tok = sd.tokenizer
        ids = tok(
            [config.prompt_template.format(class_name)],
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        alpha_bar = float(sd.scheduler.alphas_cumprod[SD_TIMESTEP])
        original = unet.attn_processors
        unet.set_attn_processor(capture_processors(unet, recorder))
        try:
            with torch.inference_mode():
                text = sd.text_encoder(ids.to(unet.device))[0]
                x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(unet.device, vae.dtype) / 127.5 - 1
                z0 = torch.cat([vae.encode(xi).latent_dist.mean for xi in x.split(1)]) * vae.config.scaling_factor
                noise = torch.stack(
                    [torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds]
                )
                zt = math.sqrt(alpha_bar) * z0 + math.sqrt(1 - alpha_bar) * noise.to(z0.device, z0.dtype)
                t = torch.full((len(images),), SD_TIMESTEP, device=zt.device, dtype=torch.long)
                unet(zt.to(unet.dtype), t, encoder_hidden_states=text.expand(len(images), -1, -1).to(unet.dtype))
        finally:
            unet.set_attn_processor(original)
        return list(recorder.maps().cpu().numpy().astype(np.float32))
