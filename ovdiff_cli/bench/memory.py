"""The bench's memory section: each measurement in a new process, its peak RSS read from the outside, so models and
caches the parent holds never count; and the folder job the memory and second-run sections share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import OvdiffError
from .settings import (
    MEMORY_CLASSES,
    BenchSettings,
    fresh_cache,
    preset_configs,
    write_images,
)
from .stats import figure

if TYPE_CHECKING:
    from ..compose import Stages
    from ..store.cache import Cache


def segment_folder(stages: Stages, cache: Cache, folder: Path, out: Path, seed: int) -> None:
    """What `ovdiff segment FOLDER --classes MEMORY_CLASSES` does with the preset's defaults."""
    from ..engines.local import segment_paths
    from ..engines.vocab import ensure_classes
    from ..io.images import discover

    sample_cfg, proto_cfg, seg_cfg = preset_configs(stages.specs.preset.name)
    classes = ensure_classes(cache, stages, list(MEMORY_CLASSES), seed, sample_cfg, proto_cfg)
    segment_paths(stages.segmenter(classes, seg_cfg, proto_cfg.extractor, cache), discover([str(folder)]), out)


_PEAK_WRAPPER = """
import runpy, sys
out = sys.argv.pop(1)
sys.argv[0] = "ovdiff"
try:
    runpy.run_module("ovdiff_cli", run_name="__main__")
finally:
    try:
        kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    except OSError:
        import resource
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
    open(out, "w").write(str(kib))
"""


def child_peak_rss(args: list[str], root: Path, tag: str) -> float:
    """Peak resident memory (MiB) of `ovdiff ARGS…` run to completion in a new process."""
    peak, log = root / f"{tag}.peak", root / f"{tag}.log"
    with open(log, "w") as f:
        code = subprocess.run(
            [sys.executable, "-c", _PEAK_WRAPPER, str(peak), *args], stdout=f, stderr=subprocess.STDOUT
        ).returncode
    if code:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise OvdiffError(f"memory run exited with {code}: {' | '.join(tail)}")
    return int(peak.read_text()) / 1024


def bench_memory(s: BenchSettings, device: str, dtype: str, seed: int, root: Path) -> dict:
    """Peak RSS of `ovdiff segment` processes over few and many images (prototypes already cached)."""
    from ..compose import Stages

    small, large = s.memory_counts
    folders = {n: write_images(root / f"memory-{n}", n, s.memory_hw, seed) for n in (small, large)}
    cache = fresh_cache(root, "memory-")
    stages = Stages.for_run(s.memory_preset, device, dtype)
    segment_folder(stages, cache, folders[small], root / "memory-warmup", seed)  # builds the classes

    def run(n: int) -> float:
        return child_peak_rss(
            [
                "segment",
                str(folders[n]),
                "--out",
                str(root / f"memory-out-{n}"),
                "--classes",
                ",".join(MEMORY_CLASSES),
                "--no-build",
                "--quiet",
                "--preset",
                s.memory_preset,
                "--cache",
                str(cache.root),
                "--device",
                device,
                "--dtype",
                dtype,
                "--seed",
                str(seed),
            ],
            root,
            f"memory-{n}",
        )

    peaks: dict[int, list[float]] = {small: [], large: []}
    for r in range(s.repeats):
        for n in (small, large) if r % 2 == 0 else (large, small):
            peaks[n].append(run(n))
    growth = [100 * (b - a) / a for a, b in zip(peaks[small], peaks[large], strict=True)]
    return {
        "figures": {
            "small": figure(f"peak RSS, {small} images", "MiB", peaks[small]),
            "large": figure(f"peak RSS, {large} images", "MiB", peaks[large]),
            "growth": figure(f"growth {small} → {large} images", "%", growth, 5.0),
        },
        "notes": [
            f"`ovdiff segment` in a new process per run, preset {s.memory_preset} (hundreds of full-size "
            f"images take hours on a CPU), {len(MEMORY_CLASSES)} cached classes, {s.memory_hw[1]}×"
            f"{s.memory_hw[0]} JPEGs; peak RSS = VmHWM"
        ],
    }
