"""The Python API (`import ovdiff`): same label maps as `ovdiff segment`, encode once / match many,
typed results, and the manual's "Python API" example (docs/python.md) run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import PROC
from PIL import Image
from typer.testing import CliRunner

import ovdiff
from ovdiff_cli.cli.app import app
from ovdiff_cli.errors import InvalidSetting, OvdiffError
from ovdiff_cli.procedural import LABELLED, write_voc

API_PAGE = Path(__file__).resolve().parents[1] / "docs/python.md"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("apiworld")
    write_voc(root / "data", 3, seed=11)
    pipe = ovdiff.Pipeline(preset="procedural", cache=root / "cache", device="cpu", dtype="fp32")
    return root, pipe


def test_api_label_maps_equal_ovdiff_segment(world, tmp_path):
    root, pipe = world
    images = sorted((root / "data/VOC2012/JPEGImages").iterdir())
    out = tmp_path / "masks"
    res = CliRunner().invoke(
        app,
        [
            "segment",
            str(images[0].parent),
            "--classes",
            ",".join(LABELLED),
            "--out",
            str(out),
            "--cache",
            str(root / "cache"),
            *PROC,
        ],
    )
    assert res.exit_code == 0, res.output
    vocab = pipe.vocabulary(LABELLED)
    assert vocab.names == list(LABELLED)
    for path in images:
        with Image.open(out / f"{path.stem}.png") as m:
            cli = np.asarray(m)
        for given in (path, str(path), Image.open(path), np.asarray(Image.open(path).convert("RGB"))):
            result = pipe.segment(given, vocab)
            assert result.labels.dtype == np.int32 and np.array_equal(result.labels, cli)
        # encode once, match many: the same labels without running the backbones again
        features = pipe.encode(path)
        assert np.array_equal(features.match(vocab).labels, cli)


def test_segment_folder_is_the_cli_folder_job_from_python(world, tmp_path):
    """`Pipeline.segment_folder` writes what `ovdiff segment` writes, in shards and resumed; a job that
    cannot run is refused before anything is created."""
    root, pipe = world
    images = root / "data/VOC2012/JPEGImages"
    res = CliRunner().invoke(
        app,
        [
            "segment",
            str(images),
            "--classes",
            ",".join(LABELLED),
            "--format",
            "npz",
            "--out",
            str(tmp_path / "cli"),
            "--cache",
            str(root / "cache"),
            *PROC,
        ],
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "api"
    first = pipe.segment_folder(images, out, LABELLED, fmt="npz", shard="0/2")
    assert len(first.items) == 2 and first.summary.written == 2 and first.skipped == 0
    rest = pipe.segment_folder(images, out, LABELLED, fmt="npz", skip_existing=True)
    assert rest.skipped == 2 and len(rest.items) == 1 and rest.items[0].name not in {i.name for i in first.items}
    assert rest.report()["written"] == 1
    for mask in (tmp_path / "cli").glob("*.npz"):
        assert (out / mask.name).read_bytes() == mask.read_bytes(), mask.name
    for bad in (
        {"engine": "ray", "explain": True},
        {"fmt": "coco-rle", "shard": "0/2"},
        {"fmt": "tiff"},
        {"shard": "2/2"},
        {"save_scores": True},
        {"engine": "spark"},
        {"workers": 2},
    ):
        with pytest.raises(OvdiffError):
            pipe.segment_folder(images, tmp_path / "refused", LABELLED, **bad)
        assert not (tmp_path / "refused").exists(), bad


def test_evaluate_is_ovdiff_eval_from_python(world, tmp_path):
    """`Pipeline.evaluate` scores as `ovdiff eval` does, the model or saved masks, and refuses a run that
    cannot work with the setting's typed error before any work."""
    root, pipe = world
    data = root / "data"
    res = CliRunner().invoke(
        app,
        [
            "eval",
            "voc",
            "--root",
            str(data),
            "--out",
            str(tmp_path / "cli"),
            "--cache",
            str(root / "cache"),
            "-q",
            *PROC,
        ],
    )
    assert res.exit_code == 0, res.output
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    notes, scored = [], []
    done = pipe.evaluate("voc", data, out=tmp_path / "api", on_note=notes.append, on_score=lambda *a: scored.append(a))
    assert done.document()["miou"] == cli["miou"] > 0.5 and done.record["seeds"] == [0]
    assert json.loads(done.report[0].read_text())["miou"] == cli["miou"] and done.report[1].name == "report.html"
    assert notes[0].startswith(f"classes from {data / 'classes.txt'}") and notes[1].startswith("thing/stuff kinds")
    assert [(what, i, n) for what, i, n, _, _ in scored] == [("seed 0", 1, 3), ("seed 0", 2, 3), ("seed 0", 3, 3)]

    pipe.segment_folder(data / "VOC2012/JPEGImages", tmp_path / "masks", LABELLED)
    saved = pipe.evaluate("voc", data, pred=tmp_path / "masks")
    assert saved.results[0].miou == pytest.approx(done.results[0].miou) and saved.record["predictions"]
    for bad, setting in (
        ({"pred": tmp_path / "masks", "seeds": [0]}, "seeds"),
        ({"offset": 1}, "offset"),
        ({"pred": tmp_path / "masks", "engine": "ray"}, "engine"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"seeds": [-1]}, "seeds"),
        ({"out": root / "cache" / "r"}, "out"),
    ):
        with pytest.raises(InvalidSetting) as e:
            pipe.evaluate("voc", data, **bad)
        assert e.value.setting == setting, bad
    assert not (root / "cache" / "r").exists()


