"""ovdiff: open-vocabulary segmentation from diffusion-generated prototypes (OVDiff).

The Python API (see `ovdiff_cli.api`): `Pipeline`, `Vocabulary`, `SegmentationResult`,
`ImageFeatures`, `Catalogue` (the cache's classes), `ModelOptions`, and `procedural_scene` for trying it offline. The package is importable without
loading torch; these names and the heavy modules import lazily, so `ovdiff --help` stays instant.
"""

from .version import __version__

__all__ = [
    "Catalogue",
    "ImageFeatures",
    "ModelOptions",
    "Pipeline",
    "SegmentationResult",
    "Vocabulary",
    "__version__",
    "procedural_scene",
]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
