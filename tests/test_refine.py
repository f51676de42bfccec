"""`segment --refine pamr|sam2` (beyond the paper): PAMR and region voting on score maps, SAM 2 as region source."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import PROC
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.config import SegmentConfig
from ovdiff_cli.eval.metrics import ConfusionMatrix
from ovdiff_cli.method.beyond.refine import AutomaticRegions, RegionRefiner, pamr, regions_on, vote_regions
from ovdiff_cli.procedural import LABELLED, render_scene, write_voc

runner = CliRunner()


# --------------------------------------------------------------------------- PAMR


def edge_case(h: int = 40, w: int = 64, edge: int = 32, wrong: int = 26) -> tuple[torch.Tensor, torch.Tensor]:
    """A dark | bright image with its edge at column `edge`, and a two-label map whose edge is at `wrong`."""
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(3, h, w)
    image[:, :, edge:] = 1.0
    image = image + 0.02 * torch.randn(3, h, w, generator=g)
    scores = torch.zeros(2, h, w)
    scores[0, :, :wrong], scores[1, :, wrong:] = 1, 1
    return image, scores


def test_pamr_moves_a_misplaced_label_edge_onto_the_image_edge():
    image, scores = edge_case()
    assert (scores.argmax(0)[:, 26:32] == 1).all()  # 6 columns wrong before
    refined = pamr(image, scores)
    labels = refined.argmax(0)
    assert (labels[:, :32] == 0).all() and (labels[:, 32:] == 1).all()
    assert refined.min() >= -1e-6 and refined.max() <= 1 + 1e-5  # convex combinations: the range is kept


def test_pamr_on_a_flat_image_only_smooths_and_keeps_constant_maps():
    image = torch.full((3, 24, 24), 0.5)
    flat = torch.full((3, 24, 24), 0.3)
    assert torch.allclose(pamr(image, flat), flat, atol=1e-6)
    _, scores = edge_case(24, 24, 12, 12)
    assert (pamr(image, scores, iters=1) != scores).any()  # no edge to stop at: scores mix across the label edge


# --------------------------------------------------------------------------- region voting


def test_vote_gives_each_region_its_mean_and_leaves_the_rest():
    scores = torch.zeros(2, 4, 6)
    scores[0, :, :3] = 1.0  # label 0 on the left half
    scores[1, :, 3:] = 0.8
    scores[1, 0, 0] = 2.0  # one noisy pixel on the left
    big = np.zeros((4, 6), bool)
    big[:, :4] = True  # spans the left half and one column of the right
    small = np.zeros((4, 6), bool)
    small[:, 3] = True  # inside `big`: voted after it, keeps its own vote
    out = vote_regions(scores, [small, big])
    labels = out.argmax(0)
    assert (labels[:, :3] == 0).all() and (labels[:, 3] == 1).all()
    assert torch.equal(out[:, :, 4:], scores[:, :, 4:])  # outside every region: unchanged
    assert torch.allclose(out[:, 0, 0], scores[:, big].mean(1))


def test_regions_on_resizes_to_the_scores_and_drops_empty_ones():
    m = np.zeros((20, 30), bool)
    m[:10, :15] = True
    got = regions_on([m, np.zeros((20, 30), bool)], (10, 15))
    assert len(got) == 1 and got[0].shape == (10, 15) and got[0][:5, :7].all() and not got[0][5:].any()


def truth_regions(label: np.ndarray) -> list[np.ndarray]:
    """A hand-made region set: the connected parts of each labelled value of the truth (void band excluded)."""
    import cv2

    out = []
    for v in np.unique(label):
        if v == 255:
            continue
        n, comp = cv2.connectedComponents((label == v).astype(np.uint8))
        out += [comp == i for i in range(1, n)]
    return out


def test_region_vote_fixes_a_noisy_label_map_of_the_procedural_world():
    rng = np.random.default_rng(3)
    before, after = ConfusionMatrix(len(LABELLED) + 1), ConfusionMatrix(len(LABELLED) + 1)
    for _ in range(3):
        image, label = render_scene(rng)
        valid = np.where(label == 255, 0, label)
        scores = torch.from_numpy(np.eye(len(LABELLED) + 1, dtype=np.float32)[valid].transpose(2, 0, 1).copy())
        scores += torch.from_numpy(rng.normal(0, 0.6, scores.shape).astype(np.float32))  # ~40% of pixels wrong
        refiner = RegionRefiner(lambda img: truth_regions(label))  # noqa: B023
        before.update(scores.argmax(0).numpy(), label)
        after.update(refiner(image, scores).argmax(0).numpy(), label)
    assert before.miou() < 0.7
    assert after.miou() > 0.99


def test_segmenter_with_a_region_refiner_scores_higher_on_the_world(procedural_stages, tmp_path):
    from ovdiff_cli.engines.vocab import ensure_classes
    from ovdiff_cli.models.presets import get_preset
    from ovdiff_cli.store.cache import Cache

    preset = get_preset("procedural")
    classes = ensure_classes(Cache(tmp_path / "c"), procedural_stages, list(LABELLED), 0, preset.sample, preset.protos)
    cfg = preset.segment
    plain = procedural_stages.segmenter(classes, cfg, "procedural")
    rng = np.random.default_rng(5)
    scenes = [render_scene(rng) for _ in range(4)]
    voted = procedural_stages.segmenter(classes, cfg, "procedural")
    voted.refiner = RegionRefiner(lambda img: truth_regions(next(lab for im, lab in scenes if im is img)))
    a, b = ConfusionMatrix(len(LABELLED) + 1), ConfusionMatrix(len(LABELLED) + 1)
    for image, label in scenes:
        a.update(plain.predict(image).labels, label)
        seg = voted.predict(image, explain=True)
        b.update(seg.labels, label)
        assert "refine" in seg.timings and seg.winner.shape == label.shape
    assert a.miou() < 0.99 and b.miou() > 0.999, (a.miou(), b.miou())  # the world's own regions: every error fixed


# --------------------------------------------------------------------------- SAM 2 (tiny random weights)


def test_tiny_sam2_gives_regions_at_the_image_size(tiny_sam2_dir):
    from ovdiff_cli.models.sam2 import load_sam2

    image, _ = render_scene(np.random.default_rng(0), size=(96, 120))
    pipe = load_sam2(str(tiny_sam2_dir), torch.device("cpu"), torch.float32)
    # random weights: SAM's quality filters would drop every mask, so they are off here
    regions = AutomaticRegions(pipe, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)(image)
    assert regions and all(r.shape == (96, 120) and r.dtype == bool and r.any() for r in regions)
    scores = torch.rand(3, 48, 60)
    voted = RegionRefiner(lambda img: regions)(image, scores)
    assert not torch.equal(voted, scores)


def test_a_missing_sam2_model_is_one_clear_line(tmp_path):
    from ovdiff_cli.errors import ModelLoadError
    from ovdiff_cli.models.sam2 import load_sam2

    with pytest.raises(ModelLoadError, match="cannot load SAM 2 weights"):
        load_sam2(str(tmp_path / "nowhere"), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_voc(root / "data", 2, seed=4)
    res = runner.invoke(
        app,
        [
            "protos",
            "add",
            "--classes-file",
            str(root / "data/classes.txt"),
            "--cache",
            str(root / "cache"),
            "-q",
            *PROC,
        ],
    )
    assert res.exit_code == 0, res.output
    return root


@pytest.mark.parametrize("refine", ["pamr", "sam2"])
def test_segment_refine_from_the_cli_with_explain(world, tmp_path, tiny_sam2_dir, refine):
    images = world / "data/VOC2012/JPEGImages"
    args = [
        "segment",
        str(images),
        "--classes-file",
        str(world / "data/classes.txt"),
        "--cache",
        str(world / "cache"),
        "--format",
        "npz",
        "--json",
        *PROC,
    ]
    plain = runner.invoke(app, [*args, "--out", str(tmp_path / "plain")])
    sam2 = ["--sam2-model", str(tiny_sam2_dir)] if refine == "sam2" else []  # a model no stage uses is refused
    res = runner.invoke(
        app,
        [*args, "--out", str(tmp_path / refine), "--explain", "--refine", refine, *sam2],
    )
    assert plain.exit_code == 0 and res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["written"] == 2 and report["stage_seconds_per_image"]["refine"] > 0
    assert "refine" not in json.loads(plain.stdout)["stage_seconds_per_image"]
    changed = 0
    for p in sorted((tmp_path / "plain").glob("*.npz")):
        a, b = np.load(p)["labels"], np.load(tmp_path / refine / p.name)["labels"]
        assert a.shape == b.shape
        changed += int((a != b).sum())
        assert (tmp_path / refine / "explain" / f"{p.stem}.json").is_file()
    if refine == "pamr":  # (the tiny SAM 2's random masks do not pass SAM's quality filters: no region, no change)
        assert changed > 0  # the refiner ran on the written labels


def test_an_unknown_refiner_is_refused_before_any_work(world, tmp_path):
    res = runner.invoke(
        app,
        [
            "segment",
            str(world / "data/VOC2012/JPEGImages"),
            "--classes",
            "sky",
            "--cache",
            str(world / "cache"),
            "--out",
            str(tmp_path / "o"),
            "--refine",
            "crf",
            *PROC,
        ],
    )
    assert res.exit_code == 2 and "refine 'crf' is unknown" in res.output
    assert not (tmp_path / "o" / "classes.json").exists()


def test_refine_through_the_python_api(tmp_path):
    import ovdiff

    def run(**segment):
        pipe = ovdiff.Pipeline(preset="procedural", cache=tmp_path / "c", device="cpu", dtype="fp32", segment=segment)
        return pipe.segment(ovdiff.procedural_scene(1), pipe.vocabulary(LABELLED))

    plain, refined = run(), run(refine="pamr")
    assert "refine" in refined.timings and "refine" not in plain.timings
    assert (plain.labels != refined.labels).any()
    assert SegmentConfig().refine == "none"  # the paper's path is the default


def test_sam2_refine_through_the_python_api(tmp_path, tiny_sam2_dir):
    import ovdiff

    pipe = ovdiff.Pipeline(
        preset="procedural",
        cache=tmp_path / "c",
        device="cpu",
        dtype="fp32",
        models={"sam2": str(tiny_sam2_dir)},
        segment={"refine": "sam2"},
    )
    result = pipe.segment(ovdiff.procedural_scene(1), pipe.vocabulary(LABELLED))
    assert result.timings["refine"] > 0 and result.labels.shape == (128, 192)
