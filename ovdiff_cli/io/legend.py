"""The legend `ovdiff segment` writes beside its masks (classes.json), and read back to score the masks.

`legend_lookup` maps each mask value to a benchmark's class by name, so masks drawn with any class
list and order are scored under the right labels, and names the benchmark lacks are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .images import save_json
from .masks import format_note, png_kind
from .palette import voc_palette

if TYPE_CHECKING:
    pass

LEGEND_FILE = "classes.json"  # written by `ovdiff segment` beside its masks


def legend(names: list[str], background: bool, fmt: str = "png") -> dict:
    """The classes.json legend: mask value → class name and colour (the VOC palette's, cycled past 255)."""
    pal = voc_palette()
    entries = ([("background", 0)] if background else []) + [(n, k + 1) for k, n in enumerate(names)]
    return {
        "format": format_note(fmt, len(names)),
        "mask_format": fmt if fmt != "png" else f"png-{png_kind(len(names))}",
        "labels": [{"index": i, "name": n, "color": [int(c) for c in pal[i % len(pal)]]} for n, i in entries],
    }


def save_legend(names: list[str], background: bool, out_dir: Path, fmt: str = "png") -> Path:
    """Write the legend of a run's masks into `out_dir` (atomically); its path."""
    path = Path(out_dir) / LEGEND_FILE
    save_json(legend(names, background, fmt), path)
    return path
