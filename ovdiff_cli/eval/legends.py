"""Reading a saved legend (classes.json of `ovdiff segment`) against a benchmark's classes, for `ovdiff eval --pred`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..classnames import IGNORE_INDEX, NO_CLASS
from ..errors import OvdiffError

if TYPE_CHECKING:
    from .datasets import SegDataset


def _fold(name: str) -> str:
    """A class name compared loosely: NFC, case folded, letters and digits only ("Potted plant" = "pottedplant")."""
    import unicodedata

    return "".join(c for c in unicodedata.normalize("NFC", name).casefold() if c.isalnum())


UNNAMED = -2  # in `legend_lookup`'s table: a mask value its legend does not name (an error to meet)


def legend_lookup(path: Path, dataset: SegDataset) -> np.ndarray:
    """(65536,) int64: mask value → dataset index (NO_CLASS for 255 unless the legend names it and,
    without background, for background; UNNAMED for values the legend does not name), from an `ovdiff
    segment` classes.json. No class is NO_CLASS, never 255: in ade847 and pc459, 255 is a class.

    Names are matched to the dataset's classes (its corrected and raw names) loosely; a name that
    matches none is a one-line error, so masks of other classes are never scored under wrong labels.
    """
    from .datasets import class_names

    try:
        labels = json.loads(path.read_text(encoding="utf-8-sig"))["labels"]
        entries = [(int(e["index"]), str(e["name"])) for e in labels]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OvdiffError(f"cannot read the legend {path}: {getattr(e, 'strerror', None) or e}") from e
    known = {_fold(n): j for j, n in enumerate(dataset.classes)}
    if dataset.classes == class_names(dataset.name):
        known.update({_fold(n): j for j, n in enumerate(class_names(dataset.name, raw=True))})
    lut = np.full(1 << 16, UNNAMED, np.int64)  # 8-bit and 16-bit masks
    if IGNORE_INDEX not in {index for index, _ in entries}:
        lut[IGNORE_INDEX] = NO_CLASS  # 255 is "no class" unless the legend names it (16-bit masks)
    unmatched = []
    for index, name in entries:
        if not 0 <= index < 1 << 16:
            raise OvdiffError(f"the legend {path} lists index {index}: mask values are 0..65535")
        if _fold(name) == "background":
            lut[index] = 0 if dataset.has_background else NO_CLASS
        elif _fold(name) in known:
            lut[index] = known[_fold(name)]
        else:
            unmatched.append(name)
    if unmatched:
        some = ", ".join(repr(n) for n in unmatched[:5]) + (" …" if len(unmatched) > 5 else "")
        raise OvdiffError(
            f"the masks' legend {path} names {some}, not among the {dataset.num_classes} classes of {dataset.name}: "
            f"segment with the benchmark's class names (e.g. {', '.join(dataset.classes[1:4])}, …) to score the masks"
        )
    return lut
