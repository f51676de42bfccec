"""Golden values on the tiny preset (seeded random weights, CPU, fp32), as diffusers keeps them:
one class's prototypes in each extractor part (a small slice), and one image's label map and label
scores (sd+dino+clip, late fusion over windows and the whole image, no category filter): the scores
are cosines, so a change to how target features are compared (their per-cell normalisation) moves
them even where the label map holds.

A change to any of them is a deliberate, reviewed update: rerun with OVDIFF_UPDATE_GOLDEN=1 to
rewrite tests/golden/tiny_prototypes_labels.npz, and say in the commit why the values moved.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from ovdiff_cli.engines.vocab import ensure_classes
from ovdiff_cli.models.presets import get_preset
from ovdiff_cli.store.cache import Cache

GOLDEN = Path(__file__).parent / "golden" / "tiny_prototypes_labels.npz"
TINY = get_preset("tiny")


def _image() -> np.ndarray:
    """A fixed 72×120 picture: two colour ramps and a disc (no randomness beyond a fixed seed)."""
    yy, xx = np.mgrid[0:72, 0:120].astype(np.float32)
    img = np.stack([xx / 119 * 255, yy / 71 * 255, np.full_like(xx, 90)], -1)
    img[(yy - 36) ** 2 + (xx - 80) ** 2 < 18**2] = (230, 40, 40)
    return img.astype(np.uint8)


def _values(tiny_stages, tmp_path) -> dict[str, np.ndarray]:
    sample = TINY.sample
    protos = TINY.protos
    seg_cfg = dataclasses.replace(TINY.segment, use_filter=False)  # all three labels appear
    cache = Cache(tmp_path / "cache")
    classes = ensure_classes(cache, tiny_stages, ["cat", "dog", "sky"], 0, sample, protos)
    out = {}
    for part, p in classes[0].parts.items():
        out[f"cat/{part}/fg/class"] = p.fg["class"][0, :8]
        out[f"cat/{part}/bg/instance"] = p.bg["instance"][:2, :8]
        out[f"cat/{part}/fg/part"] = p.fg["part"][:2, :8]
    seg = tiny_stages.segmenter(classes, seg_cfg, protos.extractor, cache).predict(_image(), scores=True)
    out["labels"] = seg.labels
    out["scores"] = seg.scores[:, ::16, ::16]  # (background + 3 classes) × 6 × 10 of the 96×160 working size
    return out


def test_tiny_prototypes_and_label_map_match_the_golden_values(tiny_stages, tmp_path):
    got = _values(tiny_stages, tmp_path)
    if os.environ.get("OVDIFF_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        np.savez_compressed(GOLDEN, **got)
        pytest.skip(f"rewrote {GOLDEN}")
    want = dict(np.load(GOLDEN))
    assert set(got) == set(want)
    for name, value in want.items():
        if name == "labels":
            assert got[name].shape == value.shape and {1, 2, 3} <= set(np.unique(value).tolist())  # every class appears
            assert (got[name] == value).mean() >= 0.99, "label map moved"
        else:
            np.testing.assert_allclose(got[name], value, rtol=1e-3, atol=1e-4, err_msg=name)
