"""Paper §3 "Support set generation" with FLUX.1: attribution from its joint attention (as for SD3, method/beyond/mmdit.py).

FLUX.1's transformer has two kinds of blocks, both attending over the joint sequence [text, image]
(text first) with fused attention, which never forms the probabilities:
- double-stream blocks project image and text tokens with separate weights (`to_q`/`to_k` for the
  image, `add_q_proj`/`add_k_proj` for the text) and get the two streams as separate inputs;
- single-stream blocks get one sequence, the text's `text_len` tokens then the image's, projected
  with the same weights.
Both then normalise q and k per head (RMSNorm) and rotate them by their positions (RoPE; the text's
positions are all zero). `FluxAttributionProcessor` wraps each block's stock processor: before it
runs, it forms the image queries and the text keys exactly so (the same projections, norms and
rotations, in float32) and softmax(QKᵀ/√d) over the text keys for the image queries only — the
image × text block, never the rest — and hands the class tokens' columns to the recorder, which sums
them over blocks, heads and steps as it does for SD3 and the UNet families. The layer's output is
the stock processor's, untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import InvalidSetting
from ...models.generators import GeneratorFamily
from ...types import Sample
from ..stage1_support.sampling import AttributionRecorder, pipe_arguments
from .generators import check_turbo
from .mmdit import JointAttentionGenerator, samples

if TYPE_CHECKING:
    import torch

    from ...config import SampleConfig


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, heads·d) → (B, heads, S, d)."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def flux_image_text_probs(
    attn,
    hidden_states: torch.Tensor,
    text_states: torch.Tensor | None,
    rotary: tuple[torch.Tensor, torch.Tensor] | None,
    text_len: int,
) -> torch.Tensor:
    """(B, heads, N image tokens, T text tokens) float32: softmax over the text keys of the image queries.

    hidden_states: (B, N, C) image tokens of a double-stream block, or (B, T + N, C) text then image
    tokens of a single-stream block (text_states None, T = text_len). rotary: the block's (cos, sin),
    each (T + N, d), text positions first.
    """
    from diffusers.models.embeddings import apply_rotary_emb

    if text_states is None:  # single-stream: one sequence, one set of projections
        text_states, hidden_states = hidden_states[:, :text_len], hidden_states[:, text_len:]
        to_k, norm_k = attn.to_k, attn.norm_k
    else:
        to_k, norm_k = attn.add_k_proj, attn.norm_added_k
    n_text = text_states.shape[1]
    query = attn.norm_q(_heads(attn.to_q(hidden_states), attn.heads)).float()
    key = norm_k(_heads(to_k(text_states), attn.heads)).float()
    if rotary is not None:
        cos, sin = rotary
        query = apply_rotary_emb(query, (cos[n_text:], sin[n_text:]))  # (B, heads, S, d) layout
        key = apply_rotary_emb(key, (cos[:n_text], sin[:n_text]))
    return (query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5).softmax(dim=-1)


class FluxAttributionProcessor:
    """A FLUX block's own attention processor, plus the class tokens' image × text probabilities."""

    def __init__(self, inner, recorder: AttributionRecorder, text_len: int):
        self.inner, self.recorder, self.text_len = inner, recorder, text_len

    # FluxAttention passes only the arguments named here, so the signature is the stock processor's
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        self.recorder.add(
            flux_image_text_probs(attn, hidden_states, encoder_hidden_states, image_rotary_emb, self.text_len)
        )
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


class FluxGenerator(JointAttentionGenerator):
    """FLUX.1 (schnell, dev) through the stock diffusers pipeline, with attribution from its joint attention.

    One pass per step (no classifier-free guidance, so no negative prompt): schnell takes no guidance,
    dev the guidance scale as its embedded guidance input.
    """

    def __init__(self, family: GeneratorFamily, flux):
        super().__init__(family, flux, flux.tokenizer_2)

    def generate(self, class_name: str, seeds: list[int], config: SampleConfig) -> list[Sample]:
        """As `sampling.SDGenerator.generate`: images (size², 3) uint8 and maps (attribution_size²) float32 >= 0."""
        if self.family.turbo:
            check_turbo(self.family.name, config)
        stride = 2 * self.pipe.vae_scale_factor  # the VAE's stride times FLUX's 2×2 latent patches
        if config.size % stride:
            raise InvalidSetting(
                "size", f"{self.family.name} draws sides that are multiples of {stride}, got {config.size}"
            )
        recorder = AttributionRecorder(self.token_indices(class_name, config), False, config.attribution_size)
        images = self.draw(
            lambda inner: FluxAttributionProcessor(inner, recorder, self.parts.text_len),
            **pipe_arguments(config, class_name, seeds, None),
            max_sequence_length=self.parts.text_len,
            output_type="pt",
        )  # (B, 3, size, size) in [0, 1]
        return samples(images * 2 - 1, recorder)
