"""`ovdiff eval` through the CLI: saved masks scored to 1e-6 of an independent count, and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_evaluate import fake_voc, naive_miou, random_preds
from typer.testing import CliRunner

from ovdiff_cli.classnames import KIND_LISTS
from ovdiff_cli.cli.app import app

runner = CliRunner()


def test_eval_pred_matches_independent_miou(tmp_path):
    root, labels = fake_voc(tmp_path, n_images=5)
    preds = random_preds(labels, 21)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for i, p in preds.items():
        Image.fromarray(p).save(pred_dir / f"{i}.png")
    out = tmp_path / "report"
    res = runner.invoke(
        app,
        [
            "eval",
            "voc",
            "--root",
            str(root),
            "--pred",
            str(pred_dir),
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "c"),
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    expected, per_class = naive_miou([(preds[i], labels[i]) for i in labels], 21)
    assert abs(metrics["miou"] - expected) < 1e-6
    got = np.array([np.nan if v is None else v for v in metrics["per_class_iou"].values()], dtype=float)
    np.testing.assert_allclose(got, per_class, atol=1e-6)
    html = (out / "report.html").read_text()
    assert "potted plant" in html and "mIoU" in res.output


def test_eval_pred_without_background_shifts_labels(tmp_path):
    root, labels = fake_voc(tmp_path, n_images=3)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for i, lab in labels.items():  # perfect masks as `ovdiff segment` writes them: class k of the list = k
        Image.fromarray(lab).save(pred_dir / f"{i}.png")
    out = tmp_path / "r"
    res = runner.invoke(
        app,
        [
            "eval",
            "voc20",
            "--root",
            str(root),
            "--pred",
            str(pred_dir),
            "--out",
            str(out),
            "-q",
            "--cache",
            str(tmp_path / "c"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metrics.json").read_text())["miou"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0,1"], "--seeds apply to a model's predictions"),
        (["--limit", "0"], "--limit must be in 1..1000000000"),
    ],
)
def test_eval_pred_option_errors(tmp_path, args, message):
    root, _ = fake_voc(tmp_path, n_images=1)
    (tmp_path / "pred").mkdir()
    res = runner.invoke(
        app,
        ["eval", "voc", "--root", str(root), "--pred", str(tmp_path / "pred"), *args, "--cache", str(tmp_path / "c")],
    )
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


def test_eval_missing_split_names_the_file(tmp_path):
    root, _ = fake_voc(tmp_path, n_images=1)
    (root / "ImageSets/Segmentation/val.txt").unlink()
    res = runner.invoke(
        app, ["eval", "voc", "--root", str(root), "--pred", str(tmp_path), "--cache", str(tmp_path / "c")]
    )
    assert res.exit_code == 2
    assert "val.txt" in res.output


def test_eval_real_voc_image_end_to_end_on_tiny(tmp_path):
    """The issue's command on the real VOC sample: models, prototypes for 20 classes, report."""
    from conftest import VOC_SAMPLE

    if not VOC_SAMPLE.is_dir():
        pytest.skip("shared/data/voc-sample is not beside the repository")
    out = tmp_path / "report"
    res = runner.invoke(
        app,
        [
            "eval",
            "voc",
            "--root",
            str(VOC_SAMPLE),
            "--preset",
            "tiny",
            "--n-images",
            "2",
            "--cache",
            str(tmp_path / "c"),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 1 and 0.0 <= metrics["miou"] <= 1.0
    assert metrics["per_class_iou"]["dog"] is not None  # the dog is in the ground truth: scored
    assert "table" in metrics["classes"] and "dining table" not in metrics["classes"]  # the authors' VOC name
    # ... built as a thing, as the authors' Table C.9 has it (the stuff table alone would make "table" stuff)
    from ovdiff_cli.engines.catalogue import find_classes
    from ovdiff_cli.store.cache import Cache

    kinds = {rec["name"]: rec["kind"] for _, rec in find_classes(Cache(tmp_path / "c"))}
    assert kinds["table"] == "thing" and set(kinds.values()) == {"thing"}
    assert metrics["protocol"]["kinds"] == {"list": KIND_LISTS["authors"], "stuff": []}
    assert "the authors'" in res.output  # the run names the list it used
