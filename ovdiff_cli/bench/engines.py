"""The bench's Ray section: images/s of `segment --engine ray` with 1 and 2 workers against the local
engine on the same images, and what starting a local Ray instance costs.

On the procedural preset (its hand-made extractor is cheap, so the figures show the engine's own
cost and scaling, not a backbone's). Each repeat runs the three jobs back to back in rotating order
and forms the ratios within the repeat. A Ray job's time includes starting its actor pool and
loading the models in each worker, as a user's job pays them; the Ray instance is started once,
and its start-up is timed apart, in a new process each repeat. Every engine runs torch on one
thread per worker, so 2 workers can use 2 cores where the local engine uses one.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RAY_IMAGES = 32
RAY_HW = (120, 160)
WORKERS = (1, 2)

# Times ray.init of a local instance and one task's round trip (which starts a worker process).
_STARTUP = """
import logging, time, ray
t = time.perf_counter()
ray.init(num_cpus={cpus}, include_dashboard=False, logging_level=logging.ERROR)
ray.get(ray.remote(lambda: 0).remote())
print(time.perf_counter() - t)
ray.shutdown()
"""


def startup_seconds(cpus: int) -> float:
    """Seconds to start a local Ray instance with `cpus` CPUs and run a first task, in a new process."""
    out = subprocess.run([sys.executable, "-c", _STARTUP.format(cpus=cpus)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_ray(
    pipeline_class: Callable[..., Any],
    root: Path,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    repeats: int = 3,
    say: Callable[[str], None] | None = None,
    images: int = RAY_IMAGES,
    workers: tuple[int, ...] = WORKERS,
) -> dict:
    """The section's figures and notes (Ray with each count of `workers`); without the ray extra, a note
    saying so and no figures. pipeline_class: the `api.Pipeline` class (this module sits below the API)."""
    import torch

    from ..engines.raycluster import require_ray, session
    from ..errors import OvdiffError
    from .settings import MEMORY_CLASSES, write_images
    from .stats import figure

    say = say or (lambda _msg: None)
    try:
        require_ray()
    except OvdiffError as e:
        return {"figures": {}, "notes": [f"skipped: {e}"]}
    pipe = pipeline_class("procedural", root / "ray-cache", device, dtype, seed)
    names = pipe.vocabulary(list(MEMORY_CLASSES)).names  # built once here: the jobs read them
    folder = write_images(root / "ray-images", images, RAY_HW, seed)

    arrivals: list[float] = []  # when each image of the running job was written

    def arrived(*_args) -> None:
        arrivals.append(time.perf_counter())

    def local(out: Path) -> None:  # the call `ovdiff segment` makes
        pipe.segment_folder(folder, out, names, on_image=arrived)

    def on_ray(workers: int) -> Callable[[Path], None]:
        return lambda out: pipe.segment_folder(folder, out, names, engine="ray", workers=workers, on_image=arrived)

    jobs = {"local": local, **{f"ray{n}": on_ray(n) for n in workers}}
    seconds: dict[str, list[float]] = {k: [] for k in jobs}
    steady: dict[str, list[float]] = {k: [] for k in jobs}  # images/s from the first image written to the last
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        say(f"ray: start-up of a local instance, {repeats} time(s)")
        startup = [startup_seconds(max(workers)) for _ in range(repeats)]
        with session() as ray:
            if 0 < ray.cluster_resources().get("GPU", 0) < max(workers):
                raise OvdiffError(f"the Ray bench needs no GPU or at least {max(workers)} (one per worker)")
            for r in range(repeats):
                order = list(jobs)[r % len(jobs) :] + list(jobs)[: r % len(jobs)]
                for name in order:
                    say(f"ray: repeat {r + 1}, {name}")
                    arrivals.clear()
                    t0 = time.perf_counter()
                    jobs[name](root / f"ray-out-{name}-{r}")
                    seconds[name].append(time.perf_counter() - t0)
                    steady[name].append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
    finally:
        torch.set_num_threads(threads)
    rate = {k: [images / t for t in v] for k, v in seconds.items()}

    def label(k: str) -> str:
        return "local engine" if k == "local" else f"ray, {k[3:]} worker(s)"

    def ratios(of: dict[str, list[float]], n: int) -> list[float]:
        return [a / b for a, b in zip(of[f"ray{n}"], of["local"], strict=True)]

    figures = {k: figure(f"{label(k)}, whole job", "images/s", v) for k, v in rate.items()}
    figures.update(
        {f"ratio{n}": figure(f"ray {n} worker(s) / local, whole job", "×", ratios(rate, n)) for n in workers}
    )
    figures.update(
        {f"steady_{k}": figure(f"{label(k)}, first to last image", "images/s", v) for k, v in steady.items()}
    )
    figures.update(
        {
            f"steady_ratio{n}": figure(f"ray {n} worker(s) / local, first to last image", "×", ratios(steady, n))
            for n in workers
        }
    )
    figures["startup"] = figure("start a local Ray instance + first task", "s", startup)
    return {
        "figures": figures,
        "notes": [
            f"procedural preset, {images} JPEGs of {RAY_HW[1]}×{RAY_HW[0]}, {len(names)} cached classes, "
            "torch on 1 thread per worker; a Ray job's whole time includes starting its actors and loading their "
            "models, as a user's job pays them; 'first to last image' leaves that out (the steady rate)"
        ],
    }
