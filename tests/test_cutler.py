"""Γ as the authors run it: the CutLER port (models/cutler.py, method/stage2_prototypes/cutler.py).

A tiny random-weight detector in the released checkpoint's own key layout is written as detectron2
writes a .pth ({"model": state dict, ...}), loaded through the same code as the real file, and
builds classes; each inference rule is pinned on hand-made inputs, with the value CutLER's config
(or detectron2's default under it) gives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.engines.catalogue import find_classes
from ovdiff_cli.errors import MissingCheckpoint, OvdiffError
from ovdiff_cli.method.stage2_prototypes import cutler as C
from ovdiff_cli.models.cutler import FULL, TINY, CutlerNet, load_cutler, random_cutler, read_checkpoint, save_checkpoint
from ovdiff_cli.store.cache import Cache

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    return save_checkpoint(random_cutler("tiny", 0), tmp_path_factory.mktemp("cutler") / "tiny_cutler.pth")


def _picture(side: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side]
    img = np.stack([xx * 255 // side, yy * 255 // side, np.full_like(xx, 90)], -1).astype(np.uint8)
    img[(yy - side // 2) ** 2 + (xx - side // 3) ** 2 < (side // 5) ** 2] = (230, 40, 40)
    return img


# --------------------------------------------------------------------------- the checkpoint


def test_the_network_has_the_released_checkpoints_keys_and_shapes():
    full = CutlerNet(FULL).state_dict()
    tiny = random_cutler("tiny", 0).state_dict()
    assert set(tiny) == set(full) and len(full) == 347  # stem, 16 blocks + 4 shortcuts, FPN, RPN, 3 stages, mask head
    shapes = {  # Cascade Mask R-CNN R50-FPN, one class, class-agnostic boxes (detectron2's names)
        "backbone.bottom_up.stem.conv1.weight": (64, 3, 7, 7),
        "backbone.bottom_up.res2.0.shortcut.norm.running_var": (256,),
        "backbone.bottom_up.res3.0.conv2.weight": (128, 128, 3, 3),  # the stride sits on the 3×3 (STRIDE_IN_1X1 False)
        "backbone.bottom_up.res5.2.conv3.weight": (2048, 512, 1, 1),
        "backbone.fpn_lateral5.weight": (256, 2048, 1, 1),
        "backbone.fpn_output2.norm.weight": (256,),  # FPN with norm: no conv bias
        "proposal_generator.rpn_head.objectness_logits.weight": (3, 256, 1, 1),
        "proposal_generator.rpn_head.anchor_deltas.weight": (12, 256, 1, 1),
        "roi_heads.box_head.2.fc1.weight": (1024, 256 * 7 * 7),
        "roi_heads.box_predictor.0.cls_score.weight": (2, 1024),
        "roi_heads.box_predictor.1.bbox_pred.weight": (4, 1024),
        "roi_heads.mask_head.deconv.weight": (256, 256, 2, 2),
        "roi_heads.mask_head.predictor.weight": (1, 256, 1, 1),
    }
    assert {k: tuple(full[k].shape) for k in shapes} == shapes
    assert "backbone.fpn_output2.bias" not in full and "proposal_generator.rpn_head.conv.bias" in full


def test_a_detectron2_pth_loads_as_written_and_detects_the_same(tiny_pth):
    data = torch.load(tiny_pth, weights_only=True)
    assert set(data) == {"model", "iteration"} and any(k.endswith("num_batches_tracked") for k in data["model"])
    net = load_cutler(str(tiny_pth), torch.device("cpu"))
    assert net.widths == TINY
    ref = C.detect(random_cutler("tiny", 0), _picture(), (100, 166))
    got = C.detect(net, _picture(), (100, 166))
    assert len(got.scores) > 0 and torch.equal(got.masks, ref.masks) and torch.allclose(got.scores, ref.scores)


def test_a_file_of_another_layout_or_none_is_one_line(tiny_pth, tmp_path):
    state = read_checkpoint(tiny_pth)
    del state["roi_heads.box_predictor.2.bbox_pred.bias"]
    torch.save({"model": state}, tmp_path / "cut.pth")
    with pytest.raises(
        OvdiffError, match="not CutLER's Cascade Mask R-CNN checkpoint: no key roi_heads.box_predictor.2"
    ):
        load_cutler(str(tmp_path / "cut.pth"), torch.device("cpu"))
    state = read_checkpoint(tiny_pth)
    state["roi_heads.box_predictor.3.cls_score.weight"] = torch.zeros(2, 32)
    torch.save({"model": state}, tmp_path / "extra.pth")
    with pytest.raises(OvdiffError, match="unexpected key roi_heads.box_predictor.3"):
        load_cutler(str(tmp_path / "extra.pth"), torch.device("cpu"))
    with pytest.raises(MissingCheckpoint) as e:
        load_cutler(str(tmp_path / "nowhere.pth"), torch.device("cpu"))
    assert "\n" not in str(e.value) and "ovdiff models download" in str(e.value) and "ncut" in str(e.value)


# --------------------------------------------------------------------------- the inference rules


def test_input_resize_is_torchvisions_short_side_800_long_side_at_most_1333():
    assert C.resized_size(512, 512) == (800, 800)
    assert C.resized_size(480, 640) == (800, 1066)  # the long side truncated
    assert C.resized_size(100, 1000) == (133, 1333)  # capped: both sides scaled down again
    assert C.resized_size(64, 64, 100, 166) == (100, 100)
    x, size = C.prepare(np.full((512, 384, 3), 255, np.uint8), torch.device("cpu"))
    assert size == (1066, 800) and x.shape == (1, 3, 1088, 800)  # padded to multiples of 32
    assert torch.allclose(x[0, :, 0, 0], (255 - torch.tensor(C.PIXEL_MEAN)) / torch.tensor(C.PIXEL_STD))
    assert float(x[0, 0, -1, 0]) == 0.0  # the padding


def test_anchors_sizes_ratios_and_order():
    a = C.cell_anchors(32.0)
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    assert torch.allclose(w * h, torch.full((3,), 1024.0)) and torch.allclose(h / w, torch.tensor([0.5, 1.0, 2.0]))
    g = C.grid_anchors(2, 3, 8, 32.0)
    assert g.shape == (18, 4) and torch.allclose(g[3] - a[0], torch.tensor([8.0, 0, 8.0, 0]))  # location-major
    assert torch.allclose(g[9] - a[0], torch.tensor([0, 8.0, 0, 8.0]))  # second row
    assert C.ANCHOR_SIZES == (32, 64, 128, 256, 512) and C.STRIDES == (4, 8, 16, 32, 64)


def test_box_decoding_with_each_stages_weights():
    assert C.STAGE_WEIGHTS == ((10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)) and C.RPN_WEIGHTS == (1, 1, 1, 1)
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # w 20, h 40, centre (20, 40)
    d = torch.tensor([[1.0, 2.0, math.log(2.0) * 5, 0.0]])
    got = C.decode(d, box, C.STAGE_WEIGHTS[0])  # dx/10 = 0.1 of w → +2, dy/10 = 0.2 of h → +8, dw/5 = log 2: w ×2
    assert torch.allclose(got, torch.tensor([[2.0, 28.0, 42.0, 68.0]]))
    got = C.decode(torch.tensor([[2.0, 0.0, 0.0, 0.0]]), box, C.STAGE_WEIGHTS[1])  # 2/20 of the width
    assert torch.allclose(got, torch.tensor([[12.0, 20.0, 32.0, 60.0]]))
    got = C.decode(torch.tensor([[3.0, 0.0, 0.0, 0.0]]), box, C.STAGE_WEIGHTS[2])  # 3/30 of the width
    assert torch.allclose(got, torch.tensor([[12.0, 20.0, 32.0, 60.0]]))
    huge = C.decode(torch.tensor([[0.0, 0.0, 100.0, 0.0]]), box, C.RPN_WEIGHTS)  # dw clamped at log(1000/16)
    assert torch.allclose(huge[0, 2] - huge[0, 0], torch.tensor(20.0 * 1000 / 16))


def test_the_cascade_score_is_the_mean_of_the_three_stages():
    probs = [torch.tensor([[0.9, 0.1]]), torch.tensor([[0.3, 0.7]]), torch.tensor([[0.0, 1.0]])]
    assert torch.allclose(C.cascade_scores(probs), torch.tensor([[0.4, 0.6]]))


def test_scores_above_035_survive_then_nms_05_then_the_best_100():
    assert C.SCORE_THRESHOLD == 0.35 and C.NMS_THRESHOLD == 0.5 and C.DETECTIONS == 100
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]])
    kept, scores = C.final_detections(boxes, torch.tensor([0.36, 0.35, 0.34]), (64, 64))
    assert torch.equal(scores, torch.tensor([0.36]))  # strictly above the threshold
    # IoU of [0,10]×[0,10] with [0,10]×[0,x]: x/10; just above 0.5 is suppressed, just below is kept
    over = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5.1]])
    under = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 4.9]])
    assert len(C.final_detections(over, torch.tensor([0.9, 0.8]), (64, 64))[0]) == 1
    assert len(C.final_detections(under, torch.tensor([0.9, 0.8]), (64, 64))[0]) == 2
    many = torch.tensor([[float(i), 0, i + 1, 1] for i in range(150)])
    kept, scores = C.final_detections(many, torch.linspace(0.4, 0.9, 150), (1, 200))
    assert len(kept) == 100 and float(scores[0]) == pytest.approx(0.9) and bool((scores[:-1] >= scores[1:]).all())
    clipped, _ = C.final_detections(torch.tensor([[-5.0, -5, 70, 20]]), torch.tensor([0.9]), (64, 64))
    assert torch.equal(clipped, torch.tensor([[0.0, 0, 64, 20]]))


def test_rpn_keeps_the_best_per_level_drops_empty_boxes_and_suppresses_at_065():
    assert (C.RPN_TOPK, C.RPN_NMS) == (1000, 0.65)
    anchors = [torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 6.6], [0, 0, 10, 6.4], [5, 5, 5, 9]])]
    logits = [torch.tensor([4.0, 3.0, 2.0, 5.0])]
    deltas = [torch.zeros(4, 4)]
    got = C.rpn_proposals(logits, deltas, anchors, (64, 64))  # the empty box goes; IoU 0.66 > 0.65 goes
    assert torch.equal(got, torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 6.4]]))


def test_rois_go_to_the_fpn_level_of_their_size():
    boxes = torch.tensor([[0.0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 10, 10], [0, 0, 2000, 2000], [0, 0, 447, 447]])
    assert C.box_levels(boxes).tolist() == [2, 1, 0, 3, 2]  # p4, p3, p2 (clamped), p5 (clamped), p4


def test_masks_are_pasted_in_their_box_and_kept_at_05_and_above():
    probs = torch.ones(1, 28, 28)
    m = C.paste_masks(probs, torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (64, 64))
    want = torch.zeros(64, 64, dtype=torch.bool)
    want[20:40, 10:30] = True
    assert torch.equal(m[0], want)
    half = C.paste_masks(torch.full((1, 28, 28), 0.5), torch.tensor([[0.0, 0.0, 28.0, 28.0]]), (28, 28))[0]
    ys = ((torch.arange(28.0) + 0.5) / 28 * 2 - 1)[:, None].expand(28, 28)
    grid = torch.stack([ys.T, ys], dim=2)[None]  # the same sampling points, computed here
    value = torch.nn.functional.grid_sample(torch.full((1, 1, 28, 28), 0.5), grid, align_corners=False)[0, 0]
    exact = value == 0.5
    assert exact.sum() > 100 and half[exact].all()  # exactly 0.5 is in (≥, not >)
    below = C.paste_masks(torch.full((1, 28, 28), 0.499), torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (64, 64))
    assert not below.any()
    left = torch.zeros(1, 28, 28)
    left[:, :, :14] = 1  # the left half of the box
    assert torch.equal(C.paste_masks(left, torch.tensor([[0.0, 0, 28, 28]]), (28, 28))[0], left[0].bool())


# --------------------------------------------------------------------------- the proposer in a build


def test_the_proposer_gives_image_sized_masks_with_the_background_last(tiny_pth):
    proposer = C.CutlerProposer(load_cutler(str(tiny_pth), torch.device("cpu")), (100, 166))
    masks = proposer.propose(_picture(), torch.zeros(0, 8, 8))
    assert len(masks) >= 2 and all(m.shape == (64, 64) and m.dtype == bool for m in masks)
    objects = np.logical_or.reduce(masks[:-1])
    assert np.array_equal(masks[-1], ~objects)
    assert proposer.thresholds([np.zeros((4, 4))]) == (0.2, 0.5)


def test_protos_add_with_mask_proposer_cutler_builds_and_segments_on_the_tiny_detector(tiny_pth, tmp_path):
    cache = str(tmp_path / "c")
    common = ["--preset", "tiny", "--cache", cache, "--mask-proposer", "cutler", "--mask-model", str(tiny_pth)]
    res = runner.invoke(app, ["protos", "add", "cat", *common])
    assert res.exit_code == 0, res.output
    recs = [r for _, r in find_classes(Cache(tmp_path / "c"))]
    assert len(recs) == 3 and all(r["mask_proposer"] == "cutler" and r["mask_proposals"] >= 1 for r in recs), recs
    img = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(_picture()).save(img)
    res = runner.invoke(app, ["segment", str(img), "--classes", "cat", *common, "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output


def test_the_paper_preset_defaults_to_cutler_and_builds_with_the_tiny_detector(tiny_pth, tmp_path):
    from ovdiff_cli.api import Pipeline

    models = {"sd": "tiny", "clip": "tiny", "dino": "tiny", "cutler": str(tiny_pth)}
    pipe = Pipeline(
        "sd15",
        tmp_path / "c",
        "cpu",
        "fp32",
        models=models,
        sample={"n_images": 2, "steps": 2, "size": 64, "attribution_size": 16},
        protos={"k_parts": 2, "feature_size": 64, "extractor": "dino"},
    )
    assert pipe.proto_config.mask_proposer == "cutler"
    assert pipe.vocabulary(["cat"]).names == ["cat"]
    recs = [r for _, r in find_classes(Cache(tmp_path / "c"))]
    assert len(recs) == 1 and recs[0]["mask_proposer"] == "cutler" and recs[0]["mask_proposals"] >= 1, recs


def test_without_the_checkpoint_the_paper_preset_stops_before_drawing_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    res = runner.invoke(
        app,
        ["protos", "add", "cat", "--preset", "sd15", "--cache", str(tmp_path / "c"), "--device", "cpu"]
        + ["--sd-model", "tiny", "--clip-model", "tiny", "--dino-model", "tiny"],
    )
    assert res.exit_code != 0
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: the CutLER checkpoint") and "ovdiff models download" in line
    assert "--mask-model PATH" in line and "--mask-proposer ncut" in line
    assert "sample" not in res.output  # nothing was drawn
