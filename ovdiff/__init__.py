"""`import ovdiff`: the Python API of the ovdiff package (`ovdiff_cli`), under the project's name."""

from ovdiff_cli import __all__, __version__  # noqa: F401
from ovdiff_cli.api import (  # noqa: F401
    Catalogue,
    ImageFeatures,
    ModelOptions,
    Pipeline,
    SegmentationResult,
    Vocabulary,
    procedural_scene,
)
