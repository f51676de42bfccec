"""Command-line outputs other tools read: `segment --json` per image, COCO records with the
real file name and score, and an --out folder that is never read back as input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import PROC
from PIL import Image
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.procedural import LABELLED, write_voc

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cliinterop")
    write_voc(root / "data", 2, seed=9)
    return root


def invoke(args: list[str], root: Path):
    return runner.invoke(app, [*args, "--cache", str(root / "cache"), *PROC])


def test_segment_json_lists_each_image_mask_classes_areas_and_scores(world, tmp_path):
    images = world / "data/VOC2012/JPEGImages"
    res = invoke(
        ["segment", str(images), "--classes", ",".join(LABELLED), "--out", str(tmp_path / "m"), "--json"], world
    )
    assert res.exit_code == 0, res.output
    per_image = json.loads(res.stdout)["per_image"]
    assert sorted(Path(r["input"]).name for r in per_image) == sorted(p.name for p in images.iterdir())
    scores = []
    for r in per_image:
        with Image.open(r["mask"]) as m:
            labels = np.asarray(m)
        counts = np.bincount(labels.ravel())
        present = np.flatnonzero(counts).tolist()
        assert r["classes"] == [LABELLED[k - 1] for k in present if k > 0]
        assert [(s["index"], s["area"]) for s in r["segments"]] == [(k, int(counts[k])) for k in present]
        assert all(-1 <= s["score"] <= 1 for s in r["segments"])
        scores += [s["score"] for s in r["segments"]]
    assert len(set(scores)) > 2  # measured per segment, not a placeholder


def test_coco_records_carry_the_file_name_and_the_segment_score(world, tmp_path):
    images = world / "data/VOC2012/JPEGImages"
    out = tmp_path / "coco"
    res = invoke(
        ["segment", str(images), "--classes", ",".join(LABELLED), "--out", str(out), "--format", "coco-rle", "--json"],
        world,
    )
    assert res.exit_code == 0, res.output
    per_image = {Path(r["input"]).name: r for r in json.loads(res.stdout)["per_image"]}
    meta = json.loads((out / "coco_images.json").read_text())
    records = json.loads((out / "coco_results.json").read_text())
    assert sorted(i["file_name"] for i in meta["images"]) == sorted(p.name for p in images.iterdir())
    for img in meta["images"]:
        expect = {s["index"]: s for s in per_image[img["file_name"]]["segments"] if s["index"] > 0}
        mine = [r for r in records if r["image_id"] == img["id"]]
        assert {r["category_id"]: (r["score"], r["area"]) for r in mine} == {
            k: (s["score"], s["area"]) for k, s in expect.items()
        }
    assert {r["score"] for r in records} != {1.0}


def test_out_beside_the_inputs_is_refused_and_no_lock_file_is_left(world, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in (world / "data/VOC2012/JPEGImages").iterdir():
        (photos / p.name).write_bytes(p.read_bytes())
    before = sorted(p.name for p in photos.iterdir())
    res = invoke(["segment", str(photos), "--classes", "kite,sky", "--out", str(photos)], world)
    assert res.exit_code == 2 and "holds input images" in res.output and "e.g. " + str(photos / "masks") in res.output
    assert sorted(p.name for p in photos.iterdir()) == before  # no mask, no legend, no lock file
    out = tmp_path / "masks"
    assert invoke(["segment", str(photos), "--classes", "kite,sky", "--out", str(out)], world).exit_code == 0
    refused = invoke(["segment", str(photos), "--classes", "boat", "--out", str(out)], world)  # another legend
    assert refused.exit_code == 2 and "holds masks of other classes" in refused.output
    assert not list(out.glob(".ovdiff-segment.lock*"))


def test_a_url_input_gets_the_download_first_line_not_not_found(world, tmp_path):
    res = invoke(["segment", "https://example.com/cat.jpg", "--classes", "kite", "--out", str(tmp_path / "o")], world)
    assert res.exit_code == 2 and "is a URL" in res.output and "download it first" in res.output
    assert "not found" not in res.output


def test_the_last_holder_of_a_lock_removes_its_file(tmp_path):
    from ovdiff_cli.errors import OvdiffError
    from ovdiff_cli.io.outdir import lock

    first, second = lock(tmp_path, (0, 2)), lock(tmp_path, (1, 2))
    first()
    assert (tmp_path / ".ovdiff-segment.lock").exists()  # the other shard still holds the folder
    with pytest.raises(OvdiffError, match="another 'ovdiff segment'"):
        lock(tmp_path)
    second()
    assert not list(tmp_path.iterdir())
    lock(tmp_path)()
    assert not list(tmp_path.iterdir())


def test_metrics_are_fractions_and_the_report_shows_real_seconds_and_a_random_weight_warning(tmp_path):
    from ovdiff_cli.eval.datasets import load_dataset
    from ovdiff_cli.eval.evaluate import evaluate, protocol
    from ovdiff_cli.eval.report import write_report

    write_voc(tmp_path / "data", 2, seed=3)
    ds = load_dataset("voc", tmp_path / "data/VOC2012")
    res = evaluate(ds, lambda image, info: np.zeros(image.shape[:2], np.int64))
    saved = protocol(ds, [0], "tiny", None, predictions=str(tmp_path / "masks"))  # masks segmented elsewhere
    metrics_path, html_path = write_report(res, tmp_path / "r1", ds, run_protocol=saved, seconds_per_image=1.25)
    metrics = json.loads(metrics_path.read_text())
    ious = [metrics["miou"], metrics["paper"]["miou"], metrics["paper"]["std"], *metrics["per_class_iou"].values()]
    assert all(v is None or 0 <= v <= 1 for v in ious) and metrics["paper"]["miou"] == 0.663
    assert metrics["seconds_per_image"] == 1.25
    page = html_path.read_text()
    assert "1.250 s/image" in page and "66.3 ± 0.2" in page
    assert "random weights: these scores check the pipeline, they are not comparable to the paper's" in page
    metrics_path, html_path = write_report(
        res, tmp_path / "r2", ds, run_protocol=protocol(ds, None, None, None, predictions="masks")
    )
    assert json.loads(metrics_path.read_text())["seconds_per_image"] is None  # reading masks is no segmenting time
    assert "s/image" not in html_path.read_text() and "not comparable" not in html_path.read_text()
    real = protocol(ds, [0], "sd15", None)
    assert "not comparable" not in write_report(res, tmp_path / "r3", ds, run_protocol=real)[1].read_text()


def test_the_demo_report_times_the_segmenting(world, tmp_path):
    res = runner.invoke(
        app,
        ["demo", "--out", str(tmp_path / "demo"), "--images", "2", "--device", "cpu", "--cache", str(world / "cache")],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "demo/report/metrics.json").read_text())
    assert metrics["seconds_per_image"] > 0.01  # the segment run's time, not the milliseconds of reading masks back
    assert f"{metrics['seconds_per_image']:.3f} s/image" in (tmp_path / "demo/report/report.html").read_text()
    assert "the procedural toy world" in (tmp_path / "demo/report/report.html").read_text()
    figure = np.asarray(Image.open(tmp_path / "demo/figure.png"))  # docs/demo.png: image | mask | truth
    with Image.open(sorted((tmp_path / "demo/masks").glob("*.png"))[0]) as m:  # the first scene's mask
        first = np.asarray(m)
    h, w = first.shape
    from ovdiff_cli.io.palette import colorize

    top = 16 + 12  # the columns' titles: a 16 px font on a strip 12 px taller
    assert figure.shape[1:] == (3 * w + 24, 3) and figure.shape[0] > top + 2 * h + 12  # two rows, then the colour key
    assert np.array_equal(figure[top : top + h, w + 12 : 2 * w + 12], colorize(first))


def test_help_shows_the_ray_extra_whole():
    res = CliRunner().invoke(app, ["segment", "--help"], env={"COLUMNS": "400"})
    assert res.exit_code == 0 and "pip install 'ovdiff[ray]'" in res.output


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly_with_status_0():
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for args in (
        ["--help"],
        ["doctor", "--preset", "procedural", "--device", "cpu"],
        ["doctor", "--preset", "procedural", "--json"],
    ):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ovdiff_cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        proc.stdout.close()  # as `| head -0` would, before a byte is written
        err = proc.stderr.read().decode()
        assert proc.wait() == 0 and err == "", (args, err)


def test_doctor_lines_are_not_padded_when_piped():
    res = runner.invoke(app, ["doctor", "--preset", "procedural", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("ovdiff ") and all(line == line.rstrip() for line in lines), lines


def test_offline_errors_are_whole_and_point_at_models_download(monkeypatch, tmp_path):
    from ovdiff_cli.cli.common import phrase
    from ovdiff_cli.errors import ModelLoadError
    from ovdiff_cli.models.presets import ModelSpecs
    from ovdiff_cli.models.store import ModelStore

    cause = OSError(
        "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in "
        "the cached files.\nCheck your internet connection or see how to run the library in offline mode "
        "at 'https://huggingface.co/docs/transformers/installation#offline-mode'."
    )
    line = phrase(ModelLoadError("CLIP", "clip", "ViT-B-16:openai", cause, "timm/vit_base_patch16_clip_224.openai"))
    assert "installation#offline-mode'." in line and "\n" not in line  # the whole cause, past 200 characters
    assert "ovdiff models download --clip-model ViT-B-16:openai" in line and "--clip-model DIR" in line
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError) as info:
        ModelStore(ModelSpecs.of("sd15"), device="cpu", dtype="fp32").sd()
    assert "ovdiff models download --sd-model stable-diffusion-v1-5/stable-diffusion-v1-5" in phrase(info.value)


def test_the_manual_lists_the_dependencies_of_pyproject_and_each_is_needed():
    import ast
    import re

    import tomllib

    root = Path(__file__).resolve().parents[1]
    deps = [
        re.split(r"[<>=\[;]", d)[0].strip()
        for d in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    text = " ".join((root / "docs/getting-started.md").read_text().split())
    listed = re.search(r"Dependencies \(as in `pyproject.toml`\): (.*?)\.", text).group(1)
    assert [d.strip() for d in listed.split(",")] == deps
    imported = set()
    for path in (root / "ovdiff_cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    modules = {"open_clip_torch": "open_clip", "pillow": "PIL", "opencv-python-headless": "cv2"}
    assert {d for d in deps if modules.get(d, d) not in imported} == set()  # torchvision went: nothing imports it
