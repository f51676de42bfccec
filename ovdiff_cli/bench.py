"""The speed and memory figures of issue 7, measured the same way on any machine (`ovdiff bench`):
settings, how a figure is measured, the bench's inputs and the results table (the sections and the
run are in `bench_run`).

Every figure is the median, with min and max, of `repeats` runs after one warm-up (the first call at
a new input shape pays for kernel selection). A ratio is formed within each repeat, its two sides
run back to back in alternating order so that drift on a shared machine hits both, and the median
of those ratios is reported. Models are the random-weight presets: speed needs the architectures
and their FLOPs, not the weights. On a CPU the sizes are reduced so the whole bench takes minutes;
on CUDA they are the paper's (App. C.5) except for a bounded support set.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import ProtoConfig, SampleConfig, SegmentConfig

if TYPE_CHECKING:
    import torch

    from .cache import Cache
    from .types import ClassParts



@dataclass(frozen=True)
class BenchSettings:
    """Sizes and counts of one bench run (all recorded in the results)."""

    preset: str
    repeats: int
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


# Counting generator calls and peak memory is the same everywhere: they measure bookkeeping and
# streaming, which a small preset shows without the hours that full-size classes would take.
_SMALL = dict(vocab_preset="tiny", vocab_cached=20, memory_preset="procedural",
              memory_counts=(10, 200), memory_hw=(120, 160))  # fmt: skip


def bench_settings(device_type: str, quick: bool = False, preset: str | None = None,
                   repeats: int | None = None) -> BenchSettings:  # fmt: skip
    """Reduced sizes on a CPU, the paper's on CUDA, seconds-long ones with `quick` (tiny preset)."""
    if quick:
        s = BenchSettings(
            "tiny", 1, n_images=2, steps=2, size=64, feature_size=64, k_parts=4, short_side=96, windows=(96, 64),
            stride=48, eta=4, segment_images=1, image_hw=(120, 160), bank_classes=20, bank_rows=32,
            **dict(_SMALL, vocab_cached=3, memory_counts=(2, 6), memory_hw=(60, 80)),
        )  # fmt: skip
    elif device_type == "cuda":
        s = BenchSettings(
            "sd15-random", 3, n_images=8, steps=30, size=512, feature_size=512, k_parts=32, short_side=448,
            windows=(448, 336), stride=224, eta=10, segment_images=10, image_hw=(375, 500), bank_classes=20,
            bank_rows=32, **_SMALL,
        )  # fmt: skip
    else:  # the paper's windows 448/336, stride 224 and short side 448, scaled by 4/7
        s = BenchSettings(
            "sd15-random", 3, n_images=2, steps=2, size=256, feature_size=256, k_parts=32, short_side=256,
            windows=(256, 192), stride=128, eta=10, segment_images=1, image_hw=(375, 500), bank_classes=20,
            bank_rows=32, **_SMALL,
        )  # fmt: skip
    if repeats is not None:
        from .limits import in_range

        in_range("repeats", repeats)
    if repeats is None:
        return replace(s, preset=preset or s.preset)
    return replace(s, preset=preset or s.preset, repeats=repeats)


# --------------------------------------------------------------------------- figures


def figure(label: str, unit: str, runs: list[float], at_most: float | None = None) -> dict:
    """Median, min and max of `runs`; with a target, whether the median meets it."""
    out: dict[str, Any] = {"label": label, "unit": unit, "median": float(np.median(runs)), "min": float(min(runs)),
                           "max": float(max(runs)), "runs": [float(r) for r in runs]}  # fmt: skip
    if at_most is not None:
        out["target_at_most"] = at_most
        out["pass"] = bool(out["median"] <= at_most)
    return out


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of fn(), waiting for the GPU's queued work."""
    _sync(device)
    t0 = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - t0, result


def alternating(a: Callable[[], Any], b: Callable[[], Any], repeats: int, device: torch.device,
                after_a: Callable[[], Any] | None = None) -> tuple[list[float], list[float]]:  # fmt: skip
    """Seconds of `a` and of `b` per repeat, run back to back, a first on even repeats and b first on odd;
    `after_a` runs untimed after each call of `a` (to undo what it did)."""
    ta, tb = [], []
    for r in range(repeats):
        for which in (a, b) if r % 2 == 0 else (b, a):
            (ta if which is a else tb).append(timed(which, device)[0])
            if which is a and after_a is not None:
                after_a()
    return ta, tb


class TimedScorer:
    """An ImageTextScorer that adds up the time of its forward passes (the filter's backbone work)."""

    def __init__(self, inner, device: torch.device):
        self.inner, self.device = inner, device
        self.seconds = 0.0
        self.prompts = 0

    def identity(self) -> str:
        return self.inner.identity()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        dt, out = timed(lambda: self.inner.encode_images(images), self.device)
        self.seconds += dt
        return out

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        dt, out = timed(lambda: self.inner.encode_texts(prompts), self.device)
        self.seconds += dt
        self.prompts += len(prompts)
        return out


# --------------------------------------------------------------------------- inputs


def preset_configs(preset: str) -> tuple[SampleConfig, ProtoConfig, SegmentConfig]:
    """The configs a command gets for `preset` with no options given."""
    from .models.presets import get_preset

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
    from .types import ClassParts, ClassPrototypes

    rng = np.random.default_rng(seed)

    def unit(n: int, dim: int) -> np.ndarray:
        a = rng.standard_normal((n, dim)).astype(np.float32)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    def group(dim: int) -> dict[str, np.ndarray]:
        return {"class": unit(1, dim), "instance": unit(rows, dim), "part": unit(rows, dim)}

    return [ClassParts(n, "thing", {p: ClassPrototypes(n, "thing", group(d), group(d)) for p, d in dims.items()})
            for n in names]  # fmt: skip


def dims_text(dims: dict[str, int]) -> str:
    """Feature dimensions per part for a bench note: "sd 7680, dino 768, clip 768"."""
    return ", ".join(f"{p} {d}" for p, d in dims.items())


def fresh_cache(root: Path, prefix: str) -> Cache:
    """An empty cache in a new folder under `root`."""
    from .cache import Cache

    return Cache(tempfile.mkdtemp(prefix=prefix, dir=root))


# --------------------------------------------------------------------------- output


def fmt(value: float, unit: str) -> str:
    """A figure for the table: counts as integers, the rest to three significant digits."""
    if unit in ("images", "prompts"):
        return f"{value:.0f}"
    return f"{value:.1f}" if unit in ("%", "MiB") else f"{value:.3g}"


def table_rows(results: dict) -> list[tuple[str, ...]]:
    """(section, figure, median, min, max, unit, target, verdict) for every figure."""
    rows = []
    for name, section in results["sections"].items():
        for i, f in enumerate(section["figures"].values()):
            target = f"≤ {fmt(f['target_at_most'], f['unit'])}" if "target_at_most" in f else ""
            verdict = ("pass" if f["pass"] else "MISS") if "pass" in f else ""
            rows.append((name if i == 0 else "", f["label"], fmt(f["median"], f["unit"]), fmt(f["min"], f["unit"]),
                         fmt(f["max"], f["unit"]), f["unit"], target, verdict))  # fmt: skip
    return rows


def markdown_table(results: dict) -> str:
    """The table as markdown (for the README's Performance section)."""
    head = ("section", "figure", "median", "min", "max", "unit", "target", "")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(results)]
    return "\n".join(lines)
