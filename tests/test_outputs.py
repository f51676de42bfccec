"""Outputs for scripts and other tools: --json, unwrapped tables in pipes, -q, --version, mask formats
(16-bit PNG beyond 254 classes, npz with scores, COCO compressed RLE), eval's protocol record."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import PROC
from PIL import Image
from typer.testing import CliRunner

import ovdiff_cli
from ovdiff_cli.cli.app import app
from ovdiff_cli.io.masks import encode_counts, rle_encode
from ovdiff_cli.procedural import LABELLED, write_voc

runner = CliRunner()
LONG = "chocolate glazed donut with rainbow sprinkles on a plate"


def decode_counts(s: str) -> list[int]:
    """Inverse of `encode_counts`."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            ch = ord(s[p]) - 48
            x |= (ch & 0x1F) << (5 * k)
            more = bool(ch & 0x20)
            p += 1
            k += 1
            if not more and ch & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict) -> np.ndarray:
    """COCO compressed RLE → (H,W) uint8 mask in {0,1}."""
    h, w = rle["size"]
    counts = decode_counts(rle["counts"]) if isinstance(rle["counts"], str) else list(rle["counts"])
    if sum(counts) != h * w:
        raise ValueError(f"RLE counts cover {sum(counts)} pixels, not {h}x{w}")
    values = np.zeros(len(counts), np.uint8)
    values[1::2] = 1
    return np.repeat(values, counts).reshape((h, w), order="F")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three scenes in VOC layout, and a cache with the world's classes plus two long names."""
    root = tmp_path_factory.mktemp("outworld")
    write_voc(root / "data", 3, seed=5)
    res = runner.invoke(app, ["protos", "add", *LABELLED, "potted plant", LONG, "--cache", str(root / "cache"), *PROC])
    assert res.exit_code == 0, res.output
    return root


def invoke(args: list[str], root) -> object:
    return runner.invoke(app, [*args, "--cache", str(root / "cache"), *PROC])


def test_piped_protos_list_keeps_each_row_on_one_line(world):
    res = runner.invoke(app, ["protos", "list", "--cache", str(world / "cache")])
    assert res.exit_code == 0, res.output
    rows = [line for line in res.stdout.splitlines() if "potted plant" in line or LONG in line]
    assert len(rows) == 2 and all("procedural" in r for r in rows)
    assert all(len(r.split()) >= 8 for r in rows)  # class, seed, extractor, prototypes, kind, size, id on that line
    assert "…" not in res.stdout


def test_json_outputs_parse_and_carry_the_tables_fields(world, tmp_path):
    listed = json.loads(runner.invoke(app, ["protos", "list", "--json", "--cache", str(world / "cache")]).stdout)
    by_name = {c["class"]: c for c in listed}
    assert set(by_name) == {*LABELLED, "potted plant", LONG}
    plant = by_name["potted plant"]
    for key in (
        "id",
        "seed",
        "extractor",
        "prototypes",
        "kind",
        "size_bytes",
        "mask_proposer",
        "k_parts",
        "n_images",
        "preset",
        "created_at",
    ):
        assert key in plant
    assert plant["extractor"] == "procedural" and plant["prototypes"]["fg"] > 0 and len(plant["id"]) > 12

    info = json.loads(runner.invoke(app, ["cache", "info", "--json", "--cache", str(world / "cache")]).stdout)
    assert info["classes"] == len(listed) and info["path"] == str(world / "cache") and info["used_bytes"] > 0
    verify = runner.invoke(app, ["cache", "verify", "--json", "--cache", str(world / "cache")])
    assert verify.exit_code == 0 and json.loads(verify.stdout)["sound"] is True
    assert json.loads(verify.stdout)["problems"] == []

    images = world / "data/VOC2012/JPEGImages"
    seg = invoke(
        ["segment", str(images), "--classes", ",".join(LABELLED), "--out", str(tmp_path / "m"), "--json"], world
    )
    assert seg.exit_code == 0, seg.output
    summary = json.loads(seg.stdout)  # the whole of stdout is one JSON document
    assert summary["images"] == summary["written"] == 3 and summary["failed"] == 0
    assert set(summary["stage_seconds_per_image"]) == {"features", "filter", "matching", "upsample_io"}
    assert summary["classes"] == list(LABELLED) and summary["format"] == "png"

    ev = invoke(["eval", "voc", "--root", str(world / "data"), "--json"], world)
    assert ev.exit_code == 0, ev.output
    metrics = json.loads(ev.stdout)
    assert (
        metrics["n_images"] == 3
        and 0 <= metrics["miou"] <= 1
        and set(metrics["per_class_iou"]) == {"background", *LABELLED}
    )
    assert metrics["protocol"]["classes"] == ["background", *LABELLED] and metrics["paper"] is None  # custom classes


