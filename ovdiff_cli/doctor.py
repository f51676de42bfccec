"""`ovdiff doctor`: the facts a bug report needs — device, dtype, library versions, caches, weights."""

from __future__ import annotations

import platform
from pathlib import Path

from .libs import versions
from .models.weights import hf_cache_dir, needed, present
from .version import __version__


def device_facts(device: str = "auto", dtype: str = "auto") -> dict:
    """The device and dtype `--device`/`--dtype` resolve to, with the GPU's name and CUDA version."""
    import torch

    from .models.presets import resolve_device, resolve_dtype

    dev = resolve_device(device)
    facts = {
        "device": str(dev),
        "dtype": str(resolve_dtype(dtype, dev)).removeprefix("torch."),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "torch_threads": torch.get_num_threads(),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        facts["gpu"] = f"{props.name}, {props.total_memory / 2**30:.1f} GiB"
    return facts


def report(
    preset, cache_dir: Path, device: str, dtype: str, models: dict[str, str], extractor: str, mask_proposer: str
) -> dict:
    """Everything `ovdiff doctor` prints, JSON-ready. models: the run's model specs by role."""
    hf = hf_cache_dir()
    weights = [
        {
            "role": w.role,
            "spec": w.spec,
            "source": w.source,
            "repo": w.repo or w.url,
            "present": present(w, hf),
            "licence": w.licence,
            "gated": w.gated,
        }
        for w in needed(models, extractor, mask_proposer)
    ]
    return {
        "ovdiff": __version__,
        "platform": platform.platform(),
        **device_facts(device, dtype),
        "libraries": versions(),
        "preset": preset.name,
        "extractor": extractor,
        "mask_proposer": mask_proposer,
        "ovdiff_cache": str(cache_dir),
        "ovdiff_cache_exists": Path(cache_dir).is_dir(),
        "hf_cache": str(hf),
        "weights": weights,
    }
