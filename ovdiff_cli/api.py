"""The Python API: what `ovdiff segment` does, from a notebook or a script.

    import ovdiff
    pipe = ovdiff.Pipeline(preset="procedural", cache="ovdiff-cache")
    vocab = pipe.vocabulary(["kite", "ball", "sky", "grass"])   # built once, then read from the cache
    result = pipe.segment("photo.jpg", vocab)                    # path, PIL image or HxWx3 uint8 array
    result.labels, result.class_names, result.scores, result.save("mask.png"), result.overlay()
    pipe.segment("photo.jpg", ["kite", "sky"])                   # a list of names works as a vocabulary
    pipe.segment(["a.jpg", "b.jpg"], vocab)                      # a list → a list of results (a batch)
    result.segments                                              # [{"label", "score", "mask"}], as HF's
    result.to_supervision(), result.to_fiftyone(), result.to_coco()

Encode once, query many: `pipe.encode(image)` runs the backbones once; `features.match(vocab)`
then costs only the prototype matching, for as many vocabularies as you like.

Presets, the cache and every option are the CLI's: `sample=`, `protos=` and `segment=` take the
fields of `SampleConfig`, `ProtoConfig` and `SegmentConfig` (e.g. `segment={"eta": 4,
"background": False}`), over the preset's defaults, as the CLI's options do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .checks import resolve
from .engines.catalogue import CacheCheck, CachedClass, Catalogue
from .errors import InvalidSetting, MissingClasses, OvdiffError
from .inputs import ImageLike, as_rgb, check_path, input_paths, is_one_image, procedural_scene
from .libs import quiet_libraries
from .models.roles import ModelOptions
from .names import parse_class_list
from .results import SegmentationResult, Vocabulary
from .version import __version__

if TYPE_CHECKING:
    from .compose import Stages
    from .engines.benchmark import BenchmarkRun
    from .engines.folder import FolderResult
    from .engines.support import SampleRun
    from .method.stage4_segment.segmenter import EncodedImage, Segmentation, Segmenter
    from .models.presets import ModelSpecs, Preset
    from .models.weights import Weights
    from .store.cache import Cache

# The calls behind the commands that are not a Pipeline's or a Catalogue's (`commands`), loaded on first use.
COMMANDS = "bench_markdown bench_rows demo_classes doctor_report hf_cache_dir paper_score run_demo"
COMMANDS = (*COMMANDS.split(), "score_summary", "serve_label_studio", "serve_pipeline")
__all__ = [
    "CacheCheck",
    "CachedClass",
    "Catalogue",
    "ImageFeatures",
    "ImageLike",
    "ModelOptions",
    "Pipeline",
    "SegmentationResult",
    "Vocabulary",
    "__version__",
    "as_rgb",
    "is_one_image",
    "parse_class_list",
    "procedural_scene",
    "quiet_libraries",
    "run_benchmark",
    *COMMANDS,
]


def run_benchmark(out: str | Path, **options: object) -> dict:
    """`ovdiff bench`: time the sections on this machine and write the results (JSON) to `out`; the
    options are `commands.run_benchmark`'s (quick, preset, repeats, pairs, sections, folder, device, …)."""
    from .commands import run_benchmark as bench

    return bench(out, Pipeline, **options)