def test_quiet_keeps_the_final_result_line(world):
    res = invoke(["eval", "voc", "--root", str(world / "data"), "-q"], world)
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("voc mIoU ") and "3 images" in lines[0]
    assert res.stderr == ""


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"ovdiff {ovdiff_cli.__version__}"


# --------------------------------------------------------------------------- mask formats


def test_rle_strings_equal_pycocotools_golden_values():
    # golden strings from pycocotools.mask.encode: column-major runs starting with zeros
    m = np.array([[0, 1], [1, 1]], bool)
    assert rle_encode(m) == {"size": [2, 2], "counts": "13"}  # runs [1, 3]
    box = np.zeros((40, 60), bool)
    box[3:30, 10:50], box[5, 55] = True, True
    assert rle_encode(box)["counts"] == "c<k0=" + "0" * 77 + "Z6VO[O"  # differences, negative ones included
    assert decode_counts(encode_counts([0, 5, 1000, 3, 70000])) == [0, 5, 1000, 3, 70000]
    for mask in (m, box, np.ones((3, 4), bool), np.zeros((2, 2), bool)):
        assert np.array_equal(rle_decode(rle_encode(mask)), mask)


def test_coco_rle_file_decodes_back_to_the_png_masks(world, tmp_path):
    mask_util = pytest.importorskip("pycocotools.mask")  # the independent decoder
    images = world / "data/VOC2012/JPEGImages"
    png, coco = tmp_path / "png", tmp_path / "coco"
    for out, fmt in ((png, "png"), (coco, "coco-rle")):
        res = invoke(
            ["segment", str(images), "--classes", ",".join(LABELLED), "--out", str(out), "--format", fmt], world
        )
        assert res.exit_code == 0, res.output
    records = json.loads((coco / "coco_results.json").read_text())
    meta = json.loads((coco / "coco_images.json").read_text())
    assert [c["name"] for c in meta["categories"]] == list(LABELLED)
    assert json.loads((coco / "classes.json").read_text())["mask_format"] == "coco-rle"
    for img in meta["images"]:
        with Image.open(png / f"{img['file_name'].rsplit('.', 1)[0]}.png") as m:
            expected = np.asarray(m)
        rebuilt = np.zeros((img["height"], img["width"]), np.uint8)
        mine = np.zeros_like(rebuilt)
        for r in (r for r in records if r["image_id"] == img["id"]):
            rle = dict(r["segmentation"], counts=r["segmentation"]["counts"].encode())
            rebuilt[mask_util.decode(rle).astype(bool)] = r["category_id"]
            mine[rle_decode(r["segmentation"]).astype(bool)] = r["category_id"]
        assert np.array_equal(rebuilt, expected) and np.array_equal(mine, expected)


def test_npz_holds_the_labels_and_asked_for_scores(world, tmp_path):
    images = world / "data/VOC2012/JPEGImages"
    png, npz = tmp_path / "png", tmp_path / "npz"
    classes = ["--classes", ",".join(LABELLED)]
    assert invoke(["segment", str(images), *classes, "--out", str(png)], world).exit_code == 0
    res = invoke(["segment", str(images), *classes, "--out", str(npz), "--format", "npz", "--save-scores"], world)
    assert res.exit_code == 0, res.output
    for f in sorted(images.iterdir()):
        with np.load(npz / f"{f.stem}.npz") as z, Image.open(png / f"{f.stem}.png") as m:
            assert np.array_equal(z["labels"], np.asarray(m))
            scores = z["scores"]
        assert scores.dtype == np.float16 and scores.shape[0] == len(LABELLED) + 1
        assert scores.max() <= 1.0 and np.isin(np.unique(scores[scores < -1]), [-2]).all()
    bad = invoke(["segment", str(images), *classes, "--out", str(tmp_path / "x"), "--save-scores"], world)
    assert bad.exit_code == 2 and "--save-scores needs the npz format" in bad.output


