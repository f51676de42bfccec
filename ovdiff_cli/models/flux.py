"""FLUX.1's components (MM-DiT, flow matching): real weights by hub id or folder, or a tiny random config.

FLUX.1 reads the prompt twice: CLIP ViT-L gives one pooled vector (the timestep conditioning), T5
gives the token states the transformer attends to, so the class tokens are found in T5's
tokenisation. The T5 prompt is padded to a fixed length (`text_len`) and no mask is applied, so the
transformer's text sequence always has that many tokens. `tiny` builds the same classes with a few
channels, shaped as diffusers' own FLUX pipeline tests shape theirs, and a T5 tokenizer built in code
(no download).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ModelLoadError
from .freeze import freeze

TINY_TEXT_LEN = 32  # the tiny config's T5 prompt length: enough for any template and a short name


@dataclass
class FluxComponents:
    transformer: Any
    vae: Any
    text_encoder: Any  # CLIP: the pooled vector only
    text_encoder_2: Any  # T5: the token states the transformer attends to
    tokenizer: Any
    tokenizer_2: Any
    scheduler: Any
    source: str
    text_len: int  # the T5 prompt's length in tokens (padded to it, cut at it)
    revision: str | None = None

    def pipeline(self):
        from diffusers import FluxPipeline

        return FluxPipeline(
            transformer=self.transformer,
            scheduler=self.scheduler,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
        )


def flux_text_len(turbo: bool) -> int:
    """The T5 prompt length Black Forest Labs use: 256 tokens for schnell (the Turbo), 512 for dev."""
    return 256 if turbo else 512


def _freeze(parts: FluxComponents, device: torch.device, dtype: torch.dtype) -> FluxComponents:
    parts.tokenizer_2.model_max_length = parts.text_len  # the class tokens are looked up within it
    freeze([(m, dtype) for m in (parts.transformer, parts.text_encoder, parts.text_encoder_2, parts.vae)], device)
    return parts


def offline_t5_tokenizer(model_max_length: int = TINY_TEXT_LEN):
    """A `T5TokenizerFast` over a character vocabulary, built in code: T5's special-token ids (pad 0,
    end 1, unknown 2), SentencePiece's "▁" word marks and its end-of-text suffix, so any ASCII name
    tokenises (into characters) and the class tokens are found as with the real tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + c, -2.0) for c in chars] + [(c, -2.0) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(tokenizer_object=tok, extra_ids=0, model_max_length=model_max_length)


def tiny_flux(seed: int, guidance: bool, device: torch.device, dtype: torch.dtype) -> FluxComponents:
    """FLUX.1's classes with a few channels and seeded random weights; `guidance`: dev's embedded
    guidance input (schnell has none). One double-stream and one single-stream block of 2 heads; a
    two-level VAE (64 px → 16×16 image tokens)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from .tokenizer import offline_clip_tokenizer, tiny_clip_text_config

    torch.manual_seed(seed)
    tokenizer_2 = offline_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance,
        axes_dims_rope=(4, 4, 8),
    )  # (16 = 4 latent channels × 2×2 patch)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    clip = tiny_clip_text_config("gelu")
    t5 = T5Config(
        vocab_size=len(tokenizer_2),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
    )
    parts = FluxComponents(
        transformer,
        vae,
        CLIPTextModel(clip),
        T5EncoderModel(t5),
        offline_clip_tokenizer(),
        tokenizer_2,
        FlowMatchEulerDiscreteScheduler(),
        f"random:tiny:seed{seed}",
        TINY_TEXT_LEN,
    )
    return _freeze(parts, device, dtype)


def load_flux(spec: str, text_len: int, device: torch.device, dtype: torch.dtype) -> FluxComponents:
    """Real FLUX.1 weights (gated on the hub) from a hub id or a local diffusers directory."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    try:
        kw = {"torch_dtype": dtype}
        parts = FluxComponents(
            FluxTransformer2DModel.from_pretrained(spec, subfolder="transformer", **kw),
            AutoencoderKL.from_pretrained(spec, subfolder="vae", **kw),
            CLIPTextModel.from_pretrained(spec, subfolder="text_encoder", **kw),
            T5EncoderModel.from_pretrained(spec, subfolder="text_encoder_2", **kw),
            CLIPTokenizer.from_pretrained(spec, subfolder="tokenizer"),
            T5TokenizerFast.from_pretrained(spec, subfolder="tokenizer_2"),
            FlowMatchEulerDiscreteScheduler.from_pretrained(spec, subfolder="scheduler"),
            spec,
            text_len,
        )
    except Exception as e:
        raise ModelLoadError("FLUX.1", "generator", spec, e) from e
    return _freeze(parts, device, dtype)
