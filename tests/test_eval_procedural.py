"""`ovdiff eval` on the procedural world written in VOC layout: the CLI's mIoU is the in-process one,
the ablation switches act, and several seeds report mean ± σ."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ovdiff_cli.store.cache import Cache
from ovdiff_cli.cli.app import app
from ovdiff_cli.eval.datasets import load_dataset
from ovdiff_cli.eval.metrics import ConfusionMatrix
from ovdiff_cli.procedural import LABELLED, write_voc
from ovdiff_cli.engines.vocab import ensure_classes

runner = CliRunner()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_voc(root, 8, seed=3)
    return root


def eval_cli(tree, cache, out, *extra):
    res = runner.invoke(app, ["eval", "voc", "--root", str(tree), "--preset", "procedural", "--cache", str(cache),
                              "--out", str(out), "-q", *extra])  # fmt: skip
    assert res.exit_code == 0, res.output
    return json.loads((out / "metrics.json").read_text())


def test_cli_eval_equals_in_process_miou(tree, tmp_path, procedural_stages):
    p = procedural_stages.specs.preset
    sample_cfg, proto_cfg, seg_cfg = p.sample, p.protos, p.segment
    cache = Cache(tmp_path / "cache")
    classes = ensure_classes(cache, procedural_stages, list(LABELLED), 0, sample_cfg, proto_cfg)
    seg = procedural_stages.segmenter(classes, seg_cfg, proto_cfg.extractor, cache)
    ds = load_dataset("voc", tree, custom_classes=list(LABELLED))
    cm = ConfusionMatrix(len(LABELLED) + 1)
    for item in ds:
        cm.update(seg.predict(item.image()).labels, item.label)
    in_process = cm.miou()
    assert in_process > 0.8

    metrics = eval_cli(tree, tmp_path / "cache", tmp_path / "full")
    assert metrics["miou"] == pytest.approx(in_process, abs=1e-9)
    assert metrics["classes"] == ["background", *LABELLED]
    assert (tmp_path / "full" / "report.html").read_text().count("kite") >= 1

    ablated = eval_cli(tree, tmp_path / "cache", tmp_path / "nobg", "--no-bg-protos")
    assert ablated["miou"] < in_process - 0.1


def test_cli_eval_several_seeds_reports_mean_and_std(tree, tmp_path):
    metrics = eval_cli(tree, tmp_path / "cache", tmp_path / "seeds", "--seeds", "0,1", "--limit", "4")
    agg = metrics["aggregate"]
    assert agg["n_runs"] == 2 and agg["miou"]["n"] == 2
    runs = agg["runs_miou"]
    assert metrics["miou"] == runs[-1] and runs[0] != runs[1]  # the report details the last seed; seeds differ
    assert agg["miou"]["mean"] == pytest.approx(np.mean(runs)) and agg["miou"]["std"] == pytest.approx(np.std(runs))
    assert 0 < agg["miou"]["mean"] <= 1
    assert len(Cache(tmp_path / "cache").classes()) == 2 * len(LABELLED)  # each seed has its own prototypes
