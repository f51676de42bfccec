"""The settings of a Pipeline, checked once, at construction, with typed errors naming each setting
(`InvalidSetting`): what the API, the CLI and `ovdiff serve` are given passes through here, before any
work. The configs check their own fields (config.py); the model sources are checked against the one table
of model roles (models/roles.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ProtoConfig, RunConfig, SampleConfig, SegmentConfig, with_overrides
from .errors import InvalidSetting
from .models.roles import ModelOptions
from .models.roles import check_models as check_model_sources

if TYPE_CHECKING:
    from .models.presets import Preset


@dataclass(frozen=True)
class Settings:
    """A Pipeline's settings, each checked: the preset, the cache folder, model sources by role and the configs."""

    preset: Preset
    cache_dir: Path
    models: dict[str, str]
    run: RunConfig
    sample: SampleConfig
    protos: ProtoConfig
    segment: SegmentConfig


def resolve(
    preset: str | None,
    cache: Any,
    device: Any,
    dtype: Any,
    seed: Any,
    models: Any,
    sample: Any,
    protos: Any,
    segment: Any,
) -> Settings:
    """`Pipeline(...)`'s arguments checked and resolved over the preset's defaults, in one place: the preset,
    the argument types, the model sources (roles, specs, local paths), device, dtype and seed (RunConfig),
    and the config fields (each config checks its own; an unknown field names the config)."""
    from .models.overrides import check_model_roles, generator_defaults
    from .models.presets import get_preset
    from .store.cache import default_cache_dir

    chosen = get_preset(preset)
    check_arguments(cache, models, {"sample": sample, "protos": protos, "segment": segment})
    sources = check_models(models)
    run = RunConfig(chosen.name, device, dtype, seed, sources)
    given = {k: v for k, v in (sample or {}).items() if v is not None}
    proto_cfg = with_overrides(chosen.protos, protos, "protos")
    segment_cfg = with_overrides(chosen.segment, segment, "segment")
    check_model_roles(sources, proto_cfg, segment_cfg)  # a model for a stage this run lacks
    return Settings(
        chosen,
        Path(cache).expanduser() if cache else default_cache_dir(),
        sources,
        run,
        with_overrides(
            chosen.sample, {**generator_defaults(sources.get("generator"), chosen.weights), **given}, "sample"
        ),
        proto_cfg,
        segment_cfg,
    )


def check_arguments(cache: object, models: object, overrides: dict[str, object]) -> None:
    """The types of Pipeline's arguments, as typed errors (their values are checked below and by the configs)."""
    if cache is not None and not isinstance(cache, (str, Path)):
        raise InvalidSetting("cache", f"takes a folder path, not {type(cache).__name__} {cache!r:.40}")
    if (
        models is not None
        and not isinstance(models, ModelOptions)
        and (not isinstance(models, dict) or not all(isinstance(v, (str, Path, type(None))) for v in models.values()))
    ):
        raise InvalidSetting(
            "models", f"takes a dict of role → hub id or local path, e.g. {{'sd': DIR}}; got {models!r:.60}"
        )
    for name, value in overrides.items():
        if value is not None and not isinstance(value, dict):
            raise InvalidSetting(
                name, f"takes a dict of config fields, e.g. {{'eta': 4}}; got {type(value).__name__} {value!r:.40}"
            )


def check_models(models: dict | ModelOptions | None) -> dict[str, str]:
    """Role → spec of the sources given (a dict, or a command's `ModelOptions`), None values dropped, each checked."""
    if isinstance(models, ModelOptions):
        models = models.roles()
    return check_model_sources({role: str(spec) for role, spec in (models or {}).items() if spec is not None})
