"""Model presets, the model specs of a run, and where and in which dtype its models run.

A preset only decides which models get built (real weights, tiny random, full-size random, or the
procedural world) and the default sizes that suit them; every stage runs the same code on all of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import PART_INPUTS, InputSize, ProtoConfig, RunConfig, SampleConfig, SegmentConfig
from ..errors import InvalidSetting, OvdiffError
from .checkpoints import CUTLER_SPEC
from .dense import FAMILIES
from .generators import TURBO_STEPS
from .sd import SD15_HUB_ID
from .vit import CLIP_SPEC, DINO_SPEC, MAE_SPEC

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Preset:
    """A named choice of models plus the settings that suit them: the config dataclasses' defaults
    (the paper's), with the sizes a small preset changes."""

    name: str
    description: str
    weights: str  # "hub": real weights; "tiny"/"full": random weights; "procedural": the toy world
    models: dict[str, str] = field(default_factory=dict)
    sample: SampleConfig = SampleConfig()
    protos: ProtoConfig = ProtoConfig()
    segment: SegmentConfig = SegmentConfig()
    inputs: dict[str, InputSize] = field(default_factory=dict)  # part → its input size, over config.PART_INPUTS
    # the CutLER detector's input resize (short side, long-side cap): CutLER's own for 512 px support images
    detector_size: tuple[int, int] = (800, 1333)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "sd15",
            "Stable Diffusion v1.5 + OpenAI CLIP ViT-B/16 + DINO ViT-B/8, real weights (the paper's setup)",
            "hub",
            models={"sd": SD15_HUB_ID, "clip": CLIP_SPEC, "dino": DINO_SPEC, "mae": MAE_SPEC, "cutler": CUTLER_SPEC},
        ),
        Preset(
            "tiny",
            "the same model classes, tiny configs, seeded random weights: offline, seconds on a CPU (noise images)",
            "tiny",
            models={"sd": "tiny", "clip": "tiny", "dino": "tiny", "mae": "tiny", "cutler": "tiny"},
            sample=SampleConfig(n_images=4, steps=4, size=64, attribution_size=16),
            # ncut: a random-weight detector's detections are 20-30 noise boxes per image, which would leave
            # most support images without a background; `--mask-proposer cutler` runs the tiny detector
            protos=ProtoConfig(mask_proposer="ncut", k_parts=4, feature_size=64),
            detector_size=(100, 166),  # CutLER's 800/1333 at 512 px, scaled to 64 px support images
            segment=SegmentConfig(windows=(96, 64), stride=48, short_side=96, eta=4),
            # the paper's sizes scaled to this preset (support 512 → 64, windows 448 → 96)
            inputs={
                "sd": InputSize(square=64),
                "clip": InputSize(square=96),
                "dino": InputSize(cap=96, long_cap=176),
                "mae": InputSize(square=96),
                **{
                    p: InputSize(cap=96, long_cap=176) if f.inputs.cap else InputSize(square=96)
                    for p, f in FAMILIES.items()
                },
            },
        ),
        Preset(
            "sd15-random",
            "full-size SD1.5 / CLIP ViT-B/16 / DINO ViT-B/8 architectures with random weights, for benchmarks",
            "full",
            models={"sd": "random", "clip": "random", "dino": "random", "mae": "random", "cutler": "random"},
        ),
        Preset(
            "modern",
            "SDXL-Turbo draws (4 steps, no guidance), DINOv3 ViT-B/16 + SigLIP2 ViT-B/16 features, SigLIP2 filter; "
            "DINO ViT-B/8 cuts the masks. Real weights; its segmentation quality has NOT been measured on real images",
            "hub",
            models={
                "sd": SD15_HUB_ID,
                "clip": CLIP_SPEC,
                "dino": DINO_SPEC,
                "cutler": CUTLER_SPEC,
                "generator": "sdxl-turbo",
                "filter": "siglip2",
                "dinov3": FAMILIES["dinov3"].spec,
                "siglip2": FAMILIES["siglip2"].spec,
            },
            sample=SampleConfig(steps=TURBO_STEPS, guidance_scale=1.0),
            protos=ProtoConfig(extractor="dinov3+siglip2"),
        ),
        Preset(
            "procedural",
            "a procedural world of coloured shapes with known truth and a hand-made extractor: offline, meaningful masks",
            "procedural",
            models={"sd": "procedural", "clip": "procedural", "dino": "procedural"},
            sample=SampleConfig(n_images=8, size=128, attribution_size=32, steps=1),
            protos=ProtoConfig(
                extractor="procedural",
                mask_proposer="threshold",
                mask_features="procedural",
                k_parts=8,
                feature_size=128,
            ),
            segment=SegmentConfig(windows=(128, 96), stride=64, short_side=128, eta=4),
        ),
    )
}


