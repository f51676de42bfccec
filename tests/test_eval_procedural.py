"""`ovdiff eval` on the procedural world written in VOC layout: the CLI's mIoU is the in-process one,
the ablation switches act, and several seeds report mean ± σ."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.engines.vocab import ensure_classes
from ovdiff_cli.eval.datasets import load_dataset
from ovdiff_cli.eval.metrics import ConfusionMatrix
from ovdiff_cli.procedural import LABELLED, write_voc
from ovdiff_cli.store.cache import Cache

runner = CliRunner()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_voc(root, 8, seed=3)
    return root


def eval_cli(tree, cache, out, *extra):
    res = runner.invoke(
        app,
        [
            "eval",
            "voc",
            "--root",
            str(tree),
            "--preset",
            "procedural",
            "--cache",
            str(cache),
            "--out",
            str(out),
            "-q",
            *extra,
        ],
    )
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


@pytest.fixture(scope="module")
def switch_cache(tree, tmp_path_factory):
    """One cache for the ablation runs below: the prototypes are built once."""
    return tmp_path_factory.mktemp("switches") / "cache"


def _spied_eval(tree, cache, out, monkeypatch, *extra, dataset: str = "voc"):
    """`ovdiff eval` through the CLI, recording the segmenter it built, its results and its crops per image."""
    from ovdiff_cli.method.stage4_segment import matching
    from ovdiff_cli.method.stage4_segment.segmenter import Segmenter

    monkeypatch.undo()  # a previous run's spies go: each run records only itself
    seen = {"segmenters": [], "results": [], "crops": []}
    predict_many, crops = Segmenter.predict_many, matching.crops

    def spy_predict(self, images, explain=False, scores=False):
        seen["segmenters"].append(self)
        out_ = predict_many(self, images, explain, scores)
        seen["results"] += out_
        return out_

    def spy_crops(image, windows, stride):
        got = list(crops(image, windows, stride))
        seen["crops"].append(len(got))
        return iter(got)

    monkeypatch.setattr(Segmenter, "predict_many", spy_predict)
    monkeypatch.setattr(matching, "crops", spy_crops)
    res = runner.invoke(
        app,
        [
            "eval",
            dataset,
            "--root",
            str(tree),
            "--preset",
            "procedural",
            "--cache",
            str(cache),
            "--out",
            str(out),
            "-q",
            "--limit",
            "3",
            *extra,
        ],
    )
    assert res.exit_code == 0, res.output
    seen["segmenter"] = seen["segmenters"][0]
    return json.loads((out / "metrics.json").read_text()), seen


def _every(seg):
    """The bank of every class in play (a streamed vocabulary reads them all for it)."""
    return seg.vocabs[0].restrict(list(range(len(seg.classes))))


def _kinds(seg) -> set[str]:
    return {p.kind for p in _every(seg).provenance}


def _bg_rows(seg) -> int:
    return sum(p.group == "bg" for p in _every(seg).provenance)


@pytest.fixture(scope="module")
def default_run(tree, switch_cache, tmp_path_factory):
    """The default `ovdiff eval voc` run, as the ablations' contrast."""
    with pytest.MonkeyPatch.context() as mp:
        return _spied_eval(tree, switch_cache, tmp_path_factory.mktemp("default"), mp)


@pytest.mark.parametrize("switch", ["--no-filter", "--no-slide", "--no-stuff-filter", "--protos", "--no-bg-protos"])
def test_each_ablation_switch_of_table_a1_acts_through_the_cli(
    tree, switch_cache, default_run, tmp_path, monkeypatch, switch
):
    """Table A.1's switches, each through `ovdiff eval`: the segmenter the CLI builds behaves as the
    switch says (the default run is the contrast), so a switch the CLI dropped fails here."""
    _, base = default_run
    extra = [switch, "class"] if switch == "--protos" else [switch]
    _, got = _spied_eval(tree, switch_cache, tmp_path / "ablated", monkeypatch, *extra)
    b, s = base["segmenter"], got["segmenter"]
    every = list(range(len(LABELLED)))
    if switch == "--no-filter":
        assert b.filter is not None and any(r.selected != every for r in base["results"])
        assert s.filter is None and all(r.selected == every for r in got["results"])
    elif switch == "--no-slide":
        assert all(n > 1 for n in base["crops"]) and got["crops"] == [1] * len(got["results"])  # the whole image only
    elif switch == "--no-stuff-filter":
        assert b.vocabs[0].stuff_threshold == 0.85 and s.vocabs[0].stuff_threshold is None
        assert _bg_rows(s) > _bg_rows(b)  # the procedural world has bg prototypes that look like its stuff
    elif switch == "--protos":
        assert _kinds(b) == {"class", "instance", "part"} and _kinds(s) == {"class"}
    else:
        assert _bg_rows(b) > 0 and b.vocabs[0].bg_threshold is None
        assert _bg_rows(s) == 0 and s.vocabs[0].bg_threshold == 0.72


def test_benchmarks_without_background_are_segmented_under_their_protocol(
    tree, switch_cache, default_run, tmp_path, monkeypatch
):
    """`eval voc20` (no background, paper A.3) through the model path: the segmenter is built with
    `protocol_config` (named classes only, no bg prototypes), so no pixel is background, whereas
    `eval voc` on the same images labels some."""
    _, voc = default_run
    assert voc["segmenter"].cfg.background and any((r.labels == 0).any() for r in voc["results"])
    metrics, voc20 = _spied_eval(tree, switch_cache, tmp_path / "voc20", monkeypatch, dataset="voc20")
    assert metrics["classes"] == list(LABELLED)
    seg = voc20["segmenter"]
    assert not seg.cfg.background and not seg.cfg.bg_prototypes
    every = _every(seg)
    assert all(p.group == "fg" for p in every.provenance) and 0 not in every.labels
    assert len(voc20["results"]) == 3 and all((r.labels > 0).all() for r in voc20["results"])
