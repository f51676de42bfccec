"""How the bench turns timings into figures that hold on a shared machine.

A ratio comes from interleaved pairs: pair i runs A then B when i is even, B then A when odd, so a
slow spell (another process, a thermal step) falls on both sides about equally; each pair gives one
ratio, and the figure is the median of those ratios with their spread (median absolute deviation,
as a percentage of the median). Medians of pair ratios move far less between runs than ratios of
medians, which mix spells that only one side saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def figure(label: str, unit: str, runs: list[float], at_most: float | None = None) -> dict:
    """Median, min, max and spread (MAD as % of the median) of `runs`; with a target, whether the median meets it."""
    med = float(np.median(runs))
    mad = float(np.median(np.abs(np.asarray(runs, float) - med)))
    out: dict[str, Any] = {
        "label": label,
        "unit": unit,
        "median": med,
        "min": float(min(runs)),
        "max": float(max(runs)),
        "spread_pct": 100 * mad / abs(med) if med else 0.0,
        "runs": [float(r) for r in runs],
    }
    if at_most is not None:
        out["target_at_most"] = at_most
        out["pass"] = bool(out["median"] <= at_most)
    return out


def sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of fn(), waiting for the GPU's queued work."""
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - t0, result


def interleaved_pairs(
    a: Callable[[], Any], b: Callable[[], Any], pairs: int, device: torch.device
) -> tuple[list[float], list[float]]:
    """Seconds of `a` and of `b` in each of `pairs` pairs: A B, B A, A B, …. Pair i's ratio is ta[i] / tb[i]."""
    ta, tb = [], []
    for r in range(pairs):
        for which in (a, b) if r % 2 == 0 else (b, a):
            (ta if which is a else tb).append(timed(which, device)[0])
    return ta, tb


def with_cpu_time(fn: Callable[[], Any], into: list[float]) -> Callable[[], Any]:
    """`fn`, appending each call's CPU seconds of this process (all its threads) to `into`: unlike wall time,
    they do not count what other processes do on the machine. On a CPU device only: GPU work is not in them."""

    def run() -> Any:
        t0 = time.process_time()
        out = fn()
        into.append(time.process_time() - t0)
        return out

    return run


def clock_of(device: str, wall: list[float], cpu: list[float]) -> tuple[list[float], str]:
    """The runs a ratio's target is checked on, and their name: CPU time on a CPU, wall time on a GPU."""
    return (cpu, "CPU time of the process") if device == "cpu" else (wall, "wall time")


def ratios(ta: list[float], tb: list[float]) -> list[float]:
    return [x / y for x, y in zip(ta, tb, strict=True)]


_CHILD = (
    "import importlib, json, sys; m, f = sys.argv[1].split(':'); "
    "print(json.dumps(getattr(importlib.import_module(m), f)(*json.loads(sys.argv[2]))))"
)


def in_child(target: str, args: list, root: Path, tag: str) -> Any:
    """`module:function`(*args) run in a new Python process; its JSON result. The child's stderr goes
    to root/tag.log, whose last lines name the failure if it exits non-zero."""
    from ..errors import OvdiffError

    log = root / f"{tag}.log"
    with open(log, "w") as err:
        res = subprocess.run(
            [sys.executable, "-c", _CHILD, target, json.dumps(args)], stdout=subprocess.PIPE, stderr=err, text=True
        )
    if res.returncode:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise OvdiffError(f"bench run {tag} exited with {res.returncode}: {' | '.join(tail)}")
    return json.loads(res.stdout.strip().splitlines()[-1])


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
