"""Tier 3: the real models (SD v1.5, CLIP ViT-B/16, DINO ViT-B/8). Skipped unless OVDIFF_SLOW=1 and
the weights are in the local Hugging Face cache (or the network is reachable); ideally on a GPU."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import VOC_SAMPLE
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.eval.datasets import load_dataset
from ovdiff_cli.eval.metrics import ConfusionMatrix

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def allow_hub(monkeypatch):
    """conftest forces offline mode; slow tests may use the hub if the user allows it."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get("OVDIFF_SLOW_ONLINE") == "1":
            monkeypatch.delenv(var, raising=False)


def test_real_models_segment_the_voc_dog(tmp_path):
    """The paper's defaults (N=32, sd+dino+clip, ncut) find the dog of 2007_000063."""
    out = tmp_path / "masks"
    res = CliRunner().invoke(
        app,
        [
            "segment",
            str(VOC_SAMPLE / "JPEGImages"),
            "--classes",
            "dog,chair",
            "--out",
            str(out),
            "--preset",
            "sd15",
            "--cache",
            str(tmp_path / "cache"),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    ds = load_dataset("voc", VOC_SAMPLE)
    item = ds[0]
    from PIL import Image

    pred = np.asarray(Image.open(out / f"{item.id}.png"))
    # ovdiff labels: 1 = dog, 2 = chair → VOC indices 12 and 9
    voc = np.select([pred == 1, pred == 2], [12, 9], 0)
    cm = ConfusionMatrix(21).update(voc, item.label)
    assert cm.iou()[12] > 0.5
