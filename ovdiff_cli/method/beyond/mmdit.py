"""Paper §3 "Support set generation" with an MM-DiT generator (SD3.x): attribution from joint attention.

SD3 attends once over the joint sequence [image tokens, text tokens] with fused attention, which
never forms the probabilities. `JointAttributionProcessor` wraps each layer's stock processor:
before it runs, it projects the image queries and the text keys as the layer does and forms
softmax(QKᵀ/√d) over the text keys for the image queries only — the image × text block, never the
image × image part — and hands the class tokens' columns to the recorder. Normalised over the text
tokens, the block means what SD1.5's cross-attention probabilities mean, and the recorder upsamples,
clamps and sums it over layers, heads and steps as it does for the UNet families.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ...config import FLOW_SCHEDULER, generator_fields
from ...models.generators import GeneratorFamily
from ...types import Sample
from ..stage1_support.sampling import AttributionRecorder, class_token_indices, pipe_arguments, to_uint8

if TYPE_CHECKING:
    import torch

    from ...config import SampleConfig


def image_text_probs(attn, hidden_states: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
    """(B, heads, N image tokens, T text tokens) float32: softmax over the text keys of the image queries."""
    b = hidden_states.shape[0]
    query = attn.to_q(hidden_states)
    key = attn.add_k_proj(text_states)
    head_dim = query.shape[-1] // attn.heads
    query = query.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_added_k is not None:
        key = attn.norm_added_k(key)
    return (query.float() @ key.float().transpose(-1, -2) * attn.scale).softmax(dim=-1)


class JointAttributionProcessor:
    """A layer's own joint-attention processor, plus the class tokens' image × text probabilities."""

    def __init__(self, inner, recorder: AttributionRecorder):
        self.inner, self.recorder = inner, recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is not None:  # SD3.5's extra self-attention layers have no text
            b = hidden_states.shape[0]
            cond = slice(b // 2, b) if self.recorder.cfg else slice(0, b)
            self.recorder.add(image_text_probs(attn, hidden_states[cond], encoder_hidden_states[cond]))
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


class JointAttentionGenerator:
    """A generator whose attribution comes from joint attention (SD3.x, FLUX.1): its family, its components and the
    stock diffusers pipeline; `draw` swaps the layers' processors for attribution processors around one call."""

    def __init__(self, family: GeneratorFamily, parts, tokenizer):
        self.family, self.parts, self.tokenizer = family, parts, tokenizer
        self.pipe = parts.pipeline()
        self.pipe.set_progress_bar_config(disable=True)

    def identity(self) -> dict:
        return generator_fields(self.parts.source, self.parts.revision, FLOW_SCHEDULER, self.family.name)

    def token_indices(self, class_name: str, config: SampleConfig) -> list[int]:
        return class_token_indices(self.tokenizer, config.prompt_template, class_name)

    def draw(self, processor: Callable[[object], object], **call):
        """The pipeline's output images for `call`, every attention layer's processor wrapped by `processor`."""
        model = self.parts.transformer
        original = model.attn_processors
        model.set_attn_processor({n: processor(p) for n, p in original.items()})
        try:
            return self.pipe(**call).images
        finally:
            model.set_attn_processor(original)


def samples(images, recorder: AttributionRecorder) -> list[Sample]:
    """Images (B,3,H,W) in [-1,1] and the recorder's maps → Samples: (H,W,3) uint8, (a,a) float32 >= 0."""
    maps = recorder.maps().cpu().numpy().astype(np.float32)
    return [Sample(image=img, attribution=att) for img, att in zip(to_uint8(images), maps, strict=True)]


class MMDiTGenerator(JointAttentionGenerator):
    """SD3.x through the stock diffusers pipeline, with attribution from its joint attention."""

    def __init__(self, family: GeneratorFamily, sd3):
        super().__init__(family, sd3, sd3.tokenizer)

    def generate(self, class_name: str, seeds: list[int], config: SampleConfig) -> list[Sample]:
        """As `sampling.SDGenerator.generate`: images (size², 3) uint8 and maps (attribution_size²) float32 >= 0."""
        import torch

        cfg = config.guidance_scale > 1
        recorder = AttributionRecorder(self.token_indices(class_name, config), cfg, config.attribution_size)
        latents = self.draw(
            lambda inner: JointAttributionProcessor(inner, recorder),
            **pipe_arguments(config, class_name, seeds, cfg),
            output_type="latent",
        )
        with torch.inference_mode():
            vae = self.parts.vae
            z = latents.to(vae.dtype) / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
            return samples(vae.decode(z).sample, recorder)
