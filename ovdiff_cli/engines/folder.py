"""The folder job (`ovdiff segment`, `Pipeline.segment_folder`) and the engine choice, as library calls.

A folder job turns image files into one mask per image, in order:
1. claim the output folder before any work: no input overwritten, no two legends mixed, one writer
   at a time (`io.outdir`), nothing written inside the cache;
2. take this shard's images, and with `skip_existing` those whose outputs are not all whole (`resume`);
3. build the vocabulary on the chosen engine (`build_vocabulary`), then write its legend;
4. segment the images on the chosen engine: here (`local.segment_paths`) or on Ray
   (`raysegment.segment_items`); each image's outputs are written as it is done (`io.outputs`).

The engine decides where work runs, never what is computed: both write the same files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import InvalidSetting

if TYPE_CHECKING:
    from ..compose import Stages
    from ..config import ProtoConfig, RunConfig, SampleConfig, SegmentConfig
    from ..io.images import InputImage
    from ..io.outputs import JobSummary
    from ..method.stage4_segment.segmenter import Segmentation
    from ..store.cache import Cache
    from ..types import ClassParts

OnEvent = Callable[[str, str, int, int], None]  # (stage, class or folder, done, total)
OnImage = Callable[["InputImage", "Segmentation | None", "str | None"], None]  # (input, result, error)


class Session(Protocol):
    """What a job runs with: settings, the cache (opened on first use) and the stages (`api.Pipeline`)."""

    run_config: RunConfig
    sample_config: SampleConfig
    proto_config: ProtoConfig
    segment_config: SegmentConfig
    cache_dir: Path

    @property
    def cache(self) -> Cache: ...

    @property
    def stages(self) -> Stages: ...


def build_vocabulary(
    session: Session,
    names: list[str],
    kinds: dict[str, str] | None = None,
    build: bool = True,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    on_event: OnEvent | None = None,
    seed: int | None = None,
    arrays: bool = True,
) -> list[ClassParts]:
    """The prototypes of `names` (support sets of `seed`, default the session's), the missing ones built
    first (`build`) on `engine`: "local" here, "ray" on Ray workers (`address`, `workers`; each class
    reported as on_event("ray", name, done, total)), then read from the cache as a local run reads them.
    Call inside `engine_session` for Ray. arrays=False returns heads (`vocab.load_heads`), which a local
    segmenter over the session's cache reads per image, the kept classes only."""
    from .vocab import ensure_classes

    seed = session.run_config.seed if seed is None else seed
    if engine == "ray" and build:
        from .raycluster import build_classes

        on_class = None if on_event is None else (lambda name, done, total: on_event("ray", name, done, total))
        build_classes(
            session.cache,
            session.run_config,
            names,
            seed,
            session.sample_config,
            session.proto_config,
            kinds,
            address,
            workers,
            on_class,
        )
    return ensure_classes(
        session.cache,
        session.stages,
        names,
        seed,
        session.sample_config,
        session.proto_config,
        kinds,
        build=build,
        on_event=on_event,
        arrays=arrays,
    )


@dataclass(frozen=True)
class FolderJob:
    """How a folder job runs and what it writes, checked before any work.

    fmt: masks as png, npz or coco-rle; overlay, explain: also overlays/ and explain/ pictures;
    save_scores: each label's score map (npz); shard: "I/N" or (I, N), only that shard of the inputs;
    skip_existing: leave out images whose outputs are whole (resume); overwrite: replace another class
    list's masks in the folder; recursive: look into subfolders; build: build missing classes (False:
    an error); engine: "local" or "ray" (address: the cluster, default a local instance; workers).
    """

    fmt: str = "png"
    overlay: bool = False
    explain: bool = False
    save_scores: bool = False
    shard: str | tuple[int, int] | None = None
    skip_existing: bool = False
    overwrite: bool = False
    recursive: bool = False
    build: bool = True
    engine: str = "local"
    address: str | None = None
    workers: int | None = None

    def __post_init__(self):
        from ..io.masks import check_format
        from .raycluster import check_engine
        from .resume import check_resumable, parse_shard

        check_engine(self.engine, self.address, self.workers)
        if self.engine == "ray" and self.explain:
            raise InvalidSetting("explain", "needs the local engine (the ray engine writes masks and overlays only)")
        if isinstance(self.shard, str):
            object.__setattr__(self, "shard", parse_shard(self.shard))
        elif self.shard is not None:
            parse_shard("/".join(map(str, self.shard)))
        check_format(self.fmt, self.save_scores)
        if self.shard is not None or self.skip_existing:
            check_resumable(self.fmt)
        if self.engine == "ray" and self.save_scores:
            raise InvalidSetting(
                "save_scores", "needs the local engine (the ray engine writes masks and overlays only)"
            )


@dataclass
class FolderResult:
    """What a folder job did: the folder, the classes (mask value k = names[k-1]), the images it took
    (after shard and resume), how many were already done, and the summary (written, failures, timings)."""

    out_dir: Path
    names: list[str]
    fmt: str
    items: list[InputImage]
    skipped: int
    summary: JobSummary

    def report(self) -> dict:
        """`ovdiff segment --json`: the run as one JSON-ready dict."""
        from ..io.outputs import job_report

        return job_report(self.summary, self.items, self.names, self.out_dir, self.fmt, self.skipped)


def segment_folder(
    session: Session,
    names: list[str],
    inputs: list[str],
    out: str | Path,
    job: FolderJob,
    on_event: OnEvent | None = None,
    on_image: OnImage | None = None,
) -> FolderResult:
    """Segment the images of `inputs` (files, folders, glob patterns) against `names` into `out`, as `job` says.

    on_event(stage, name, done, total): the vocabulary's progress (as `build_vocabulary`), then
    ("resume", out, done, total) when `skip_existing` found images done, and ("segment", "", 0, n)
    before the n images are segmented; on_image(item, segmentation, error) after each image.
    """
    from ..io.images import discover
    from ..io.legend import legend, save_legend
    from ..io.masks import MaskWriter
    from ..io.outdir import (
        check_legend,
        check_no_input_overwritten,
        check_not_in_cache,
        check_out_holds_no_input,
        job_out_dir,
        lock,
    )
    from . import resume
    from .raycluster import engine_session

    writer = MaskWriter(Path(out).expanduser(), len(names), job.fmt, job.save_scores, names)
    with job_out_dir(out) as out_dir:
        items = discover(list(inputs), job.recursive, exclude=out_dir)
        check_not_in_cache(out_dir, session.cache_dir)
        check_no_input_overwritten(out_dir, items, job.fmt, job.overlay, job.explain)
        check_out_holds_no_input(out_dir, items)
        release = lock(out_dir, job.shard)
        try:
            check_legend(
                out_dir,
                legend(names, session.segment_config.background, job.fmt),
                job.overwrite,
                {item.path.resolve() for item in items},
            )
            if job.shard is not None:
                items = resume.shard(items, *job.shard)
            skipped = 0
            if job.skip_existing:
                todo = resume.pending(items, out_dir, job.overlay, job.explain, job.fmt, len(names))
                skipped, items = len(items) - len(todo), todo
                if on_event is not None:
                    on_event("resume", str(out_dir), skipped, skipped + len(items))
            with engine_session(job.engine, job.address):
                classes = build_vocabulary(
                    session,
                    names,
                    None,
                    job.build,
                    job.engine,
                    job.address,
                    job.workers,
                    on_event,
                    arrays=False,  # heads: a segmenter (local, or a Ray worker) reads each image's kept classes
                )
                save_legend(names, session.segment_config.background, out_dir, job.fmt)
                if on_event is not None:
                    on_event("segment", "", 0, len(items))
                summary = _segment(session, classes, items, out_dir, job, writer, on_image)
        finally:
            release()
    return FolderResult(out_dir, list(names), job.fmt, items, skipped, summary)


def _segment(
    session: Session,
    classes: list[ClassParts],
    items: list[InputImage],
    out_dir: Path,
    job: FolderJob,
    writer,
    on_image: OnImage | None,
) -> JobSummary:
    """Step 4 on the job's engine."""
    cfg, spec = session.segment_config, session.proto_config.extractor
    if job.engine == "ray":
        from ..io.outputs import OutputWriter
        from .raysegment import segment_items

        names = [c.name for c in classes]
        return segment_items(
            session.run_config,
            classes,
            session.cache,
            cfg,
            spec,
            items,
            OutputWriter(names, out_dir, job.overlay, on_image=on_image, masks=writer),
            job.address,
            job.workers,
        )
    from .explain import Explainer
    from .local import segment_paths

    segmenter = session.stages.segmenter(classes, cfg, spec, session.cache)
    return segment_paths(
        segmenter,
        items,
        out_dir,
        overlay=job.overlay,
        explainer=Explainer(segmenter, session.cache) if job.explain else None,
        on_image=on_image,
        image_batch=cfg.image_batch,
        writer=writer,
    )
