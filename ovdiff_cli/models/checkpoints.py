"""Weights published as one file at an address rather than on the Hugging Face hub: CutLER's checkpoint.

Their names and addresses live here, apart from the network code, so presets and the weights table
can name them without importing torch.
"""

from __future__ import annotations

from pathlib import Path

CUTLER_SPEC = "cutler_cascade_final"  # the default --mask-model: CutLER's released checkpoint, by its file name
CUTLER_URL = "http://dl.fbaipublicfiles.com/cutler/checkpoints/cutler_cascade_final.pth"  # CutLER's README


def url_dir() -> Path:
    """Where published single-file weights go: torch's hub folder, `$TORCH_HOME/hub/checkpoints`."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"
