"""FiftyOne for real: a dataset of procedural images labelled through ovdiff's FiftyOne model
(`dataset.apply_model`), its `mask_targets` from the class names, and FiftyOne's own `evaluate_segmentations`
against the ground truth giving the mIoU that `ovdiff eval` gives on the same images.

FiftyOne's pins would downgrade .venv's opencv and starlette, so it lives in .venv-fo (over .venv):
`make test-fiftyone` runs this file there; elsewhere it skips with the reason."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ovdiff
from ovdiff_cli.errors import MissingLibrary
from ovdiff_cli.io.fiftyone import fiftyone_model
from ovdiff_cli.procedural import LABELLED, write_voc

pytestmark = pytest.mark.fiftyone
SKIP = "FiftyOne is not in this venv: make test-fiftyone runs this file in .venv-fo"


@pytest.fixture(scope="module")
def fo(tmp_path_factory):
    """FiftyOne on a MongoDB of its own on 127.0.0.1, started here with a bounded wait (FiftyOne's own start
    gives up after 60 s, which a busy machine exceeds), in a temporary folder."""
    spec = importlib.util.find_spec("fiftyone")
    if spec is None:
        pytest.skip(SKIP)
    mongod = Path(spec.origin).parent / "db" / "bin" / "mongod"
    if not mongod.exists():
        pytest.skip(
            f"no MongoDB at {mongod}: fiftyone-db downloads it as it builds (offline: fails); make test-fiftyone"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path_factory.mktemp("mongodb")
    cmd = [str(mongod), "--dbpath", str(folder), "--port", str(port), "--bind_ip", "127.0.0.1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        while True:
            with socket.socket() as s, contextlib.suppress(OSError):
                s.connect(("127.0.0.1", port))
                break
            assert proc.poll() is None and time.monotonic() - started < 180, "MongoDB did not listen"
            time.sleep(0.5)
        os.environ.update(
            FIFTYONE_DATABASE_URI=f"mongodb://127.0.0.1:{port}",
            FIFTYONE_DATABASE_VALIDATION="false",  # MongoDB 6.0, the oldest FiftyOne supports: no warning
            FIFTYONE_DO_NOT_TRACK="true",  # no usage analytics: tests reach no network
        )
        import fiftyone

        yield fiftyone
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_without_fiftyone_the_model_says_what_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "fiftyone.core.models", None)  # as if not installed
    pipe = ovdiff.Pipeline(preset="procedural", cache=tmp_path / "cache", device="cpu")
    with pytest.raises(MissingLibrary, match=r"fiftyone_model\(\) needs the optional package fiftyone"):
        fiftyone_model(pipe, ["sky"])


def test_fiftyone_scores_ovdiff_masks_as_ovdiff_eval_does(fo, tmp_path):
    root = tmp_path / "data"
    ids = write_voc(root, 4, seed=11)
    pipe = ovdiff.Pipeline(preset="procedural", cache=tmp_path / "cache", device="cpu", dtype="fp32")
    model = fiftyone_model(pipe, LABELLED)
    assert model.mask_targets == {0: "background", **{k + 1: n for k, n in enumerate(LABELLED)}}

    dataset = fo.Dataset()
    for i in ids:
        with Image.open(root / "VOC2012/SegmentationClass" / f"{i}.png") as m:
            truth = np.asarray(m)  # palette indices; 255 marks the boundary, which both scorings leave out
        sample = fo.Sample(filepath=str(root / "VOC2012/JPEGImages" / f"{i}.jpg"))
        sample["ground_truth"] = fo.Segmentation(mask=truth)
        dataset.add_sample(sample)
    dataset.apply_model(model, "ovdiff")
    dataset.mask_targets = {"ovdiff": model.mask_targets, "ground_truth": model.mask_targets}
    dataset.save()

    for sample in dataset:  # FiftyOne decoded the JPEGs as `ovdiff segment` does: the same label maps
        assert np.array_equal(sample["ovdiff"].mask, pipe.segment(sample.filepath, LABELLED).labels)
    # mask_targets given: without them FiftyOne scores every value it sees, the boundary's 255 included
    results = dataset.evaluate_segmentations(
        "ovdiff", gt_field="ground_truth", eval_key="eval", mask_targets=model.mask_targets
    )
    cm = np.asarray(results.pixel_confusion_matrix, dtype=np.float64)  # rows: truth, columns: ovdiff, label order
    assert cm.shape == (7, 7) and cm.sum() == sum(
        int((np.asarray(s["ground_truth"].mask) != 255).sum()) for s in dataset
    )
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    fiftyone_miou = float(np.nanmean(np.where(union > 0, tp / np.maximum(union, 1), np.nan)))

    scored = pipe.evaluate("voc", root).document()
    print(f"mIoU: FiftyOne {fiftyone_miou:.6f}, ovdiff eval {scored['miou']:.6f}")
    assert fiftyone_miou == pytest.approx(scored["miou"], abs=1e-9) and fiftyone_miou > 0.5
    assert len(dataset.exists("eval_accuracy")) == 4  # per-sample scores stored under the eval key