def get_preset(name: str | None) -> Preset:
    """The preset called `name` (default `$OVDIFF_PRESET`, else RunConfig's: sd15), or a one-line error listing them."""
    name = name or os.environ.get("OVDIFF_PRESET") or RunConfig().preset
    try:
        return PRESETS[name]
    except KeyError:
        raise OvdiffError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class ModelSpecs:
    """Which models a run uses, named by spec strings alone (nothing is built): what the cache keys record.

    models: role ("sd", "clip", "dino", "mae", "sam", "cutler") → spec, the preset's with the user's overrides.
    weights_seed seeds the random-weight presets' models; the CLI always uses 0.
    """

    preset: Preset
    models: dict[str, str]
    weights_seed: int = 0

    @classmethod
    def of(
        cls,
        preset: Preset | str | None = None,
        overrides: Mapping[str, str | None] | None = None,
        weights_seed: int = 0,
    ) -> ModelSpecs:
        """The preset's models (a name, default `$OVDIFF_PRESET`, else sd15) with the given overrides (None: keep)."""
        p = preset if isinstance(preset, Preset) else get_preset(preset)
        models = dict(p.models)
        models.update({k: v for k, v in (overrides or {}).items() if v})
        return cls(p, models, weights_seed)

    def spec(self, role: str) -> str | None:
        """The spec of `role`'s model: the preset's or the user's, else for an extractor family of
        `models.dense` its default (`FAMILIES`; `tiny` / `random` on the random-weight presets)."""
        if role in self.models:
            return self.models[role]
        if role in FAMILIES:
            return {"hub": FAMILIES[role].spec, "tiny": "tiny", "full": "random"}.get(self.preset.weights)
        return None

    def identity(self) -> dict[str, str]:
        """Model sources as recorded in cache metadata."""
        return {"preset": self.preset.name, **self.models}

    def input_size(self, part: str) -> InputSize:
        """The input size `part` sees at inference: the preset's, else the authors' (config.PART_INPUTS)."""
        if part in self.preset.inputs:
            return self.preset.inputs[part]
        return FAMILIES[part].inputs if part in FAMILIES else PART_INPUTS[part]


def resolve_device(device: str) -> torch.device:
    """ "auto" → cuda > mps > cpu; anything else must be available."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise InvalidSetting("device", f"{device!r} is unknown; use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidSetting("device", f"{device!r} asked for but no CUDA GPU is available; use cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """ "auto" → bf16 on a CUDA GPU that supports it (fp16's range without its overflows), else fp16 on a
    GPU; fp32 on CPU. The paper's models take the authors' precisions instead (`role_dtype`)."""
    import torch

    table = {
        "fp16": torch.float16,
        "float16": torch.float16,
        "bf16": torch.bfloat16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    try:
        return table[dtype]
    except KeyError:
        raise InvalidSetting("dtype", f"{dtype!r} is unknown; use auto, fp16, bf16 or fp32") from None


# The authors' precisions on a GPU (sdov: SD loaded in fp16; CLIP, DINO, MAE and CutLER in fp32), what
# --dtype auto gives these roles on CUDA; every other model takes the GPU's half precision.
AUTHORS_DTYPES = {"sd": "fp16", "clip": "fp32", "dino": "fp32", "mae": "fp32", "cutler": "fp32"}


def role_dtype(role: str, dtype: str, device: torch.device) -> torch.dtype:
    """The dtype `role`'s model runs in: with "auto" on a CUDA GPU the authors' (`AUTHORS_DTYPES`), else
    `resolve_dtype(dtype, device)` (an explicit --dtype, bf16 included, holds for every model)."""
    if dtype == "auto" and device.type == "cuda" and role in AUTHORS_DTYPES:
        return resolve_dtype(AUTHORS_DTYPES[role], device)
    return resolve_dtype(dtype, device)
