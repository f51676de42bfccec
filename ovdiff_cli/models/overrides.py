"""The model options of the command line (`--part-model`, `--filter-model`, `--generator`) → model
overrides by role, each bad value refused in one line that names the option and the choices."""

from __future__ import annotations

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
PROPOSER_ROLES = {"sam": ("sam_model", "SAM"), "cutler": ("mask_model", "CutLER")}  # a mask proposer's own model


def check_model_roles(models: dict[str, str], proto_cfg: ProtoConfig, segment_cfg: SegmentConfig) -> None:
    """Refuse, before any work, a model given for a stage this run does not have: a part the extractor
    lacks (and ncut does not cut), SAM or CutLER without their mask proposer, SAM 2 without SAM 2
    refinement. (A local path that does not exist is refused by `models.roles.check_models`.)"""
    from ..config import proposer_uses_features, spec_parts

    parts = set(spec_parts(proto_cfg.extractor))
    if proposer_uses_features(proto_cfg.mask_proposer):
        parts.add(proto_cfg.mask_features)
    for role, spec in models.items():
        if role in PART_ROLES and role not in parts:
            given = f"{role}={spec}" if role in FAMILIES else spec
            raise InvalidSetting(
                "part_model" if role in FAMILIES else f"{role}_model",
                f"{given}: extractor {proto_cfg.extractor} has no {role} part, so no {role} model is "
                f"used; add the part to the extractor or leave this out",
                way_out="extractor",
            )
        if role in PROPOSER_ROLES and proto_cfg.mask_proposer != role:
            setting, model = PROPOSER_ROLES[role]
            raise InvalidSetting(
                setting,
                f"{spec}: {model} is used only by the {role} mask proposer (this run's is {proto_cfg.mask_proposer}); "
                "choose it or leave this out",
                way_out="mask_proposer",
            )
        if role == "sam2" and segment_cfg.refine != "sam2":
            raise InvalidSetting(
                "sam2_model",
                f"{spec}: SAM 2 is used only by sam2 refinement (this run's is {segment_cfg.refine}); "
                "choose it or leave this out",
                way_out="refine",
            )
