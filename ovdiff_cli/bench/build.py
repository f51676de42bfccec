"""The bench's class-build sections: where a class build's time goes, and its peak memory at two N.

Both run the real streaming build (`classbuild.part_prototypes`: every part of the spec, the masks
made in the same pass as the part the proposer reads). Time is split by wrapping the extractor parts,
the mask proposer and the aggregation itself (`RegionAccumulator.add`: Eq. 1 and the cells kept;
`.finish`: K-means and the part labels), each timed directly; what is left of the wall time (images
resized, masks coded, batches formed) is reported apart. Memory is measured in a new process per
build, so one build's allocations cannot hide the next one's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .stats import figure, in_child, sync, timed

if TYPE_CHECKING:
    import torch

    from ..compose import Stages
    from ..types import Sample
    from .settings import BenchSettings


class _Clock:
    """An extractor part or mask proposer whose `methods` add their time to `into[key]`; the rest passes through."""

    def __init__(self, inner, methods: tuple[str, ...], into: dict[str, float], key: str, device: torch.device):
        self._inner, self._methods, self._into, self._key, self._device = inner, methods, into, key, device

    def __getattr__(self, name: str):
        value = getattr(self._inner, name)
        if name not in self._methods:
            return value

        def run(*args):
            dt, out = timed(lambda: value(*args), self._device)
            self._into[self._key] += dt
            return out

        return run

    def __call__(self, images):
        return self.__getattr__("__call__")(images)


class _ClockedStages:
    """A run's stages whose extractor parts (forward passes) and mask proposer (proposals, thresholds) are timed."""

    def __init__(self, stages: Stages):
        self._stages = stages
        self.specs, self.device, self.dtype = stages.specs, stages.device, stages.dtype
        self.seconds = {"features": 0.0, "masks": 0.0}

    def part(self, name: str):
        return _Clock(self._stages.part(name), ("__call__",), self.seconds, "features", self.device)

    def mask_proposer(self, name: str):
        return _Clock(self._stages.mask_proposer(name), ("propose", "thresholds"), self.seconds, "masks", self.device)


@contextmanager
def _clocked_aggregation(into: dict[str, float], device: torch.device) -> Iterator[None]:
    """While open, every `RegionAccumulator.add` adds its time to into["aggregation"] and every `.finish` (K-means
    on the cells, then the part labels) to into["kmeans"]."""
    from ..method.stage2_prototypes.aggregation import RegionAccumulator

    saved = {"add": RegionAccumulator.add, "finish": RegionAccumulator.finish}

    def clock(method: str, key: str):
        inner = saved[method]

        def run(self, *args):
            dt, out = timed(lambda: inner(self, *args), device)
            into[key] += dt
            return out

        return run

    RegionAccumulator.add, RegionAccumulator.finish = clock("add", "aggregation"), clock("finish", "kmeans")
    try:
        yield
    finally:
        RegionAccumulator.add, RegionAccumulator.finish = saved["add"], saved["finish"]


def build_once(
    stages: Stages, samples: list[Sample], feature_size: int, k: int, seed: int, spill: Path
) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray]]]:
    """One class build from `samples`, every part of the preset's spec: seconds of each stage ("features",
    "masks", "aggregation": Eq. 1 and the masked cells kept, "kmeans": K-means and the part labels, each timed
    directly; "other": the wall time less those) and part → arrays."""
    from ..config import spec_parts
    from ..method.stage2_prototypes.classbuild import part_prototypes

    base = _proto_cfg(stages.specs.preset.name)
    cfg = replace(base, feature_size=feature_size, k_parts=k)
    clocked = _ClockedStages(stages)
    parts = spec_parts(cfg.extractor)
    seconds = clocked.seconds
    seconds.update(aggregation=0.0, kmeans=0.0)
    with _clocked_aggregation(seconds, stages.device):
        wall, built = timed(
            lambda: {
                p: a for p, a, _ in part_prototypes(samples, clocked, cfg, parts, seed, False, spill_dir=str(spill))
            },
            stages.device,
        )
    return {**seconds, "other": wall - sum(seconds.values())}, built


def bench_prototypes(
    stages: Stages, samples: list[Sample], s: BenchSettings, seed: int, spill: Path
) -> tuple[dict, dict[str, int]]:
    """Seconds per class of the build's stages on the support set just drawn, and K-means + aggregation's
    share of the feature time. Returns the section and each part's feature dimension D."""
    from .settings import dims_text

    build_once(stages, samples, s.feature_size, s.k_parts, seed, spill)  # warm-up
    runs = [build_once(stages, samples, s.feature_size, s.k_parts, seed, spill) for _ in range(s.repeats)]

    def col(key: str) -> list[float]:
        return [r[0][key] for r in runs]

    km = [a + b for a, b in zip(col("aggregation"), col("kmeans"), strict=True)]
    dims = {p: int(a["fg/class"].shape[1]) for p, a in runs[0][1].items()}
    cfg = _proto_cfg(stages.specs.preset.name)
    section = {
        "figures": {
            "features": figure("features (backbones)", "s/class", col("features")),
            "masks": figure("mask proposals", "s/class", col("masks")),
            "kmeans": figure("K-means + aggregation", "s/class", km),
            "kmeans_only": figure("  of which K-means and part labels", "s/class", col("kmeans")),
            "kmeans_share": figure(
                "K-means + aggregation / features",
                "%",
                [100 * a / b for a, b in zip(km, col("features"), strict=True)],
                10.0,
            ),
            "other": figure("the rest (resizing, mask coding, batching)", "s/class", col("other")),
            "total": figure("total (without sampling)", "s/class", [sum(r[0].values()) for r in runs]),
        },
        "notes": [
            f"{len(samples)} support image(s) per class at {s.feature_size} px, extractor {cfg.extractor} "
            f"(D={dims_text(dims)}), proposer {cfg.mask_proposer} on {cfg.mask_features}, K={s.k_parts}, "
            f"streamed {cfg.batch_size} image(s) per batch (classbuild.part_prototypes); every stage timed "
            "directly (K-means + aggregation: RegionAccumulator.add and .finish), the rest is the wall time less them"
        ],
    }
    return section, dims