def __getattr__(name: str) -> object:
    """The calls of `commands` (the bench, the demo, the doctor, the web demo)."""
    if name in COMMANDS:
        from . import commands

        return getattr(commands, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


OnEvent = Callable[[str, str, int, int], None]


@dataclass
class ImageFeatures:
    """A target image with the backbones' work done: `match` it against any vocabulary, cheaply."""

    pipeline: Pipeline = field(repr=False)
    encoded: EncodedImage = field(repr=False)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.encoded.image.shape[:2]

    @property
    def timings(self) -> dict[str, float]:
        """Seconds the encoding spent in the filter's image encoder and the feature extractor."""
        return dict(self.encoded.seconds)

    def match(self, vocabulary: Vocabulary | Iterable[str], scores: bool = True) -> SegmentationResult:
        """Segment the encoded image against `vocabulary` (or a list of names): no backbone runs (the
        filter's prompts are cached)."""
        vocabulary = self.pipeline.as_vocabulary(vocabulary)
        segmenter = self.pipeline.segmenter(vocabulary)
        seg = segmenter.predict_encoded(self.encoded, scores=scores)
        return self.pipeline._result(self.encoded.image, vocabulary, seg)


class Pipeline:
    """Models, cache and settings of one preset: build vocabularies, segment and encode images.

    preset: sd15 (default, real weights), tiny, sd15-random or procedural (offline, meaningful
    masks); cache: the prototype cache folder (default: $OVDIFF_CACHE, else the user cache dir);
    device/dtype: as the CLI's --device/--dtype; seed: the support sets' seed; models: model
    sources by role ("sd", "clip", "dino", "mae", "sam", "sam2", "cutler", "filter", "generator", or an extractor
    family such as "dinov2"; None keeps the preset's), as --sd-model etc.; sample/protos/segment:
    overrides of SampleConfig/ProtoConfig/SegmentConfig fields (a Turbo generator's steps and guidance
    unless given). create_cache=False: a cache folder that holds no cache is an error (read only).
    Models load on first use. The CLI's commands run on one of these.
    """

    def __init__(
        self,
        preset: str | None = None,
        cache: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        seed: int = 0,
        models: dict[str, str] | None = None,
        sample: dict | None = None,
        protos: dict | None = None,
        segment: dict | None = None,
        create_cache: bool = True,
    ):
        got = resolve(preset, cache, device, dtype, seed, models, sample, protos, segment)  # every check, once
        self.preset: Preset = got.preset
        self.cache_dir, self.create_cache, self.models, self.run_config = (
            got.cache_dir,
            create_cache,
            got.models,
            got.run,
        )
        self.device, self.dtype, self.seed = device, dtype, seed
        self.sample_config, self.proto_config, self.segment_config = got.sample, got.protos, got.segment
        self._cache: Cache | None = None
        self._stages: Stages | None = None
        self._segmenters: dict[int, tuple[Vocabulary, Segmenter]] = {}
        self._by_names: dict[tuple[str, ...], Vocabulary] = {}

    def __repr__(self) -> str:
        return f"Pipeline(preset={self.preset.name!r}, cache={str(self.cache_dir)!r}, extractor={self.proto_config.extractor!r})"

    @property
    def cache(self) -> Cache:
        if self._cache is None:
            from .store.cache import Cache

            self._cache = Cache(self.cache_dir, create=self.create_cache)
        return self._cache

    @property
    def catalogue(self) -> Catalogue:
        """The classes of this pipeline's cache: list, remove, show, export, import, verify (`Catalogue`)."""
        return Catalogue(self.cache_dir, create=self.create_cache)

    @property
    def model_specs(self) -> ModelSpecs:
        """The model sources of this pipeline (the preset's, then `models=`), known without loading a model."""
        from .models.presets import ModelSpecs

        return ModelSpecs.of(self.preset, self.run_config.model_overrides)

    @property
    def stages(self) -> Stages:
        """The run's stages (`compose.Stages`), as the CLI builds them; models load on first use."""
        if self._stages is None:
            from .compose import Stages

            self._stages = Stages.for_run(self.preset, self.device, self.dtype, self.models)
        return self._stages

    # -- vocabularies

    def vocabulary(
        self,
        names: Iterable[str],
        kinds: dict[str, str] | None = None,
        build: bool = True,
        on_event: OnEvent | None = None,
        engine: str = "local",
        address: str | None = None,
        workers: int | None = None,
    ) -> Vocabulary:
        """The prototypes of `names` (in that order): read from the cache, the missing ones built first
        (`build=False`: an error naming the command that builds them). kinds: name → "stuff"/"thing"
        overrides; on_event(stage, class, done, total) reports progress. engine="ray" builds the missing
        classes on Ray workers (`address`: the cluster, default a local instance; `workers`), as
        `ovdiff protos add --engine ray` does."""
        from .engines.folder import build_vocabulary
        from .engines.raycluster import check_engine, engine_session
        from .names import class_list

        names = class_list(names)  # the CLI's rules: text, not blank, none repeated after normalisation
        if kinds is not None and not isinstance(kinds, dict):
            raise InvalidSetting(
                "kinds", f"takes a dict of class name → 'thing' or 'stuff'; got {type(kinds).__name__}"
            )
        check_engine(engine, address, workers)
        with self._missing("vocabulary"), engine_session(engine, address):
            classes = build_vocabulary(self, names, kinds, build, engine, address, workers, on_event)
        return Vocabulary([c.name for c in classes], classes, self.seed, self.proto_config.extractor)

    @contextlib.contextmanager
    def _missing(self, method: str) -> Iterator[None]:
        """MissingClasses from `method` with the ways to build the classes: this call, or the CLI's."""
        try:
            yield
        except MissingClasses as e:
            args = f"{e.names!r}" if method == "vocabulary" else "INPUTS, OUT, " + repr(e.names)
            raise e.way_out(  # noqa: B904
                f"build them with {self._call(method)}({args}) (build=True, the default), or: "
                f"ovdiff protos add {' '.join(map(repr, e.names))} --preset {self.preset.name} --seed {self.seed}"
            )

    def segment_folder(
        self,
        inputs: str | Path | Iterable[str | Path],
        out: str | Path,
        classes: Iterable[str],
        *,
        fmt: str = "png",
        overlay: bool = False,
        explain: bool = False,
        save_scores: bool = False,
        shard: str | tuple[int, int] | None = None,
        skip_existing: bool = False,
        overwrite: bool = False,
        recursive: bool = False,
        build: bool = True,
        engine: str = "local",
        address: str | None = None,
        workers: int | None = None,
        on_event: OnEvent | None = None,
        on_image: Callable | None = None,
    ) -> FolderResult:
        """`ovdiff segment`: the images of `inputs` (files, folders, glob patterns) segmented against
        `classes` into the folder `out`, one mask per image (mask value k = k-th class, 0 = background),
        with classes.json; on `engine` "local" or "ray" (`address`, `workers`). The options are the CLI's
        (`engines.folder.FolderJob`): fmt png/npz/coco-rle, overlay, explain, save_scores, shard "I/N",
        skip_existing (resume), overwrite, recursive, build. on_event as `vocabulary`'s, then ("resume",
        out, done, total) and ("segment", "", 0, n); on_image(item, segmentation, error) after each image.
        Returns what the job did (`FolderResult`: images, written, failures, timings, `.report()`)."""
        from .engines.folder import FolderJob, segment_folder
        from .names import class_list

        job = FolderJob(
            fmt,
            overlay,
            explain,
            save_scores,
            shard,
            skip_existing,
            overwrite,
            recursive,
            build,
            engine,
            address,
            workers,
        )
        names = class_list(classes)
        check_path("out", out, "the folder to write the masks to")
        paths = input_paths(inputs)
        with self._missing("segment_folder"):
            return segment_folder(self, names, paths, out, job, on_event, on_image)

    def sample(self, names: Iterable[str], on_event: OnEvent | None = None) -> SampleRun:
        """`ovdiff sample`: draw (or complete) and cache the support set of each class, without building
        prototypes; on_event("sample", class, done, total) counts each class's images. Returns their ids,
        how many images were drawn now and the seconds (`engines.support.SampleRun`)."""
        from .engines.support import sample_classes
        from .names import class_list

        return sample_classes(self.cache, self.stages, class_list(names), self.seed, self.sample_config, on_event)

    def support_sheet(self, name: str, out: str | Path) -> tuple[dict, int]:
        """A contact sheet of class `name`'s cached support set (each image beside its attribution map)
        written to the PNG/JPEG file `out`, as `ovdiff sample --show`; (the set's record, its images)."""
        from .engines.support import write_support_sheet
        from .io.outdir import check_not_in_cache

        check_not_in_cache(out, self.cache_dir)
        return write_support_sheet(
            self.cache, self.stages.specs, name, self.seed, self.sample_config, Path(out).expanduser()
        )

    def evaluate(
        self,
        dataset: str,
        root: str | Path,
        *,
        seeds: Iterable[int] | None = None,
        pred: str | Path | None = None,
        offset: int | None = None,
        limit: int | None = None,
        out: str | Path | None = None,
        classes_file: str | Path | None = None,
        raw_names: bool = False,
        engine: str = "local",
        address: str | None = None,
        workers: int | None = None,
        on_event: OnEvent | None = None,
        on_score: Callable | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> BenchmarkRun:
        """`ovdiff eval`: score this pipeline on benchmark `dataset` ("voc", "context", "object", "voc20",
        "context59", "ade", "stuff", "cityscapes") in the folder `root`, under the prior work's protocol,
        one run per seed of `seeds` (default: the pipeline's seed); or score the saved masks in `pred`
        (`offset`: mask value − dataset index, when no classes.json says). limit: the first images only;
        out: write metrics.json and report.html there; classes_file: a dataset of your own in the layout
        (default classes.txt in `root`); raw_names: the dataset's names, not the paper's corrections;
        engine/address/workers as `vocabulary`'s. Callbacks as `engines.benchmark.evaluate_benchmark`'s.
        Returns the dataset, the results per seed and the protocol (`BenchmarkRun`, `.document()`)."""
        from .engines.benchmark import evaluate_benchmark

        return evaluate_benchmark(
            self,
            dataset,
            root,
            seeds=seeds,
            pred=pred,
            offset=offset,
            limit=limit,
            out=out,
            classes_file=classes_file,
            raw_names=raw_names,
            engine=engine,
            address=address,
            workers=workers,
            on_event=on_event,
            on_score=on_score,
            on_note=on_note,
        )

    def photo_class(
        self,
        name: str,
        folder: str | Path,
        n_images: int = 0,
        kind: str | None = None,
        engine: str = "local",
        address: str | None = None,
        workers: int | None = None,
        on_event: OnEvent | None = None,
    ) -> Vocabulary:
        """Beyond the paper: class `name` built from the photos in `folder` (no masks), plus `n_images` generated
        ones, as `ovdiff protos add NAME --images DIR`; afterwards `name` in any vocabulary means these photos.
        engine="ray" builds it on a Ray worker (`address`, `workers` as the CLI's); on_event as `vocabulary`'s.
        A one-class vocabulary."""
        from .engines.raycluster import check_engine, engine_session, photo_builder
        from .engines.vocab import build_from_photos

        check_engine(engine, address, workers)
        remote = photo_builder(self, engine, address, workers)
        with engine_session(engine, address):
            built = build_from_photos(
                self.cache,
                self.stages,
                name,
                str(folder),
                self.seed,
                self.sample_config,
                self.proto_config,
                n_images,
                None if kind is None else {name: kind},
                on_event,
                remote,
            )
        self._by_names.clear()  # `name` may have meant a generated class before
        return Vocabulary([built.name], [built], self.seed, self.proto_config.extractor)

    def download_weights(
        self, local_dir: str | Path | None = None, on_weight: Callable[[Weights, str], None] | None = None
    ) -> tuple[list[Weights], dict[str, Path]]:
        """`ovdiff models download`: every weight this pipeline's models, extractor and mask proposer load,
        fetched into the HF cache (or `local_dir`/ROLE, to pass back as `models={ROLE: folder}`) unless it
        is there; on_weight(weights, "elsewhere" | "present" | "downloading"). (what it needs, role → folder)."""
        from .models.weights import fetch_all, needed, role_specs

        wanted = needed(role_specs(self.model_specs), self.proto_config.extractor, self.proto_config.mask_proposer)
        return wanted, fetch_all(wanted, None if local_dir is None else Path(local_dir), on_weight)

    def _call(self, method: str) -> str:
        return f"ovdiff.Pipeline(preset={self.preset.name!r}, seed={self.seed}).{method}"

    def as_vocabulary(self, vocabulary: Vocabulary | Iterable[str]) -> Vocabulary:
        """`vocabulary` itself, or the vocabulary of a list of names (built or read from the cache once
        per pipeline, as `vocabulary(names)` does)."""
        if isinstance(vocabulary, Vocabulary):
            return vocabulary
        if isinstance(vocabulary, str) or not isinstance(vocabulary, Iterable):
            raise OvdiffError(
                f"give a Vocabulary or a list of class names, not the {type(vocabulary).__name__} {vocabulary!r:.80}"
            )
        from .names import class_list

        names = tuple(class_list(vocabulary))  # each a name (not a list, not a dict's keys), once
        if names not in self._by_names:
            self._by_names[names] = self.vocabulary(names)
        return self._by_names[names]

    def segmenter(self, vocabulary: Vocabulary | Iterable[str]) -> Segmenter:
        """The segmenter of a vocabulary (built once per vocabulary: prototypes on the device, prompts encoded)."""
        vocabulary = self.as_vocabulary(vocabulary)
        if vocabulary.extractor != self.proto_config.extractor:
            raise OvdiffError(
                f"vocabulary built with extractor {vocabulary.extractor}; this pipeline extracts "
                f"{self.proto_config.extractor}"
            )
        entry = self._segmenters.get(id(vocabulary))
        if entry is None or entry[0] is not vocabulary:
            entry = (
                vocabulary,
                self.stages.segmenter(vocabulary.classes, self.segment_config, vocabulary.extractor, self.cache),
            )
            self._segmenters[id(vocabulary)] = entry
        return entry[1]

    # -- images

    def segment(
        self, image: ImageLike | Iterable[ImageLike], vocabulary: Vocabulary | Iterable[str], scores: bool = True
    ) -> SegmentationResult | list[SegmentationResult] | Iterator[SegmentationResult]:
        """Label every pixel of `image` with a class of `vocabulary` (or background), as `ovdiff segment` does.

        image: one image (path, PIL image, array) → one result; a list or tuple of them → a list of
        results, segmented `image_batch` at a time as the CLI does; any other iterable (a generator of
        paths, `Path.glob`) → an iterator of results, read lazily. vocabulary: a Vocabulary or a list
        of class names (its prototypes built or read from the cache, as `vocabulary(names)` does).
        """
        vocabulary = self.as_vocabulary(vocabulary)
        if is_one_image(image):
            rgb = as_rgb(image)
            return self._result(rgb, vocabulary, self.segmenter(vocabulary).predict(rgb, scores=scores))
        if not isinstance(image, Iterable):
            as_rgb(image)  # raises the one-image error for what is neither an image nor a batch
        batches = self._batches(iter(image), vocabulary, scores)
        return (
            [r for batch in batches for r in batch]
            if isinstance(image, (list, tuple))
            else (r for b in batches for r in b)
        )

    def _batches(
        self, images: Iterator[ImageLike], vocabulary: Vocabulary, scores: bool
    ) -> Iterator[list[SegmentationResult]]:
        import itertools

        segmenter = self.segmenter(vocabulary)
        while group := [as_rgb(i) for i in itertools.islice(images, max(1, self.segment_config.image_batch))]:
            yield [
                self._result(rgb, vocabulary, seg)
                for rgb, seg in zip(group, segmenter.predict_many(group, scores=scores), strict=True)
            ]

    def encode(self, image: ImageLike) -> ImageFeatures:
        """Run the backbones on `image` once; match the result against any vocabulary of this pipeline."""
        from .config import spec_parts
        from .method.stage4_segment.segmenter import encode_image

        cfg = self.segment_config
        parts = [self.stages.part(name) for name in spec_parts(self.proto_config.extractor)]
        scorer = self.stages.scorer() if cfg.use_filter else None
        return ImageFeatures(self, encode_image(parts, scorer, cfg, as_rgb(image), self.stages.device))

    def _result(self, rgb: np.ndarray, vocabulary: Vocabulary, seg: Segmentation) -> SegmentationResult:
        return SegmentationResult(
            seg.labels,
            list(vocabulary.names),
            self.segment_config.background,
            [vocabulary.names[i] for i in seg.selected],
            seg.scores,
            seg.timings,
            rgb,
            seg.stats,
        )
