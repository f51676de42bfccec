"""The speed and memory figures of issues 7 and 16, measured the same way on any machine (`ovdiff bench`):
settings, the bench's inputs and the results table (how a figure is measured is in `benchstats`, the
sections and the run in `bench_run`, the class-build sections in `benchbuild`).

A figure is the median, with min, max and spread, of `repeats` runs after one warm-up (the first
call at a new input shape pays for kernel selection). A ratio is the median of `pairs` interleaved
pair ratios (A B, B A, …), which holds on a loaded machine. Models are the random-weight presets:
speed needs the architectures and their FLOPs, not the weights. On a CPU the sizes are reduced so
the whole bench takes minutes; on CUDA they are the paper's (App. C.5) except for a bounded support
set in the timing sections.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import ProtoConfig, SampleConfig, SegmentConfig

if TYPE_CHECKING:
    from ..store.cache import Cache
    from ..types import ClassParts


@dataclass(frozen=True)
class BenchSettings:
    """Sizes and counts of one bench run (all recorded in the results)."""

    preset: str
    repeats: int
    pairs: int  # interleaved pairs per ratio
    n_images: int  # support images per class: sampling and prototypes
    steps: int
    size: int  # sampling side, px
    feature_size: int  # support images are featurised at this side
    k_parts: int
    short_side: int
    windows: tuple[int, ...]
    stride: int
    eta: int  # category filter, in the segment and filter sections
    segment_images: int
    image_hw: tuple[int, int]  # test images: VOC's typical 375×500
    bank_classes: int  # named classes of the synthetic prototype bank (+ background)
    bank_rows: int  # instance and part prototypes per class and group (paper: N = K = 32)
    vocab_preset: str  # the preset of the two-segment-runs count
    vocab_cached: int  # classes already cached before one more is added
    memory_preset: str
    memory_counts: tuple[int, int]
    memory_hw: tuple[int, int]
    build_preset: str  # peak memory of one class build at two support-set sizes
    build_counts: tuple[int, int]
    build_feature_size: int
    build_pairs: int
    large_classes: int  # the large-vocabulary section's cached classes
    large_pairs: int  # its interleaved pairs (segment all vs 20 classes; protos add vs alone)
    beyond_scenes: int = 6  # procedural scenes of the "beyond the paper" section (refiners, a class from photos)
    large_proto_dtype: str = "fp32"  # how the large section stores its prototypes (fp16: half the disk)


# Counting generator calls and peak memory is the same everywhere: they measure bookkeeping and
# streaming, which a small preset shows without the hours that full-size classes would take.
_SMALL = dict(
    vocab_preset="tiny", vocab_cached=20, memory_preset="procedural", memory_counts=(10, 200), memory_hw=(120, 160)
)


def bench_settings(
    device_type: str,
    quick: bool = False,
    preset: str | None = None,
    repeats: int | None = None,
    pairs: int | None = None,
) -> BenchSettings:
    """Reduced sizes on a CPU, the paper's on CUDA, seconds-long ones with `quick` (tiny preset)."""
    if quick:
        s = BenchSettings(
            "tiny",
            1,
            1,
            n_images=2,
            steps=2,
            size=64,
            feature_size=64,
            k_parts=4,
            short_side=96,
            windows=(96, 64),
            stride=48,
            eta=4,
            segment_images=1,
            image_hw=(120, 160),
            bank_classes=20,
            bank_rows=32,
            **dict(_SMALL, vocab_cached=3, memory_counts=(2, 6), memory_hw=(60, 80)),
            build_preset="tiny",
            build_counts=(2, 4),
            build_feature_size=64,
            build_pairs=1,
            large_classes=30,
            large_pairs=1,
            beyond_scenes=2,
        )
    elif device_type == "cuda":  # 2 repeats and 3 pairs: the default sections (`default_sections`) end in minutes
        s = BenchSettings(
            "sd15-random",
            2,
            3,
            n_images=8,
            steps=30,
            size=512,
            feature_size=512,
            k_parts=32,
            short_side=448,
            windows=(448, 336),
            stride=224,
            eta=10,
            segment_images=10,
            image_hw=(375, 500),
            bank_classes=20,
            bank_rows=32,
            **_SMALL,
            build_preset="sd15-random",
            build_counts=(8, 32),
            build_feature_size=512,
            build_pairs=1,
            large_classes=10_000,
            large_pairs=3,
            large_proto_dtype="fp16",
        )
    else:  # the paper's windows 448/336, stride 224 and short side 448, scaled by 4/7; one support image per
        # call, so that a loaded 2-core machine runs enough pairs in under half an hour: a pair's ratio
        # wanders by 4-10% (one standard deviation) on a shared 2-core VM, the median of 12 by ~2%
        s = BenchSettings(
            "sd15-random",
            2,
            12,
            n_images=1,
            steps=2,
            size=256,
            feature_size=256,
            k_parts=32,
            short_side=256,
            windows=(256, 192),
            stride=128,
            eta=10,
            segment_images=1,
            image_hw=(375, 500),
            bank_classes=20,
            bank_rows=32,
            **_SMALL,
            build_preset="sd15-random",
            build_counts=(8, 32),
            build_feature_size=128,
            build_pairs=1,
            large_classes=10_000,
            large_pairs=12,
            large_proto_dtype="fp16",
        )
    from ..limits import in_range

    for name, value in (("repeats", repeats), ("pairs", pairs)):
        if value is not None:
            in_range(name, value)
    return replace(s, preset=preset or s.preset, repeats=repeats or s.repeats, pairs=pairs or s.pairs)