def test_300_classes_write_16bit_masks_that_eval_pred_scores(tmp_path):
    """More than 254 classes: 16-bit PNGs, recorded in classes.json, scored by eval --pred.

    The procedural preset builds the 300 classes in seconds; the tiny one would take minutes."""
    write_voc(tmp_path / "data", 3, seed=9)
    names = [*LABELLED, *(f"filler {i}" for i in range(300 - len(LABELLED)))]
    (tmp_path / "classes300.txt").write_text("\n".join(names) + "\n")
    cache = ["--cache", str(tmp_path / "cache"), *PROC]
    out = tmp_path / "masks"
    res = runner.invoke(
        app,
        [
            "segment",
            str(tmp_path / "data/VOC2012/JPEGImages"),
            "--classes-file",
            str(tmp_path / "classes300.txt"),
            "--out",
            str(out),
            "--n-images",
            "1",
            "-q",
            *cache,
        ],
    )
    assert res.exit_code == 0, res.output
    legend = json.loads((out / "classes.json").read_text())
    assert legend["mask_format"] == "png-uint16" and "16-bit" in legend["format"] and len(legend["labels"]) == 301
    masks = {}
    for f in sorted(out.glob("*.png")):
        with Image.open(f) as m:
            assert m.mode in ("I;16", "I")
            masks[f.stem] = np.asarray(m)
    assert len(masks) == 3
    res = runner.invoke(
        app,
        [
            "eval",
            "voc",
            "--root",
            str(tmp_path / "data"),
            "--classes-file",
            str(tmp_path / "classes300.txt"),
            "--pred",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert len(metrics["per_class_iou"]) == 301
    # the same IoUs from the masks and the truth, counted here
    from ovdiff_cli.eval.metrics import ConfusionMatrix

    cm = ConfusionMatrix(301)
    for i, pred in masks.items():
        with Image.open(tmp_path / f"data/VOC2012/SegmentationClass/{i}.png") as g:
            cm.update(pred.astype(np.int64), np.asarray(g))
    assert metrics["miou"] == pytest.approx(cm.miou())


def test_16bit_masks_keep_label_255_and_beyond(tmp_path):
    """In a 16-bit mask, 255 is a class like any other (only 8-bit masks use it for 'no class')."""
    from ovdiff_cli.eval.datasets import load_dataset
    from ovdiff_cli.eval.evaluate import evaluate, predictions_from_dir
    from ovdiff_cli.io.masks import save_png_mask

    ids = write_voc(tmp_path / "data", 1, seed=2)
    names = [f"c{i}" for i in range(300)]
    ds = load_dataset("voc", tmp_path / "data", custom_classes=names)
    gt = ds[0].label
    pred = np.where(gt == 255, 0, gt).astype(np.int64)
    pred[:, :3], pred[:, 3:6] = 255, 300
    save_png_mask(pred, tmp_path / "pred" / f"{ids[0]}.png", 300)
    got = predictions_from_dir(tmp_path / "pred", ds)(None, ds.infos[0])
    assert np.array_equal(got, pred)
    res = evaluate(ds, predictions_from_dir(tmp_path / "pred", ds))
    assert res.per_class_iou[255] == 0.0 and res.per_class_iou[300] == 0.0  # predicted, never true: counted


# --------------------------------------------------------------------------- eval report


def test_report_records_protocol_paper_number_and_confusion_picture(tmp_path):
    from ovdiff_cli.config import SegmentConfig
    from ovdiff_cli.eval.datasets import load_dataset
    from ovdiff_cli.eval.evaluate import evaluate, protocol
    from ovdiff_cli.eval.report import confusion_picture, write_report

    write_voc(tmp_path / "data", 2, seed=3)
    ds = load_dataset("voc", tmp_path / "data/VOC2012")  # the benchmark's own 21 classes: the paper has a number
    res = evaluate(ds, lambda image, info: np.zeros(image.shape[:2], np.int64))
    record = protocol(ds, [0, 1], "sd15", {"sd": "x"}, segment=SegmentConfig())
    json_path, html_path = write_report(res, tmp_path / "report", ds, run_protocol=record)
    metrics = json.loads(json_path.read_text())
    assert (
        metrics["paper"]["miou"] == 0.663
        and metrics["paper"]["std"] == 0.002
        and metrics["paper"]["table"] == "Table 1"
    )
    p = metrics["protocol"]
    assert p["dataset"] == "voc" and p["split"].endswith("val.txt") and p["n_images"] == 2 and p["seeds"] == [0, 1]
    assert (
        p["segment"]["windows"] == [448, 336]
        and p["preset"] == "sd15"
        and p["ovdiff_version"] == ovdiff_cli.__version__
    )
    assert p["classes"][16] == "potted plant"
    page = html_path.read_text()
    assert "66.3 ± 0.2" in page and "Confusion matrix" in page and "Protocol" in page and "448, 336" in page
    pic = confusion_picture(res.confusion, res.classes)
    assert pic.ndim == 3 and pic.shape[2] == 3 and pic.shape[0] > 21 * 2


def test_quiet_silences_the_libraries_warnings():
    """-q (`quiet_libraries`) silences transformers' and diffusers' loggers and Python warnings."""
    import os
    import subprocess
    import sys

    code = (
        "import warnings\nfrom transformers.utils import logging as tl\nimport diffusers\n"
        "from ovdiff_cli.libs import quiet_libraries\n"
        "def speak(when):\n"
        "    tl.get_logger('transformers.x').warning(f'{when}-transformers')\n"
        "    diffusers.utils.logging.get_logger('diffusers.y').warning(f'{when}-diffusers')\n"
        "    warnings.warn(f'{when}-python')\n"
        "speak('loud'); quiet_libraries(); speak('quiet')\n"
    )
    loud = ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "PYTHONWARNINGS")  # an earlier -q test set them here
    env = {k: v for k, v in os.environ.items() if k not in loud}
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stderr
    for lib in ("transformers", "diffusers", "python"):
        assert f"loud-{lib}" in err and f"quiet-{lib}" not in err, err
