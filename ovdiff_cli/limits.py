"""The stated range of every numeric setting, checked before any work, with the limit in the message.

Upper bounds keep a typo (`--n-images 1000000000000`, `--short-side 20000`) from running until the
disk fills or the process is killed: each is far above any sensible use (the paper's values are
N = 32, short side 448, windows 448/336) and below what a large GPU machine can hold.
"""

from __future__ import annotations

import math
import numbers
import shutil
from pathlib import Path

from .errors import InvalidSetting, OvdiffError

MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; image seeds are hashes of it
MAX_N_IMAGES = 10_000  # support images per class (the paper uses 32)
MAX_BATCH = 1024
MAX_STEPS = 1000  # diffusion steps (DPM-Solver++ needs ~30)
MAX_GUIDANCE = 100.0
MAX_SAMPLE_SIZE = 2048  # support image side: SD 1.5 is trained at 512
MAX_K_PARTS = 4096
MAX_SIDE = 4096  # --short-side, --windows, --stride: the paper resizes to 448
MAX_WINDOWS = 16  # window sizes in --windows
MAX_ETA = 254  # classes kept per image: as many as a mask can label
MAX_COUNT = 10**9  # --limit, --images, --repeats, --pairs: counts of things
MAX_OFFSET = 254  # mask values are 0..254
MAX_WORKERS = 4096  # Ray workers of one command: far beyond any cluster's GPUs
MAX_PIXELS = 89_478_485  # one picture: Pillow's own decompression-bomb limit (io.images refuses above it too)

# The stated range of every numeric setting, by its config field name (the CLI's option is
# `cli.options.flag(name)`): the configs check themselves with it (config.py), and the boundary test
# walks the commands' declarations and fails for a numeric option whose setting is missing here.
RANGES: dict[str, tuple[float, float]] = {
    "seed": (0, MAX_SEED),
    "seeds": (0, MAX_SEED),
    "n_images": (1, MAX_N_IMAGES),
    "batch_size": (1, MAX_BATCH),
    "steps": (1, MAX_STEPS),
    "guidance_scale": (0, MAX_GUIDANCE),
    "size": (8, MAX_SAMPLE_SIZE),
    "k_parts": (1, MAX_K_PARTS),
    "eta": (1, MAX_ETA),
    "short_side": (8, MAX_SIDE),
    "stride": (8, MAX_SIDE),
    "windows": (8, MAX_SIDE),
    "filter_size": (8, MAX_SIDE),
    "fg_threshold": (-1.0, 1.0),
    "stuff_threshold": (-1.0, 1.0),
    "image_batch": (1, MAX_BATCH),
    "offset": (0, MAX_OFFSET),
    "limit": (1, MAX_COUNT),
    "images": (1, MAX_COUNT),
    "repeats": (1, MAX_COUNT),
    "pairs": (1, MAX_COUNT),
    "workers": (1, MAX_WORKERS),
    "port": (0, 65535),
    "max_pixels": (1, MAX_PIXELS),
    "max_classes": (1, MAX_ETA),
    "alpha": (0.0, 1.0),
    "scene_side": (8, MAX_SIDE),
}


def in_range(setting: str, value: float | int, what: str = "") -> None:
    """InvalidSetting unless RANGES[setting] holds `value` (and, for floats, it is finite)."""
    lo, hi = RANGES[setting]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidSetting(setting, f"must be a number in {lo}..{hi}, got {type(value).__name__} {value!r:.40}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidSetting(setting, f"must be a finite number in {lo}..{hi}, got {value}")
    if not lo <= value <= hi:
        raise InvalidSetting(setting, f"must be in {lo}..{hi}{what}, got {value}")


def check_seed(seed: int, setting: str = "seed") -> None:
    in_range(setting, seed, " (64-bit seeds)")


def check_room(cache_root: Path, n_new: int, size: int, attribution_size: int) -> None:
    """Refuse to sample `n_new` images of size² pixels when the cache's disk cannot hold them: each takes
    about half its raw size as a PNG, with its float32 attribution map of attribution_size²."""
    need = n_new * (size * size * 3 + attribution_size**2 * 4) // 2
    where = Path(cache_root)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if need > free:
        raise OvdiffError(
            f"the disk is full for {n_new} more support images of {size} px (about {need / 2**20:.0f} MiB needed, "
            f"{free / 2**20:.0f} MiB free at {where}): free space, lower n_images or use another cache folder; "
            "classes committed before are intact"
        )
