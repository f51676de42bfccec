"""The bench's sections and its run (`ovdiff bench`): each section measures one part of the pipeline
through the public API, as a user's program would (settings and figures are in `bench`).
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..classnames.lists import VOC
from ..config import ProtoConfig, SampleConfig, SegmentConfig
from ..errors import OvdiffError
from .build import bench_build_memory, bench_prototypes
from .memory import bench_memory, segment_folder
from .settings import (
    SECTIONS,
    BenchSettings,
    dims_text,
    fresh_cache,
    preset_configs,
    synthetic_bank,
    write_images,
)
from .stats import TimedScorer, clock_of, figure, in_child, interleaved_pairs, ratios, timed, with_cpu_time

if TYPE_CHECKING:
    from ..compose import Stages
    from ..store.cache import Cache
    from ..types import Sample

RESULTS_VERSION = 2  # 2: pair ratios, spreads, the class_build section
SAMPLE_CLASS = "cat"
EXTRA_CLASS = "giraffe"  # the class added to a cached vocabulary: in the stuff table, so no text lookup
Say = Callable[[str], None]


# --------------------------------------------------------------------------- sections


def bench_sampling(stages: Stages, s: BenchSettings, seed: int) -> tuple[dict, list[Sample]]:
    """Seconds per image of our sampler (attribution capture) and of the stock diffusers pipeline.

    Same components, prompt, negative prompt, guidance, steps, size and per-image seeds; both decode
    with the VAE (the stock call to float arrays, ours to uint8 plus attribution maps).
    Returns the section and the last support set drawn (the prototypes section featurises it).
    """
    import torch

    from ..method.stage1_support.sampling import image_seed

    cfg = replace(SampleConfig(), n_images=s.n_images, steps=s.steps, size=s.size, batch_size=s.n_images)
    generator = stages.generator()
    pipe = stages.store.sd().pipeline()
    pipe.set_progress_bar_config(disable=True)
    seeds = [image_seed(SAMPLE_CLASS, seed, i) for i in range(s.n_images)]
    drawn: list[Sample] = []

    def ours() -> None:
        drawn[:] = generator.generate(SAMPLE_CLASS, seeds, cfg)

    def stock() -> None:
        pipe(
            prompt=[cfg.prompt_template.format(SAMPLE_CLASS)] * len(seeds),
            negative_prompt=[cfg.negative_prompt] * len(seeds),
            guidance_scale=cfg.guidance_scale,
            num_inference_steps=cfg.steps,
            height=cfg.size,
            width=cfg.size,
            generator=[torch.Generator().manual_seed(x) for x in seeds],
            output_type="np",
        )

    ours()  # warm-up
    stock()
    t_ours, t_stock = interleaved_pairs(ours, stock, s.pairs, stages.device)
    n = len(seeds)
    section = {
        "figures": {
            "capture": figure("with attribution capture", "s/image", [t / n for t in t_ours]),
            "stock": figure("stock diffusers pipeline", "s/image", [t / n for t in t_stock]),
            "ratio": figure("capture / stock", "×", ratios(t_ours, t_stock), 1.05),
        },
        "notes": [
            f"{n} image(s) of '{SAMPLE_CLASS}' per call, {s.steps} DPM-Solver++ steps, {s.size} px, "
            f"guidance {cfg.guidance_scale}; both decode with the VAE"
        ],
    }
    return section, list(drawn)


def bench_segment(stages: Stages, s: BenchSettings, folder: Path, dim: dict[str, int], root: Path, seed: int) -> dict:
    """Seconds per image by step, and the share of the time spent outside the backbones' forward passes.

    The prototype bank is synthesised (random unit vectors of the real shapes and dimension): building
    that many real classes takes hours on a CPU, and matching cost depends on shapes only. Backbones:
    the extractor ("features") and the filter's CLIP image/text forward passes; everything else
    (matching, upsampling, image IO, filter bookkeeping) is overhead.
    """
    from ..engines.local import segment_paths
    from ..io.images import discover, load_image
    from ..method.stage4_segment.targets import working_image

    names = list(VOC[1 : 1 + s.bank_classes])
    cfg = replace(preset_configs(s.preset)[2], short_side=s.short_side, windows=s.windows, stride=s.stride, eta=s.eta)
    spec = preset_configs(s.preset)[1].extractor
    scorer = TimedScorer(stages.scorer(), stages.device)
    segmenter = stages.segmenter(
        synthetic_bank(names, dim, s.bank_rows, seed), cfg, spec, fresh_cache(root, "segment-"), scorer=scorer
    )
    items = discover([str(folder)])
    kept = [len(segmenter.filter.select(working_image(load_image(i.path), cfg.short_side))) for i in items]  # warm-up
    segment_paths(segmenter, items[:1], root / "masks-warmup")
    rows = []
    for r in range(s.repeats):
        scorer.seconds = 0.0
        job = segment_paths(segmenter, items, root / f"masks-{r}")
        if job.failures:
            raise OvdiffError(f"bench image failed: {job.failures[0][1]}")
        rows.append({"wall": job.seconds, **job.timings, "clip": scorer.seconds})
    return _segment_section(rows, len(items), kept, sum(len(v) for v in segmenter.vocabs), cfg, spec, dim, s)


def _segment_section(
    rows: list[dict],
    n: int,
    kept: list[int],
    n_protos: int,
    cfg: SegmentConfig,
    spec: str,
    dim: dict[str, int],
    s: BenchSettings,
) -> dict:
    def per(key: str) -> list[float]:
        return [r[key] / n for r in rows]

    overhead = [100 * (r["wall"] - r["features"] - r["clip"]) / r["wall"] for r in rows]
    with_filter = [100 * (r["wall"] - r["features"]) / r["wall"] for r in rows]
    return {
        "figures": {
            "total": figure("total", "s/image", per("wall")),
            "features": figure("feature extraction (backbones)", "s/image", per("features")),
            "filter": figure("CLIP filter", "s/image", per("filter")),
            "filter_clip": figure("  of which CLIP forward", "s/image", per("clip")),
            "matching": figure("matching", "s/image", per("matching")),
            "upsample_io": figure("upsampling + IO", "s/image", per("upsample_io")),
            "overhead_share": figure("not backbone forward passes", "%", overhead, 5.0),
            "overhead_share_filter": figure("  counting the whole filter as overhead", "%", with_filter),
        },
        "notes": [
            f"{n} image(s) per run; prototype bank SYNTHESISED for timing: {s.bank_classes} classes + background, "
            f"fg+bg × (1 class + {s.bank_rows} instance + {s.bank_rows} part) random unit vectors, D={dims_text(dim)} ({n_protos} prototypes); "
            f"extractor {spec}, short side {cfg.short_side}, windows {'/'.join(map(str, cfg.windows))}, stride "
            f"{cfg.stride}, η={cfg.eta}; the filter kept {np.mean(kept):.1f} classes per image on average"
        ],
    }


def bench_filter(stages: Stages, s: BenchSettings, image: np.ndarray, root: Path) -> dict:
    """The category filter on one image with a fresh cache (cold: every prompt encoded) and again with
    a new filter over the same cache (warm: every embedding read from LMDB, none encoded)."""
    from ..method.stage3_filter.prefilter import CategoryFilter
    from ..method.stage4_segment.targets import working_image

    names = list(VOC[1 : 1 + s.bank_classes])
    cfg = preset_configs(s.preset)[2]
    image = working_image(image, cfg.short_side)  # what the segmenter's filter sees
    CategoryFilter(stages.scorer(), None, names[:2], s.eta, cfg.filter_size).select(image)  # warm-up
    cold, warm, prompts = [], [], []
    for _ in range(s.repeats):
        cache = fresh_cache(root, "filter-")
        scorer = TimedScorer(stages.scorer(), stages.device)
        cold.append(
            timed(lambda: CategoryFilter(scorer, cache, names, s.eta, cfg.filter_size).select(image), stages.device)[0]  # noqa: B023
        )
        prompts.append(scorer.prompts)
        warm.append(
            timed(lambda: CategoryFilter(scorer, cache, names, s.eta, cfg.filter_size).select(image), stages.device)[0]  # noqa: B023
        )
        if scorer.prompts != prompts[-1]:
            raise OvdiffError("the warm filter encoded prompts: the text-embedding cache missed")
    return {
        "figures": {
            "cold": figure("cold text-embedding cache", "s/image", cold),
            "warm": figure("warm text-embedding cache", "s/image", warm),
            "speedup": figure("cold / warm", "×", [c / w for c, w in zip(cold, warm, strict=True)]),
            "prompts": figure("prompts encoded when cold", "prompts", prompts),
        },
        "notes": [
            f"{len(names)} classes, η={s.eta}, CLIP at {cfg.filter_size} px; both include the image forward pass"
        ],
    }


def cache_synthetic_classes(
    cache: Cache,
    stages: Stages,
    names: list[str],
    dim: dict[str, int],
    rows: int,
    seed: int,
    sample_cfg: SampleConfig,
    proto_cfg: ProtoConfig,
) -> None:
    """Cache `names` as classes of the paper's size (random unit prototypes, `rows` instance and part
    rows, fg and bg, in every part) under the ids `ensure_classes` looks up, so reading them costs
    what real ones do."""
    from ..engines.vocab import put_prototypes

    for proto in synthetic_bank(names, dim, rows, seed):
        put_prototypes(cache, stages.specs, proto, seed, sample_cfg, proto_cfg, source="bench")


def bench_vocab(s: BenchSettings, dim: dict[str, int], device: str, dtype: str, seed: int, root: Path) -> dict:
    """Adding one class to a cached vocabulary vs building it alone (in a new process: `vocab_pairs`);
    generator calls on a second run."""
    run = in_child("ovdiff_cli.bench.run:vocab_pairs", [asdict(s), dim, device, dtype, seed, str(root)], root, "vocab")
    t_add, t_alone, t_load = run["add"], run["alone"], run["load"]
    c_add, clock = clock_of(run["device"], run["add"], run["add_cpu"])
    c_alone, _ = clock_of(run["device"], run["alone"], run["alone_cpu"])
    first, second = second_run_calls(s, device, dtype, seed, root)
    return {
        "figures": {
            "add": figure(f"add 1 class to {s.vocab_cached} cached", "s", t_add),
            "alone": figure("build that class alone", "s", t_alone),
            "ratio_wall": figure("add / alone, wall time", "×", ratios(t_add, t_alone)),
            "ratio": figure(f"add / alone, {clock}", "×", ratios(c_add, c_alone), 1.02),
            "load": figure(f"of add: reading the {s.vocab_cached} cached classes", "s", t_load),
            "first_run_calls": figure("generator calls, first segment run", "images", [first]),
            "second_run_calls": figure("generator calls, second segment run", "images", [second], 0),
        },
        "notes": [
            f"'{EXTRA_CLASS}' built for real ({s.n_images} images, {s.steps} steps, {s.size} px) beside "
            f"{s.vocab_cached} cached classes of the paper's size (synthetic, {s.bank_rows} instance + "
            f"{s.bank_rows} part prototypes per group, D={dims_text(dim)}), in a new process that loads the "
            f"models and builds the class once first, as a user's `protos add` or `segment` process starts "
            f"with nothing else in it; generator calls: preset {s.vocab_preset}, the second run with new "
            f"stages (new models) and the same cache, as a new process would"
        ],
    }


def vocab_pairs(settings: dict, dim: dict[str, int], device: str, dtype: str, seed: int, root: str) -> dict:
    """Run in a new process: seconds of `pairs` interleaved adds and lone builds, and of reading the cached classes.

    The added class is really built (sampled, featurised, clustered) with the bench's models and
    settings; the cached ones are synthetic classes of the paper's size (N = K = bank_rows) under
    the ids the vocabulary stage looks up, since building them would take most of the bench. A
    process of its own, as a user's `protos add` or `segment` process starts with nothing else in it.
    """
    from ..compose import Stages
    from ..engines.vocab import ensure_classes, load_parts
    from ..store.keys import class_ids

    s = BenchSettings(**settings)
    stages = Stages.for_run(s.preset, device, dtype)
    base_sample, base_proto, _ = preset_configs(s.preset)
    sample_cfg = replace(base_sample, n_images=s.n_images, steps=s.steps, size=s.size)
    proto_cfg = replace(base_proto, feature_size=s.feature_size, k_parts=s.k_parts)
    names = list(VOC[1 : 1 + s.vocab_cached])
    caches = Path(root)  # where the caches go (a str here: the arguments came as JSON)
    ensure_classes(fresh_cache(caches, "vocab-warmup-"), stages, [EXTRA_CLASS], seed, sample_cfg, proto_cfg)
    # Each side builds into its own cache, opened (and, for `add`, filled) before the clock starts, so
    # both start from a cache that has never held the class: re-adding a removed class to one cache
    # measured a few % slower on its own (allocator and page-cache state), which is not what a user pays.
    bases = []
    for _ in range(s.pairs):
        bases.append(fresh_cache(caches, "vocab-"))
        cache_synthetic_classes(bases[-1], stages, names, dim, s.bank_rows, seed, sample_cfg, proto_cfg)
    with_vocab, fresh = iter(bases), iter([fresh_cache(caches, "alone-") for _ in range(s.pairs)])
    # The fill wrote ~100 MB per cache a moment ago: flushed now, or the add side's first commit (LMDB
    # syncs each one) writes the fill back to disk inside the clock, which the lone side never pays.
    os.sync()

    def add() -> None:
        ensure_classes(next(with_vocab), stages, [*names, EXTRA_CLASS], seed, sample_cfg, proto_cfg)

    def alone() -> None:
        ensure_classes(next(fresh), stages, [EXTRA_CLASS], seed, sample_cfg, proto_cfg)

    cpu: dict[str, list[float]] = {"add": [], "alone": []}
    t_add, t_alone = interleaved_pairs(
        with_cpu_time(add, cpu["add"]), with_cpu_time(alone, cpu["alone"]), s.pairs, stages.device
    )
    pids = [class_ids(n, seed, stages.specs, sample_cfg, proto_cfg) for n in names]
    t_load = [timed(lambda c=c: [load_parts(c, p) for p in pids], stages.device)[0] for c in bases]
    return {
        "add": t_add,
        "alone": t_alone,
        "load": t_load,
        "add_cpu": cpu["add"],
        "alone_cpu": cpu["alone"],
        "device": stages.device.type,  # what --device auto became: the clock of the target follows it
    }


def second_run_calls(s: BenchSettings, device: str, dtype: str, seed: int, root: Path) -> tuple[int, int]:
    """Generator calls (images drawn) of two segment runs with the same classes and cache, each with its own stages and models."""
    from ..compose import Stages

    cache = fresh_cache(root, "runs-")
    folder = write_images(root / "runs-images", 2, s.memory_hw, seed)
    calls = []
    for r in range(2):
        stages = Stages.for_run(s.vocab_preset, device, dtype)
        segment_folder(stages, cache, folder, root / f"runs-masks-{r}", seed)
        calls.append(stages.calls.get("generate", 0))
    return calls[0], calls[1]


# Runs `ovdiff ARGS…` and writes its peak RSS in KiB to the file named first. VmHWM is the high-water
# mark of the process's own address space: the ru_maxrss of wait4() would report the parent's RSS,
# which Linux carries over from the fork into the exec'd child.


# --------------------------------------------------------------------------- the run


def machine(stages: Stages) -> dict:
    """Where the figures came from: the same fields on every machine."""
    import torch

    cpu = _cpu_name()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(stages.device),
        "device_name": torch.cuda.get_device_name(stages.device) if stages.device.type == "cuda" else cpu,
        "dtype": str(stages.dtype).removeprefix("torch."),
    }


def _load() -> float | None:
    """The 1-minute load average: other work on a shared machine slows every figure."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_bench(
    s: BenchSettings,
    root: Path,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    say: Say | None = None,
    only: tuple[str, ...] | None = None,
    session: Callable[..., Any] | None = None,
) -> dict:
    """The sections `only` (default: every one but `ray`) in turn, in a
    scratch folder `root`; returns the results document. A section that needs another's output
    (prototypes: the support set drawn; segment and the vocabularies: the feature dimensions) gets
    it from a synthetic support set when that one is left out. session: the `api.Pipeline` class, which the
    ray section runs."""
    from ..compose import Stages
    from ..io.images import load_image
    from .build import build_once, synthetic_samples
    from .large import bench_large_vocab

    say = say or (lambda _msg: None)
    only = tuple(x for x in SECTIONS if x != "ray") if only is None else only
    stages = Stages.for_run(s.preset, device, dtype)  # weights seeded as every command seeds them
    if stages.specs.preset.weights == "procedural":
        raise OvdiffError("the bench times Stable Diffusion sampling: use an SD preset (sd15-random, tiny, sd15)")
    start = time.perf_counter()
    load = _load()
    sections: dict[str, dict] = {}
    # New processes first, while this one holds no model: a child's peak then never adds to ours.
    if "class_build" in only:
        say(
            f"class build: peak memory at N={s.build_counts[0]} and {s.build_counts[1]} in new processes ({s.build_preset}, {s.build_feature_size} px)"
        )
        sections["class_build"] = bench_build_memory(s, device, dtype, seed, root)
    if "memory" in only:
        say(
            f"memory: segment {s.memory_counts[0]} vs {s.memory_counts[1]} images in new processes ({s.memory_preset} preset)"
        )
        sections["memory"] = bench_memory(s, device, dtype, seed, root)
    samples = None
    if "sampling" in only:
        say(f"sampling: {s.n_images} image(s), {s.steps} steps, {s.size} px, {s.pairs} interleaved pairs")
        sections["sampling"], samples = bench_sampling(stages, s, seed)
    samples = samples or synthetic_samples(s.n_images, s.size, seed)
    dim: dict[str, int] = {}
    if "prototypes" in only:
        say("prototypes: features, masks, K-means")
        sections["prototypes"], dim = bench_prototypes(stages, samples, s, seed, root)
    elif {"segment", "vocabulary", "large_vocab"} & set(only):  # the feature dimensions, from one build
        dim = {
            p: int(a["fg/class"].shape[1])
            for p, a in build_once(stages, samples[:1], s.feature_size, s.k_parts, seed, root)[1].items()
        }
    folder = write_images(root / "images", s.segment_images, s.image_hw, seed)
    if "segment" in only:
        say(f"segment: {s.segment_images} image(s), {s.bank_classes} classes + background")
        sections["segment"] = bench_segment(stages, s, folder, dim, root, seed)
    if "filter" in only:
        say(f"filter: η={s.eta}, cold and warm text-embedding cache")
        sections["filter"] = bench_filter(stages, s, load_image(next(folder.glob("*.jpg"))), root)
    # The sections below run in new processes that load their own models: this one lets go of its own
    # first, so that a child's peak (a thousand classes beside the models) never adds to ours.
    stages = Stages.for_run(s.preset, device, dtype)
    gc.collect()
    if "vocabulary" in only:
        say(f"vocabulary: {s.vocab_cached} cached classes + 1")
        sections["vocabulary"] = bench_vocab(s, dim, device, dtype, seed, root)
    if "large_vocab" in only:
        say(f"large vocabulary: {s.large_classes} cached classes, each measurement in a new process")
        sections["large_vocab"] = bench_large_vocab(s, dim, device, dtype, seed, root)
    if "beyond" in only:
        from .beyond import bench_beyond

        say("beyond the paper: --refine pamr, region voting, a class from photos (procedural world)")
        sections["beyond"] = bench_beyond(s, root, seed)
    if "ray" in only:  # the Ray engine against the local one (skipped without the extra)
        from .engines import bench_ray

        sections["ray"] = bench_ray(session, root, device, dtype, seed, s.repeats, say)
    return {
        "version": RESULTS_VERSION,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(stages), "load_average_at_start": load, "load_average_at_end": _load()},
        "settings": {
            **asdict(s),
            "device": str(stages.device),
            "dtype": str(stages.dtype).removeprefix("torch."),
            "seed": seed,
            "sections": list(only),
        },
        "sections": sections,
        "wall_s": round(time.perf_counter() - start, 1),
    }
