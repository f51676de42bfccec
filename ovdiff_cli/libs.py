"""The third-party libraries ovdiff runs on: their versions (for `ovdiff doctor`) and their chatter (for -q)."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from importlib import metadata

LIBRARIES = (
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "open_clip_torch",
    "timm",
    "huggingface_hub",
    "safetensors",
    "numpy",
    "pillow",
    "opencv-python-headless",
    "scipy",
    "lmdb",
    "typer",
    "rich",
)


def versions() -> dict[str, str | None]:
    """Installed version of each library ovdiff uses (None when missing), and Python's."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def quiet_libraries() -> None:
    """Silence the warnings and info logs of transformers, diffusers, huggingface_hub, timm and open_clip
    (and Python warnings), whether or not they are imported yet: with -q only ovdiff's errors speak."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore")
    for name in ("transformers", "diffusers", "huggingface_hub", "timm", "open_clip", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("transformers", "diffusers"):  # already imported: their own verbosity switch
        lib = sys.modules.get(module)
        if lib is not None and hasattr(getattr(lib, "utils", None), "logging"):
            lib.utils.logging.set_verbosity_error()
