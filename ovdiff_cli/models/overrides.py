"""The model options of the command line (`--part-model`, `--filter-model`, `--generator`) → model
overrides by role, each bad value refused in one line that names the option and the choices."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidSetting
from .dense import FAMILIES
from .filtermodels import FILTERS
from .generators import TURBO_STEPS, parse_generator

if TYPE_CHECKING:
    from ..config import ProtoConfig, SegmentConfig


def parse_part_models(given: list[str]) -> dict[str, str]:
    """`--part-model dinov2=SPEC` values → {part: spec}, or a one-line error naming the families."""
    out: dict[str, str] = {}
    for item in given:
        part, sep, spec = item.partition("=")
        part = part.strip().lower()
        if not sep or part not in FAMILIES or not spec.strip():
            raise InvalidSetting("part_model", f"{item!r}: give PART=SPEC with PART one of {', '.join(FAMILIES)}")
        out[part] = spec.strip()
    return out


def generator_defaults(spec: str | None, weights: str) -> dict:
    """The sampler settings a `--generator` family implies unless given: a Turbo's 4 steps, no guidance;
    another family's own guidance (FLUX.1-dev's 3.5)."""
    if spec is None:
        return {}
    family, _ = parse_generator(spec, weights)
    if family.turbo:
        return {"steps": TURBO_STEPS, "guidance_scale": 1.0}
    return {} if family.guidance is None else {"guidance_scale": family.guidance}


def check_filter_model(spec: str | None) -> str | None:
    """A `--filter-model` value as given, or a one-line error naming the choices."""
    if spec is None or spec in ("clip", *FILTERS) or ":" in spec:
        return spec
    raise InvalidSetting(
        "filter_model", f"{spec!r}: use clip, {', '.join(FILTERS)}, an open_clip NAME:TAG or hf-hub:ORG/REPO"
    )


# the model roles that name one part of the extractor (or the part whose features ncut cuts)
PART_ROLES = ("dino", "mae", *FAMILIES)
WEIGHT_NAMES = {
    "sd": "Stable Diffusion",
    "clip": "CLIP",
    "dino": "DINO",
    "mae": "MAE",
    "sam": "SAM",
    "sam2": "SAM 2",
    "cutler": "CutLER",
}
PROPOSER_ROLES = {"sam": "sam", "cutler": "cutler"}  # a mask proposer's own model: role → the proposer


def _setting(role: str) -> str:
    """The setting (and CLI option) that gives a role's model: dinov2 → part_model, sam2 → sam2_model."""
    return "part_model" if role in FAMILIES else "mask_model" if role == "cutler" else f"{role}_model"


def _given(role: str, spec: str) -> str:
    return f"{role}={spec}" if role in FAMILIES else spec


def check_model_roles(models: dict[str, str], proto_cfg: ProtoConfig, segment_cfg: SegmentConfig) -> None:
    """Refuse, before any work, a model given for a stage this run does not have (a part the extractor
    lacks, SAM without the SAM proposer, SAM 2 without SAM 2 refinement) and a local path that does not
    exist (a path is never a hub id: it would fail only after sampling, with download advice)."""
    from ..config import proposer_uses_features, spec_parts
    from .sd import looks_local

    parts = set(spec_parts(proto_cfg.extractor))
    if proposer_uses_features(proto_cfg.mask_proposer):
        parts.add(proto_cfg.mask_features)
    for role, spec in models.items():
        if role in PART_ROLES and role not in parts:
            raise InvalidSetting(
                _setting(role),
                f"{_given(role, spec)}: extractor {proto_cfg.extractor} has no {role} part, so no {role} model is "
                f"used; add the part to the extractor or leave this out",
                way_out="extractor",
            )
        if role in PROPOSER_ROLES and proto_cfg.mask_proposer != PROPOSER_ROLES[role]:
            raise InvalidSetting(
                _setting(role),
                f"{spec}: {WEIGHT_NAMES[role]} is used only by the {PROPOSER_ROLES[role]} mask proposer (this run's "
                f"is {proto_cfg.mask_proposer}); choose it or leave this out",
                way_out="mask_proposer",
            )
        if role == "sam2" and segment_cfg.refine != "sam2":
            raise InvalidSetting(
                "sam2_model",
                f"{spec}: SAM 2 is used only by sam2 refinement (this run's is {segment_cfg.refine}); "
                "choose it or leave this out",
                way_out="refine",
            )
        if (role in WEIGHT_NAMES or role in FAMILIES) and looks_local(spec) and not Path(spec).expanduser().exists():
            model = WEIGHT_NAMES.get(role) or role
            raise InvalidSetting(
                _setting(role),
                f"{_given(role, spec)}: no such file or folder; give the path of a downloaded copy of the {model} weights",
            )
