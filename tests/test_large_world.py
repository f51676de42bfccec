"""`ovdiff eval` over a thousand classes of the procedural world, end to end, reads per image only
the classes the filter keeps, and scores exactly what the vocabulary held in memory scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.compose import Stages
from ovdiff_cli.models.presets import PRESETS
from ovdiff_cli.procedural import LABELLED, ProceduralExtractor, look_of, support_sample, write_voc
from ovdiff_cli.store.cache import Cache
from ovdiff_cli.types import ClassParts, ClassPrototypes

N_CLASSES = 1000
SEED = 0


def world_class(name: str) -> ClassParts:
    """Prototypes of a world class from three support images, without the model-building path (fast):
    the mean features inside and outside each image's attribution are its instance rows."""
    ext = ProceduralExtractor()
    fg, bg = [], []
    for seed in range(3):
        s = support_sample(name, seed, 64, 8)
        f = ext(torch.from_numpy(s.image).permute(2, 0, 1)[None].float() / 255)[0].flatten(1).T.numpy()
        inside = s.attribution.ravel() > 0.5 * s.attribution.max()
        fg.append(f[inside].mean(0))
        bg.append(f[~inside].mean(0) if (~inside).any() else f.mean(0))
    kind = look_of(name).kind
    table = lambda rows: {"class": np.mean(rows, 0, keepdims=True), "instance": np.stack(rows)}  # noqa: E731
    one = ClassPrototypes(name, kind, table(fg), {} if kind == "stuff" else table(bg))
    return ClassParts(name, kind, {"procedural": one})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from ovdiff_cli.bench.settings import synthetic_bank
    from ovdiff_cli.engines.vocab import put_prototypes

    root = tmp_path_factory.mktemp("large-world")
    write_voc(root / "voc", 3, seed=5)
    preset = PRESETS["procedural"]
    specs = Stages.for_run("procedural", "cpu", "fp32").specs
    cache = Cache(root / "cache")
    extra = [f"gadget {i}" for i in range(N_CLASSES - len(LABELLED))]
    classes = [world_class(n) for n in LABELLED] + synthetic_bank(extra, {"procedural": 20}, 2, SEED)
    for c in classes:
        put_prototypes(cache, specs, c, SEED, preset.sample, preset.protos, source="test")
    names = [c.name for c in classes]
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root, names


def test_eval_over_a_thousand_classes_reads_only_the_kept_ones_and_scores_as_in_memory(world, monkeypatch):
    import ovdiff_cli.store.protos as protos
    from ovdiff_cli.engines.vocab import ensure_classes
    from ovdiff_cli.eval.datasets import load_dataset
    from ovdiff_cli.eval.evaluate import evaluate, protocol_config, segmenter_predictor

    root, names = world
    reads: list[str] = []
    real = protos.load_class
    monkeypatch.setattr(protos, "load_class", lambda cache, pid: reads.append(pid) or real(cache, pid))
    args = ["eval", "voc", "--root", str(root / "voc"), "--preset", "procedural", "--cache", str(root / "cache")]
    args += ["--classes-file", str(root / "classes.txt"), "--seeds", str(SEED), "--out", str(root / "out"), "-q"]
    for run in range(2):
        reads.clear()
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        first = len(reads)
        if run == 0:  # the first run scores the bg prototypes against the stuff classes once: every class
            assert first >= N_CLASSES
    streamed = json.loads((root / "out" / "metrics.json").read_text())
    assert len(streamed["classes"]) == N_CLASSES + 1
    # the second run reads per image at most η things and the 4 stuff classes, never the vocabulary
    assert 0 < first <= 3 * (PRESETS["procedural"].segment.eta + 4)

    # the same vocabulary held in memory (every array read, the full bank): the same scores, exactly
    monkeypatch.setattr(protos, "load_class", real)
    preset = PRESETS["procedural"]
    stages = Stages.for_run("procedural", "cpu", "fp32")
    ds = load_dataset("voc", root / "voc", custom_classes=names)
    held = ensure_classes(Cache(root / "cache"), stages, names, SEED, preset.sample, preset.protos, build=False)
    assert all(c.parts["procedural"].fg for c in held)
    seg = stages.segmenter(held, protocol_config(preset.segment, ds), "procedural")  # no cache: in memory
    result = evaluate(ds, segmenter_predictor(seg, ds), keep=0)
    want = [None if np.isnan(v) else float(v) for v in result.per_class_iou]
    assert [streamed["per_class_iou"][c] for c in ds.classes] == want
    assert streamed["miou"] == pytest.approx(result.miou, abs=0) and result.miou > 0.3
