"""The settings of a Pipeline, checked once, at construction, with typed errors naming each setting
(`InvalidSetting`): what the API, the CLI and `ovdiff serve` are given passes through here."""

from __future__ import annotations

from pathlib import Path

from .errors import InvalidSetting


def check_arguments(cache: object, models: object, overrides: dict[str, object]) -> None:
    """The types of Pipeline's arguments, as typed errors (their values are checked where they are used)."""
    if cache is not None and not isinstance(cache, (str, Path)):
        raise InvalidSetting("cache", f"takes a folder path, not {type(cache).__name__} {cache!r:.40}")
    if models is not None and (
        not isinstance(models, dict) or not all(isinstance(v, (str, Path, type(None))) for v in models.values())
    ):
        raise InvalidSetting(
            "models", f"takes a dict of role → hub id or local path, e.g. {{'sd': DIR}}; got {models!r:.60}"
        )
    for name, value in overrides.items():
        if value is not None and not isinstance(value, dict):
            raise InvalidSetting(
                name, f"takes a dict of config fields, e.g. {{'eta': 4}}; got {type(value).__name__} {value!r:.40}"
            )