MEMORY_CLASSES = ("cat", "dog", "bird")  # the vocabulary of the memory and ray sections
SECTIONS = (
    "class_build",
    "memory",
    "sampling",
    "prototypes",
    "segment",
    "filter",
    "vocabulary",
    "large_vocab",
    "beyond",
    "ray",
)
# On CUDA the default leaves out the sections that start several processes (each pays ~40 s of model
# set-up) or measure the CPU side: the rest ends in a few minutes on an H100/H200; --sections adds them.
_CUDA_LEFT_OUT = ("class_build", "large_vocab", "ray")


def default_sections(device_type: str, quick: bool = False) -> tuple[str, ...]:
    """The sections a run without --sections measures: all on a CPU, all but `ray` with --quick, fewer on CUDA."""
    if quick:
        return tuple(x for x in SECTIONS if x != "ray")
    return tuple(x for x in SECTIONS if device_type != "cuda" or x not in _CUDA_LEFT_OUT)


def parse_sections(text: str | None, device_type: str, quick: bool = False) -> tuple[str, ...]:
    """--sections "a,b" → the sections in run order; None → `default_sections`. Unknown names: InvalidSetting."""
    from ..errors import InvalidSetting

    if text is None:
        return default_sections(device_type, quick)
    wanted = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in wanted if x not in SECTIONS]
    if unknown or not wanted:
        what = f"has {', '.join(map(repr, unknown))}, not a section" if unknown else "is empty"
        raise InvalidSetting("sections", f"{what}; choose from: {', '.join(SECTIONS)}")
    return tuple(x for x in SECTIONS if x in wanted)


# --------------------------------------------------------------------------- inputs


def preset_configs(preset: str) -> tuple[SampleConfig, ProtoConfig, SegmentConfig]:
    """The configs a command gets for `preset` with no options given."""
    from ..models.presets import get_preset

    p = get_preset(preset)
    return p.sample, p.protos, p.segment


def write_images(folder: Path, n: int, hw: tuple[int, int], seed: int) -> Path:
    """n smooth random JPEGs of size hw in `folder` (content is irrelevant to random-weight models)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = hw
    for i in range(n):
        coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.jpg", quality=90)
    return folder


def synthetic_bank(names: list[str], dims: dict[str, int], rows: int, seed: int) -> list[ClassParts]:
    """Thing classes with random unit prototypes of the paper's sizes in each part (part → D): 1
    class, `rows` instance and `rows` part prototypes for fg and for bg. Matching cost depends on
    these shapes only."""
    from ..types import ClassParts, ClassPrototypes

    rng = np.random.default_rng(seed)

    def unit(n: int, dim: int) -> np.ndarray:
        a = rng.standard_normal((n, dim)).astype(np.float32)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    def group(dim: int) -> dict[str, np.ndarray]:
        return {"class": unit(1, dim), "instance": unit(rows, dim), "part": unit(rows, dim)}

    return [
        ClassParts(n, "thing", {p: ClassPrototypes(n, "thing", group(d), group(d)) for p, d in dims.items()})
        for n in names
    ]


def dims_text(dims: dict[str, int]) -> str:
    """Feature dimensions per part for a bench note: "sd 7680, dino 768, clip 768"."""
    return ", ".join(f"{p} {d}" for p, d in dims.items())


def fresh_cache(root: Path, prefix: str) -> Cache:
    """An empty cache in a new folder under `root`."""
    from ..store.cache import Cache

    return Cache(tempfile.mkdtemp(prefix=prefix, dir=root))


# --------------------------------------------------------------------------- output


def fmt(value: float, unit: str) -> str:
    """A figure for the table: counts as integers, the rest to three significant digits."""
    if unit in ("images", "prompts"):
        return f"{value:.0f}"
    return f"{value:.1f}" if unit in ("%", "MiB") else f"{value:.3g}"


def table_rows(results: dict) -> list[tuple[str, ...]]:
    """(section, figure, median, min, max, spread, unit, target, verdict) for every figure (spread: MAD, % of median)."""
    rows = []
    for name, section in results["sections"].items():
        for i, f in enumerate(section["figures"].values()):
            target = f"≤ {fmt(f['target_at_most'], f['unit'])}" if "target_at_most" in f else ""
            verdict = ("pass" if f["pass"] else "MISS") if "pass" in f else ""
            rows.append(
                (
                    name if i == 0 else "",
                    f["label"],
                    fmt(f["median"], f["unit"]),
                    fmt(f["min"], f["unit"]),
                    fmt(f["max"], f["unit"]),
                    f"±{f['spread_pct']:.1f}%" if len(f["runs"]) > 1 else "",
                    f["unit"],
                    target,
                    verdict,
                )
            )
    return rows


def markdown_table(results: dict) -> str:
    """The table as markdown (for the README's Performance section)."""
    head = ("section", "figure", "median", "min", "max", "spread", "unit", "target", "")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(results)]
    return "\n".join(lines)
