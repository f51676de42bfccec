"""The composition module: a run's settings → its stages, each handed the models it uses.

This is the one place that knows which stage reads which model. The model store builds raw models
(`models.store.ModelStore`); here they become the generator, the extractor parts, the mask proposer, the
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
from .models.dense import FAMILIES
from .models.presets import ModelSpecs, Preset
from .models.store import ModelStore

if TYPE_CHECKING:
    import torch

    from .config import SampleConfig, SegmentConfig
    from .method.stage2_prototypes.features import Part
    from .method.stage4_segment.segmenter import Segmenter
    from .types import ClassParts, Extractor, Generator, ImageTextScorer, MaskProposer, Sample


# --------------------------------------------------------------------------- stages from models


def build_generator(store: ModelStore) -> Generator:
    """The support-set generator: Stable Diffusion with attribution capture, or the procedural world."""
    if store.specs.preset.weights == "procedural":
        from .procedural import ProceduralGenerator

        return ProceduralGenerator()
    if store.specs.models.get("generator"):  # --generator: a family of models/generators.py
        from .method.beyond.generators import FamilyGenerator
        from .models.generators import parse_generator

        family, _ = parse_generator(store.specs.models["generator"], store.specs.preset.weights)
        if family.pipeline == "sd3":
            from .method.beyond.mmdit import MMDiTGenerator

            return MMDiTGenerator(family, store.generator_parts())
        if family.pipeline == "flux":
            from .method.beyond.flux import FluxGenerator

            return FluxGenerator(family, store.generator_parts())
        return FamilyGenerator(family, store.generator_parts())
    from .method.stage1_support.sampling import SDGenerator

    return SDGenerator(store.sd())


def build_backbone(name: str, store: ModelStore) -> Extractor:
    """The backbone of part `name` (`sd`, `clip`, `dino`, `mae`, or `procedural` for the toy world).

    Its settings are fixed (SD at t=200), so the part's name alone names its features: prototypes
    and target images built from the same part are comparable.
    """
    from .config import parse_spec
    from .method.stage2_prototypes.features import ClipKeysPart, SDPart, TimmKeysPart

    if name == "procedural":
        from .procedural import ProceduralExtractor

        return ProceduralExtractor()
    builders: dict[str, Callable[[], Any]] = {
        "sd": lambda: SDPart(store.sd(), store.device),
        "clip": lambda: ClipKeysPart(store.clip(), store.device),
        "dino": lambda: TimmKeysPart(store.vit("dino"), "dino", store.device),
        "mae": lambda: TimmKeysPart(store.vit("mae"), "mae", store.device),
    }
    if name in FAMILIES:
        from .method.beyond.dense import dense_backbone

        return dense_backbone(name, store.dense(name), store.device)
    if name not in builders:
        parse_spec(name)  # the one-line error naming the parts
    return builders[name]()


def build_part(name: str, store: ModelStore, calls: dict[str, int] | None = None) -> Part:
    """Part `name` at the run's input size for it (the preset's, else the authors'); with `calls`,
    the images its backbone featurises are counted there."""
    from .method.stage2_prototypes.features import Part

    backbone = build_backbone(name, store)
    return Part(name, backbone if calls is None else CountingExtractor(backbone, calls), store.specs.input_size(name))


def build_proposer(name: str, store: ModelStore) -> MaskProposer:
    """The mask proposer called `name`; `cutler` and `sam` load the store's detector / SAM model."""
    from .config import PROPOSERS
    from .method.stage2_prototypes.masks import FastNCutProposer, MaskCutProposer, SamProposer, ThresholdProposer

    if name == "cutler":
        from .method.stage2_prototypes.cutler import CutlerProposer

        return CutlerProposer(store.cutler(), store.specs.preset.detector_size)
    if name == "ncut":
        return MaskCutProposer()
    if name == "ncut-fast":
        return FastNCutProposer()
    if name == "threshold":
        return ThresholdProposer()
    if name == "sam":
        return SamProposer(store.sam())
    raise OvdiffError(f"unknown mask proposer {name!r}; choose one of: {', '.join(PROPOSERS)}")


def build_scorer(store: ModelStore) -> ImageTextScorer:
    """The category pre-filter's image/text scorer: CLIP (or `--filter-model`'s), or the procedural world's stand-in."""
    if store.specs.preset.weights == "procedural":
        from .procedural import ProceduralScorer

        return ProceduralScorer()
    from .method.stage3_filter.prefilter import ClipScorer
    from .models.filtermodels import filter_source
    from .store.keys import clip_text_id

    model = store.filter_model()
    own = filter_source(store.specs.models.get("filter"), store.specs.preset.weights) is not None
    dtype = store.dtype if own else store.dtype_of("clip")  # the run's CLIP: in the dtype it was built in
    return ClipScorer(model, store.device, dtype, clip_text_id(model.source, store.specs.weights_seed))


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

    def __getattr__(self, name: str) -> Any:  # model, visual, sd: the wrapped backbone's own
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
    def for_run(
        cls,
        preset: Preset | str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        overrides: Mapping[str, str | None] | None = None,
        weights_seed: int = 0,
    ) -> Stages:
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

    def part(self, name: str) -> Part:
        return self._once(f"part:{name}", lambda: build_part(name, self.store, self.calls))

    def mask_proposer(self, name: str) -> MaskProposer:
        return self._once(f"proposer:{name}", lambda: build_proposer(name, self.store))

    def scorer(self) -> ImageTextScorer:
        return self._once("scorer", lambda: build_scorer(self.store))

    def segmenter(
        self,
        classes: list[ClassParts],
        cfg: SegmentConfig,
        extractor_spec: str,
        cache=None,
        scorer: ImageTextScorer | None = None,
    ) -> Segmenter:
        """A Segmenter over `classes` with this run's parts of `extractor_spec` and (when the filter
        runs) scorer; `scorer` replaces the run's own (the bench times its forward passes). Classes
        given as heads are read from `cache` per image, for the classes the filter keeps."""
        from .config import spec_parts
        from .method.stage4_segment.segmenter import Segmenter

        filtering = cfg.use_filter and sum(c.kind != "stuff" for c in classes) > 1  # it chooses among things only
        if filtering and scorer is None:
            scorer = self.scorer()
        parts = [self.part(name) for name in spec_parts(extractor_spec)]
        refiner = None if cfg.refine == "none" else self.refiner(cfg.refine)
        read = memo = None
        if cache is not None:  # classes given as heads (ensure_classes(arrays=False)) are read per image
            from .store.protos import VocabArrays, load_class

            read, memo = (lambda pid: load_class(cache, pid)), VocabArrays(cache)
        return Segmenter(
            parts,
            classes,
            cfg,
            self.device,
            scorer if filtering else None,
            cache,
            refiner=refiner,
            read=read,
            memo=memo,
        )

    def refiner(self, name: str):
        """The label-score refiner of `--refine` (beyond the paper): "pamr", or "sam2" (loads the store's SAM 2)."""
        from .method.beyond import refine

        if name == "pamr":
            return self._once("refiner:pamr", refine.PamrRefiner)
        if name == "sam2":
            return self._once("refiner:sam2", lambda: refine.RegionRefiner(refine.AutomaticRegions(self.store.sam2())))
        raise OvdiffError(f"unknown refiner {name!r}; choose one of: pamr, sam2")
