"""The composition module: a run's settings → its stages, each handed the models it uses.

This is the one place that knows which stage reads which model. The model store builds raw models
(`models.store.ModelStore`); here they become the generator, the extractor, the mask proposer, the
category filter's scorer and the segmenter, each built on first use and kept for the run. The CLI,
the bench and the tests all build their stages here, so they run the same objects.

Counting is a wrapper around a stage, not state inside it: `Stages.calls["generate"]` counts images
drawn and `Stages.calls["extract"]` images featurised, so tests and the bench can check that cached
work is never redone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import OvdiffError
from .models.presets import ModelSpecs, Preset
from .models.store import ModelStore

if TYPE_CHECKING:
    import torch

    from .config import SampleConfig, SegmentConfig
    from .segment import Segmenter
    from .types import ClassPrototypes, Extractor, Generator, ImageTextScorer, MaskProposer, Sample


# --------------------------------------------------------------------------- stages from models


def build_generator(store: ModelStore) -> Generator:
    """The support-set generator: Stable Diffusion with attribution capture, or the procedural world."""
    if store.specs.preset.weights == "procedural":
        from .procedural import ProceduralGenerator

        return ProceduralGenerator()
    from .sampling import SDGenerator

    return SDGenerator(store.sd())


def build_extractor(spec: str, store: ModelStore) -> Extractor:
    """The extractor named by `spec` (parts joined by `+`, or `procedural` for the toy world).

    Its settings are fixed (SD at t=200), so the spec alone names the features: prototypes and
    target images built from the same spec are comparable.
    """
    from .features import ClipKeysPart, CombinedExtractor, SDPart, TimmKeysPart, parse_spec

    if spec == "procedural":
        from .procedural import ProceduralExtractor

        return ProceduralExtractor()
    builders: dict[str, Callable[[], Any]] = {
        "sd": lambda: SDPart(store.sd(), store.device),
        "clip": lambda: ClipKeysPart(store.clip(), store.device),
        "dino": lambda: TimmKeysPart(store.vit("dino"), "dino", store.device),
        "mae": lambda: TimmKeysPart(store.vit("mae"), "mae", store.device),
    }
    return CombinedExtractor([builders[name]() for name in parse_spec(spec)])


def build_proposer(name: str, store: ModelStore) -> MaskProposer:
    """The mask proposer called `name`; `sam` loads the store's SAM model."""
    from .masks import PROPOSERS, NCutProposer, SamProposer, ThresholdProposer

    if name == "ncut":
        return NCutProposer()
    if name == "threshold":
        return ThresholdProposer()
    if name == "sam":
        return SamProposer(store.sam())
    raise OvdiffError(f"unknown mask proposer {name!r}; choose one of: {', '.join(PROPOSERS)}")


def build_scorer(store: ModelStore) -> ImageTextScorer:
    """The category pre-filter's image/text scorer: CLIP, or the procedural world's stand-in."""
    if store.specs.preset.weights == "procedural":
        from .procedural import ProceduralScorer

        return ProceduralScorer()
    from .filter import ClipScorer

    return ClipScorer(store.clip(), store.device, store.dtype, store.specs.weights_seed)


# --------------------------------------------------------------------------- counting wrappers


class CountingGenerator:
    """A Generator that adds the images it draws to `calls["generate"]`."""

    def __init__(self, inner: Generator, calls: dict[str, int]):
        self.inner, self.calls = inner, calls

    def identity(self) -> dict:
        return self.inner.identity()

    def generate(self, class_name: str, seeds: list[int], config: SampleConfig) -> list[Sample]:
        self.calls["generate"] = self.calls.get("generate", 0) + len(seeds)
        return self.inner.generate(class_name, seeds, config)

    def __getattr__(self, name: str) -> Any:  # token_indices, sd, pipe: the wrapped generator's own
        return getattr(self.inner, name)


class CountingExtractor:
    """An Extractor that adds the images it featurises to `calls["extract"]`."""

    def __init__(self, inner: Extractor, calls: dict[str, int]):
        self.inner, self.calls = inner, calls
        self.name, self.stride = inner.name, inner.stride

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls["extract"] = self.calls.get("extract", 0) + int(images.shape[0])
        return self.inner(images)

    def __getattr__(self, name: str) -> Any:  # parts, slices: the wrapped extractor's own
        return getattr(self.inner, name)


# --------------------------------------------------------------------------- a run's stages


class Stages:
    """The stages of one run, each built on first use from the store's models and kept for the run.

    Implements `types.StageSource`, what `ensure_support_set` and `ensure_classes` take. `calls`
    counts images drawn ("generate") and featurised ("extract").
    """

    def __init__(self, store: ModelStore):
        self.store = store
        self.calls: dict[str, int] = {}
        self._built: dict[str, Any] = {}

    @classmethod
    def for_run(cls, preset: Preset | str | None = None, device: str = "auto", dtype: str = "auto",
                overrides: Mapping[str, str | None] | None = None, weights_seed: int = 0) -> Stages:  # fmt: skip
        """The stages of a run of `preset` (default `$OVDIFF_PRESET`, else sd15) with model overrides
        (role → spec, None keeps the preset's), as every command builds them."""
        return cls(ModelStore(ModelSpecs.of(preset, overrides, weights_seed), device, dtype))

    @property
    def specs(self) -> ModelSpecs:
        return self.store.specs

    @property
    def device(self) -> torch.device:
        return self.store.device

    @property
    def dtype(self) -> torch.dtype:
        return self.store.dtype

    def _once(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    def generator(self) -> Generator:
        return self._once("generator", lambda: CountingGenerator(build_generator(self.store), self.calls))

    def extractor(self, spec: str) -> Extractor:
        return self._once(f"extractor:{spec}", lambda: CountingExtractor(build_extractor(spec, self.store), self.calls))

    def mask_proposer(self, name: str) -> MaskProposer:
        return self._once(f"proposer:{name}", lambda: build_proposer(name, self.store))

    def scorer(self) -> ImageTextScorer:
        return self._once("scorer", lambda: build_scorer(self.store))

    def segmenter(self, classes: list[ClassPrototypes], cfg: SegmentConfig, extractor_spec: str, cache=None,
                  scorer: ImageTextScorer | None = None) -> Segmenter:  # fmt: skip
        """A Segmenter over `classes` with this run's extractor and (when the filter runs) scorer;
        `scorer` replaces the run's own (the bench times its forward passes)."""
        from .segment import Segmenter

        filtering = cfg.use_filter and sum(c.kind != "stuff" for c in classes) > 1  # it chooses among things only
        if filtering and scorer is None:
            scorer = self.scorer()
        return Segmenter(self.extractor(extractor_spec), classes, cfg, self.device, scorer if filtering else None, cache)
