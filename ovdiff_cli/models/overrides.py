"""The model options of the command line (`--part-model`, `--filter-model`, `--generator`) → model
overrides by role, each bad value refused in one line that names the option and the choices."""

from __future__ import annotations

from ..errors import InvalidSetting
from .dense import FAMILIES
from .filtermodels import FILTERS
from .generators import TURBO_STEPS, parse_generator


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
