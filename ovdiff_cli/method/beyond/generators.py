"""Paper §3 "Support set generation" with today's generators (SD-Turbo, SDXL, SDXL-Turbo; models/generators.py).

Their UNets attend to the prompt through the same diffusers cross-attention (`attn2`) as SD1.5, so
`sampling.SDGenerator` draws with them unchanged: the capture processor sums the class tokens'
probabilities over every cross-attention layer, head and step, the maps mean what SD1.5's mean.
SDXL's two text encoders share CLIP's BPE and their states are concatenated along the channels, so
the class name's token positions are those of the first tokenizer. Turbo families draw in 1–4 steps
without classifier-free guidance (so without the negative prompt); other settings are refused, not
changed, so the cache key of a support set always states how it was drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import InvalidSetting
from ...models.generators import TURBO_STEPS, GeneratorFamily
from ..stage1_support.sampling import SDGenerator

if TYPE_CHECKING:
    from ...config import SampleConfig
    from ...types import Sample


class FamilyGenerator(SDGenerator):
    """A generator family's stock diffusers pipeline with attribution capture."""

    def __init__(self, family: GeneratorFamily, parts):
        super().__init__(parts)
        self.family = family

    def identity(self) -> dict:
        return {**super().identity(), "family": self.family.name}

    def generate(self, class_name: str, seeds: list[int], config: SampleConfig) -> list[Sample]:
        if self.family.turbo:
            check_turbo(self.family.name, config)
        return super().generate(class_name, seeds, config)


def check_turbo(name: str, config: SampleConfig) -> None:
    """A Turbo family takes 1–4 steps and no guidance (scale ≤ 1), or a one-line error naming the option."""
    if not 1 <= config.steps <= TURBO_STEPS:
        raise InvalidSetting("steps", f"{name} draws in 1 to {TURBO_STEPS} steps, got {config.steps}")
    if config.guidance_scale > 1:
        raise InvalidSetting(
            "guidance_scale",
            f"{name} draws without classifier-free guidance: use 1 (off), got {config.guidance_scale:g}",
        )
