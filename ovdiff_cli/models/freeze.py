"""Inference-only models: each module on the device in its dtype, in eval mode, with no gradients."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def freeze(modules: Iterable[tuple[torch.nn.Module, torch.dtype]], device: torch.device) -> None:
    """Move every (module, dtype) pair to `device`, cast it only where its dtype differs (a cast of an
    fp32 module to fp32 would copy it), and switch it to eval mode without gradients."""
    for module, dtype in modules:
        module.to(device=device)
        if module.dtype != dtype:
            module.to(dtype=dtype)
        module.eval().requires_grad_(False)