def test_sample_and_its_contact_sheet_from_python(tmp_path):
    """`Pipeline.sample` is `ovdiff sample` (drawn once, then found), `support_sheet` is `--show`."""
    pipe = ovdiff.Pipeline(preset="procedural", cache=tmp_path / "cache", device="cpu", dtype="fp32")
    n = pipe.sample_config.n_images
    events = []
    first = pipe.sample(["kite", "sky "], on_event=lambda *e: events.append(e))
    assert first.names == ["kite", "sky"] and first.generated == 2 * n and len(set(first.ids)) == 2
    assert events[-1] == ("sample", "sky", n, n) and ("sample", "kite", n, n) in events
    again = pipe.sample(["kite"])
    assert again.generated == 0 and again.ids == first.ids[:1]
    meta, count = pipe.support_sheet("kite", tmp_path / "sheet.png")
    assert count == n and meta["norm"] == "kite" and Image.open(tmp_path / "sheet.png").width > 0
    with pytest.raises(InvalidSetting):
        pipe.support_sheet("kite", tmp_path / "cache" / "sheet.png")  # never written inside the cache


def test_encode_once_matches_several_vocabularies_without_backbones(world):
    _, pipe = world
    image = ovdiff.procedural_scene(seed=3)
    small, large = pipe.vocabulary(["kite", "sky"]), pipe.vocabulary(LABELLED)
    features = pipe.encode(image)
    assert features.size == image.shape[:2] and set(features.timings) == {"filter", "features"}
    extracted = pipe.stages.calls.get("extract", 0)  # images through the extractor (compose's counting wrapper)
    by_features = [features.match(v) for v in (small, large, small)]
    assert pipe.stages.calls.get("extract", 0) == extracted
    for v, r in zip((small, large, small), by_features, strict=True):
        direct = pipe.segment(image, v)
        assert np.array_equal(r.labels, direct.labels)
        assert np.allclose(r.scores, direct.scores) and r.kept == direct.kept
    assert set(np.unique(by_features[0].labels)) <= {0, 1, 2}


def test_result_is_typed_and_saves_as_the_cli_does(world, tmp_path):
    _, pipe = world
    vocab = pipe.vocabulary(LABELLED)
    image = ovdiff.procedural_scene(seed=5)
    r = pipe.segment(image, vocab)
    h, w = image.shape[:2]
    assert r.labels.shape == (h, w) and r.class_names == list(LABELLED) and r.names[0] == "background"
    assert r.scores.shape[0] == len(LABELLED) + 1 and r.scores.dtype == np.float32
    not_kept = [k + 1 for k, n in enumerate(LABELLED) if n not in r.kept]
    assert np.all(r.scores[not_kept] == -2.0)
    assert r.present() and set(r.present()) <= set(r.kept)
    assert r.mask(r.present()[0]).sum() == (r.labels == LABELLED.index(r.present()[0]) + 1).sum()
    with Image.open(r.save(tmp_path / "m.png")) as m:
        assert m.mode == "P" and np.array_equal(np.asarray(m), r.labels)
    with np.load(r.save(tmp_path / "m.npz")) as z:
        assert np.array_equal(z["labels"], r.labels) and z["scores"].shape == r.scores.shape
    over = r.overlay()
    assert over.mode == "RGB" and over.size[1] >= h and over.size[0] > w
    with pytest.raises(OvdiffError, match="not in this vocabulary"):
        r.mask("zebra")


def test_options_are_the_cli_options(world):
    root, _ = world
    with pytest.raises(InvalidSetting, match="segment has unknown field"):
        ovdiff.Pipeline(preset="procedural", cache=root / "cache", segment={"etaa": 3})
    pipe = ovdiff.Pipeline(
        preset="procedural", cache=root / "cache", device="cpu", segment={"background": False, "eta": 2}
    )
    assert pipe.segment_config.eta == 2 and pipe.segment_config.windows == (128, 96)  # preset default kept
    r = pipe.segment(ovdiff.procedural_scene(1), pipe.vocabulary(LABELLED))
    things = [c for c in r.kept if c not in ("sky", "grass")]  # η caps the things; stuff is always kept
    assert 0 not in np.unique(r.labels) and len(things) <= 2 and {"sky", "grass"} <= set(r.kept)
    with pytest.raises(OvdiffError, match="no prototypes cached"):
        pipe.vocabulary(["zebra"], build=False)


def manual_api_block() -> str:
    """The first example of the manual's Python API page, the one it opens with."""
    return re.search(r"```python\n(.*?)```", API_PAGE.read_text(), re.S).group(1)


def test_the_manual_python_api_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = manual_api_block()
    assert 'preset="procedural"' in code and "encode" in code
    namespace: dict = {}
    exec(compile(code, "docs/python.md", "exec"), namespace)
    assert isinstance(namespace["result"], ovdiff.SegmentationResult)


def test_images_are_read_as_the_cli_reads_them():
    from ovdiff_cli.api import as_rgb

    rgb = ovdiff.procedural_scene(2)
    assert np.array_equal(as_rgb(rgb), rgb)
    gray = rgb[..., 0]
    assert np.array_equal(as_rgb(gray), np.repeat(gray[..., None], 3, 2))
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], 2)
    assert np.array_equal(as_rgb(rgba), rgb) and np.array_equal(as_rgb(Image.fromarray(rgba)), rgb)
    for bad in (rgb.astype(np.float32), rgb[None], "no/such/file.png", 3):
        with pytest.raises(OvdiffError):
            as_rgb(bad)