def _proto_cfg(preset: str):
    """The ProtoConfig a command gets for `preset` with no options given."""
    from .settings import preset_configs

    return preset_configs(preset)[1]


# --------------------------------------------------------------------------- memory of one build


def synthetic_samples(n: int, size: int, seed: int) -> list[Sample]:
    """n smooth random support images (size×size) with smooth random attribution maps (64×64)."""
    import torch
    import torch.nn.functional as F

    from ..types import Sample

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 4, size // 16 + 1, size // 16 + 1, generator=g)
    fine = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    att = F.interpolate(coarse[:, 3:], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    images = (fine[:, :3] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Sample(image=np.ascontiguousarray(im), attribution=a.numpy()) for im, a in zip(images, att, strict=True)]


def _status_kib(field: str) -> int | None:
    try:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))
    except (OSError, StopIteration):
        return None


def build_memory(preset: str, device: str, dtype: str, seed: int, n: int, feature_size: int, k: int) -> dict:
    """Run in a child process: load the models, then one class build of n synthetic support images.

    Returns MiB: "models" (resident, or CUDA-allocated, once every part and the proposer are built) and "peak" (the
    build's high-water mark; on Linux the RSS mark is reset after loading via /proc/self/clear_refs,
    so model loading's own peak does not count).
    """
    import torch

    from ..compose import Stages
    from ..config import spec_parts

    stages = Stages.for_run(preset, device, dtype)
    cfg = _proto_cfg(preset)
    for part in {*spec_parts(cfg.extractor), cfg.mask_features}:  # loads the models
        stages.part(part)
    stages.mask_proposer(cfg.mask_proposer)
    samples = synthetic_samples(n, feature_size, seed)
    cuda = stages.device.type == "cuda"
    if cuda:
        sync(stages.device)
        torch.cuda.reset_peak_memory_stats(stages.device)
        models = torch.cuda.memory_allocated(stages.device) / 2**20
    else:
        try:  # noqa: SIM105
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        except OSError:
            pass
        models = (_status_kib("VmRSS") or 0) / 1024
    with tempfile.TemporaryDirectory(prefix="ovdiff-bench-spill-") as spill:
        build_once(stages, samples, feature_size, k, seed, Path(spill))
    peak = torch.cuda.max_memory_allocated(stages.device) / 2**20 if cuda else (_status_kib("VmHWM") or 0) / 1024
    return {"models": models, "peak": peak, "measure": "cuda max_memory_allocated" if cuda else "VmHWM"}


def bench_build_memory(s: BenchSettings, device: str, dtype: str, seed: int, root: Path) -> dict:
    """Peak memory of one class build at N = small and large support images, in new processes, in
    interleaved pairs; growth from small to large, and the large build's peak beyond the models."""
    small, large = s.build_counts
    runs: dict[int, list[dict]] = {small: [], large: []}
    for r in range(s.build_pairs):
        for n in (small, large) if r % 2 == 0 else (large, small):
            args = [s.build_preset, device, dtype, seed, n, s.build_feature_size, s.k_parts]
            runs[n].append(in_child("ovdiff_cli.bench.build:build_memory", args, root, f"build-{n}-{r}"))
    peak = {n: [x["peak"] for x in v] for n, v in runs.items()}
    beyond = {n: [x["peak"] - x["models"] for x in v] for n, v in runs.items()}
    paper = s.build_feature_size == 512
    unit = runs[large][0]["measure"]
    return {
        "figures": {
            "small": figure(f"peak, N={small}", "MiB", peak[small]),
            "large": figure(f"peak, N={large}", "MiB", peak[large]),
            "growth": figure(
                f"growth N={small} → {large}",
                "%",
                [100 * (b - a) / a for a, b in zip(peak[small], peak[large], strict=True)],
                10.0,
            ),
            "beyond_small": figure(f"beyond the models, N={small}", "MiB", beyond[small]),
            "beyond_models": figure(f"beyond the models, N={large}", "MiB", beyond[large], 1536.0 if paper else None),
        },
        "notes": [
            f"one class build (features, masks, prototypes; no sampling) of synthetic support images, preset "
            f"{s.build_preset}, {s.build_feature_size} px, K-means on every masked cell (streamed from the "
            f"device or the spill file), a new process per build, {s.build_pairs} interleaved pair(s); peak = {unit} after the models loaded"
            + ("" if paper else "; the ≤ 1.5 GB target applies at the paper's 512 px: see the README")
        ],
    }
