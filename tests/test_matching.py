"""Prototype matching: vocabulary assembly, the stuff filter, window tiling, sliding scores, upsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovdiff_cli.method.stage4_segment.bank import assemble_vocabulary
from ovdiff_cli.method.stage4_segment.matching import match, slide_match_many, upsample_argmax, window_boxes
from ovdiff_cli.types import ClassPrototypes


def unit(*v: float) -> np.ndarray:
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


def test_stuff_filter_drops_exactly_the_bg_prototypes_above_threshold():
    angles = np.deg2rad([10, 30, 40, 60, 89])  # cosines to the first stuff prototype: .985 .866 .766 .5 .017
    thing = ClassPrototypes(
        "boat",
        "thing",
        fg={"class": unit(0, 0, 1)[None]},
        bg={"instance": np.stack([unit(np.cos(a), 0, np.sin(a)) for a in angles])},
    )
    water = ClassPrototypes("water", "stuff", fg={"instance": np.stack([unit(1, 0, 0), unit(0, 1, 0)])})

    def kept_bg_rows(v) -> list[int]:
        return [p.row for p in v.provenance if p.group == "bg"]

    v = assemble_vocabulary([thing, water], ("instance", "class"), stuff_threshold=0.85)
    assert kept_bg_rows(v) == [2, 3, 4]
    lenient = assemble_vocabulary([thing, water], ("instance", "class"), stuff_threshold=0.99)
    assert kept_bg_rows(lenient) == [0, 1, 2, 3, 4]
    assert kept_bg_rows(v.restrict([0])) == [2, 3, 4]  # computed once against every stuff class of the vocabulary


def test_the_stuff_filter_in_blocks_of_bg_rows_gives_the_same_cosines(monkeypatch):
    """A thousand classes' bg prototypes are compared with the stuff classes a block at a time (never a
    copy of them all): the same numbers as in one block, and none computed without a stuff class."""
    from ovdiff_cli.method.stage4_segment import bank

    rng = np.random.default_rng(0)
    things = [
        ClassPrototypes(
            f"t{i}",
            "thing",
            fg={"class": rng.standard_normal((1, 8)).astype(np.float32)},
            bg={"instance": rng.standard_normal((5, 8)).astype(np.float32)},
        )
        for i in range(4)
    ]
    stuff = [
        ClassPrototypes(f"s{i}", "stuff", fg={"instance": rng.standard_normal((3, 8)).astype(np.float32)})
        for i in range(2)
    ]
    whole = assemble_vocabulary(things + stuff, ("instance", "class"), stuff_threshold=0.5)
    monkeypatch.setattr(bank, "STUFF_CHUNK", 3)
    blocks = assemble_vocabulary(things + stuff, ("instance", "class"), stuff_threshold=0.5)
    full_whole, full_blocks = whole.bank or whole, blocks.bank or blocks
    assert torch.equal(full_whole.stuff_sim, full_blocks.stuff_sim) and (full_whole.stuff_sim > -2).sum() == 20
    assert [p.row for p in blocks.provenance] == [p.row for p in whole.provenance]
    only_things = assemble_vocabulary(things, ("instance", "class"))
    assert ((only_things.bank or only_things).stuff_sim == -2).all()


def _classes() -> list[ClassPrototypes]:
    kite = ClassPrototypes(
        "kite",
        "thing",
        fg={"class": unit(1, 0, 0, 0)[None], "instance": np.stack([unit(1, 0.1, 0, 0), unit(1, 0, 0.1, 0)])},
        bg={"class": unit(0, 1, 0, 0)[None], "instance": np.stack([unit(0, 1, 0.05, 0), unit(0, 0, 0, 1)])},
    )
    sky = ClassPrototypes("sky", "stuff", fg={"class": unit(0, 1, 0, 0)[None]}, bg={"class": unit(0, 0, 0, 1)[None]})
    return [kite, sky]


def test_vocabulary_labels_background_union_and_stuff_filter():
    v = assemble_vocabulary(_classes(), ("class", "instance"), stuff_threshold=0.85)
    # kite's bg rows like the sky are dropped; the stuff class contributes no bg at all
    bg = [p for p in v.provenance if p.group == "bg"]
    assert [(p.cls, p.kind, p.row) for p in bg] == [(0, "instance", 1)]
    assert v.labels == [0, 1, 2]
    owners = [v.labels[o] for o in v.owner.tolist()]
    assert owners == sorted(owners) and owners.count(1) == 3 and owners.count(2) == 1
    assert torch.allclose(v.protos.norm(dim=1), torch.ones(len(v)))
    unfiltered = assemble_vocabulary(_classes(), ("class", "instance"), stuff_filter=False)
    assert sum(p.group == "bg" for p in unfiltered.provenance) == 3
    plain = assemble_vocabulary(_classes(), ("class",), background=False)
    assert plain.labels == [1, 2] and all(p.group == "fg" for p in plain.provenance)
    thresholded = assemble_vocabulary(_classes(), ("class",), bg_threshold=0.72)
    assert thresholded.labels == [0, 1, 2] and all(p.group == "fg" for p in thresholded.provenance)


def test_match_takes_best_prototype_per_label_and_restrict_keeps_chosen_classes():
    v = assemble_vocabulary(_classes(), ("class", "instance"))
    feats = torch.tensor(np.stack([unit(1, 0.1, 0, 0), unit(0, 1, 0, 0), unit(0, 0, 0, 1)]).T.reshape(1, 4, 1, 3))
    scores, best = match(feats, v)
    assert scores.shape == (1, 3, 1, 3)
    assert scores[0].argmax(0).flatten().tolist() == [1, 2, 0]  # kite, sky, background
    winner = best[0].gather(0, scores[0].argmax(0, keepdim=True))[0, 0].tolist()
    assert [v.source(i).kind for i in winner] == ["instance", "class", "instance"]
    # without the sky in play, kite's sky-like bg prototypes stay out: the stuff filter was computed
    # once against every stuff class of the vocabulary, so the sky pixel does not become background
    only_kite = v.restrict([0])
    assert only_kite.labels == [0, 1] and sum(p.group == "bg" for p in only_kite.provenance) == 1
    s2, b2 = match(feats, only_kite)
    assert [only_kite.labels[i] for i in s2[0].argmax(0).flatten().tolist()] == [1, 1, 0]
    assert {only_kite.source(i) for i in b2.flatten().tolist()} <= set(only_kite.provenance)
    assert v.restrict([0, 1]).provenance == v.provenance
    thresholded = assemble_vocabulary(_classes(), ("class",), bg_threshold=0.72)
    s3, _ = match(F.normalize(feats + 0.5, dim=1), thresholded)
    assert torch.all(s3[0, 0] == 0.72)


@pytest.mark.parametrize(
    "height,width,window,stride",
    [
        (448, 597, 448, 224),
        (448, 597, 336, 224),
        (500, 500, 336, 224),
        (100, 50, 448, 224),
        (448, 448, 448, 224),
        (449, 1000, 336, 100),
        (7, 3, 4, 4),
    ],
)
def test_window_tiling_covers_every_pixel(height, width, window, stride):
    boxes = window_boxes(height, width, window, stride)
    cover = np.zeros((height, width), int)
    for y0, x0, y1, x1 in boxes:
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
        assert y1 - y0 == min(window, height) and x1 - x0 == min(window, width)
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    assert max(b[2] for b in boxes) == height and max(b[3] for b in boxes) == width  # flush with the border


def test_upsample_argmax_equals_full_interpolation_in_bands():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 13, 17, generator=g)
    best = torch.randint(0, 50, (5, 13, 17), generator=g)
    labels, winner, means = upsample_argmax(scores, 61, 45, best, band=7)
    up = F.interpolate(scores[None], size=(61, 45), mode="bilinear", align_corners=False)[0]
    full = up.argmax(0)
    assert np.array_equal(labels, full.numpy())
    near = F.interpolate(best[None].float(), size=(61, 45), mode="nearest")[0].long()
    assert np.array_equal(winner, near.gather(0, full[None])[0].numpy())
    won = up.max(0).values.double()  # each segment's score: the mean of its winning upsampled scores
    for k in range(5):
        expect = won[full == k].mean().item() if (full == k).any() else float("nan")
        assert np.allclose(means[k], expect, equal_nan=True), k


def test_slide_match_averages_windows_over_the_whole_image():
    """A left/right two-colour image: every pixel scored, the border between the classes found."""
    protos = [
        ClassPrototypes("red", "thing", fg={"class": unit(1, 0, 0)[None]}),
        ClassPrototypes("blue", "thing", fg={"class": unit(0, 0, 1)[None]}),
    ]
    v = assemble_vocabulary(protos, ("class",), background=False)
    img = torch.zeros(3, 40, 72)
    img[0, :, :36] = 1
    img[2, :, 36:] = 1
    calls = []

    def extract(crops: torch.Tensor) -> torch.Tensor:  # stride-4 mean colour
        calls.append(tuple(crops.shape))
        return F.avg_pool2d(crops, 4) + 1e-3

    for windows in [(32, 24), None]:
        calls.clear()
        [(scores, labels, best)] = slide_match_many(
            [img], [[v]], [extract], [0], windows, stride=16, batch=3, with_best=True
        )
        assert scores.shape == (2, 40, 72) and labels == [1, 2] and best.min() >= 0
        lab = scores.argmax(0)
        assert (lab[:, :34] == 0).all() and (lab[:, 38:] == 1).all()
    assert calls == [(1, 3, 40, 72)]  # one pass without windows: the whole image


def _constant_part(angle_of_width):
    """An extractor whose features at every cell are (cos a, sin a, 0), a = angle_of_width(crop width)."""

    def extract(crops: torch.Tensor) -> torch.Tensor:
        a = angle_of_width(crops.shape[-1])
        f = torch.tensor([np.cos(a), np.sin(a), 0.0], dtype=torch.float32)
        return f.view(1, 3, 1, 1).expand(crops.shape[0], 3, 2, 2).clone()

    return extract


def test_the_whole_image_counts_as_one_more_crop_in_the_average():
    """sdov predict.py: the whole image is appended to the windows and every crop weighs the same."""
    v = assemble_vocabulary(
        [ClassPrototypes("x", "thing", fg={"class": unit(1, 0, 0)[None]})], ("class",), background=False
    )
    img = torch.zeros(3, 40, 72)
    angle = {32: 0.3, 72: 1.2}  # window crops are 32 wide, the whole image 72
    [(scores, _, _)] = slide_match_many([img], [[v]], [_constant_part(lambda w: angle[w])], [0], (32,), stride=16)
    cover = torch.zeros(40, 72)
    for y0, x0, y1, x1 in window_boxes(40, 72, 32, 16):
        cover[y0:y1, x0:x1] += 1
    want = (cover * np.cos(0.3) + np.cos(1.2)) / (cover + 1)
    torch.testing.assert_close(scores[0], want, rtol=1e-5, atol=1e-5)


def test_parts_are_fused_late_best_prototype_per_part_then_mean():
    """Each part scores a label by its own best prototype; the parts' scores are averaged (not one
    joint space, where one prototype must be best in both). A label a part lacks scores -1 there."""
    a = [
        ClassPrototypes("x", "thing", fg={"instance": np.stack([unit(1, 0, 0), unit(0, 1, 0)])}),
        ClassPrototypes("y", "thing", fg={"class": unit(0, 0, 1)[None]}),
    ]
    b = [
        ClassPrototypes("x", "thing", fg={"instance": np.stack([unit(0, 1, 0), unit(1, 0, 0)])}),
        ClassPrototypes("y", "thing", fg={"class": unit(1, 1, 0)[None]}),
    ]
    va = assemble_vocabulary(a, ("class", "instance"), background=False)
    vb = assemble_vocabulary(b, ("class", "instance"), background=False)
    img = torch.zeros(3, 8, 8)
    parts = [_constant_part(lambda w: 0.0), _constant_part(lambda w: np.pi / 2)]  # part 1 sees (1,0,0), part 2 (0,1,0)
    [(scores, labels, best)] = slide_match_many([img], [[va, vb]], parts, [0, len(va.bank)], None, with_best=True)
    assert labels == [1, 2]
    torch.testing.assert_close(scores[:, 0, 0], torch.tensor([1.0, (0.0 + np.sqrt(0.5)) / 2], dtype=torch.float32))
    # the winner of x is in part 1 (cosine 1 in both parts: the first part keeps it), that of y in part 2
    assert va.source(int(best[0, 0, 0])).kind == "instance" and int(best[1, 0, 0]) >= len(va.bank)
    only_b = assemble_vocabulary(b[:1], ("instance",), background=False)  # part 2 has no prototypes of y
    [(scores, labels, _)] = slide_match_many([img], [[va, only_b]], parts, [0, len(va.bank)], None)
    torch.testing.assert_close(scores[:, 0, 0], torch.tensor([1.0, (0.0 - 1.0) / 2]))


def test_scores_are_cosines_whatever_the_feature_norms():
    """Target features are normalised per cell before matching (sdov predict.py): a part's scores, and so
    the late fusion of parts and windows, never weigh a cell by its feature norm. Golden cosines."""
    classes = [
        ClassPrototypes("x", "thing", fg={"class": unit(1, 0, 0)[None]}, bg={"class": unit(0, 0, 1)[None]}),
        ClassPrototypes("y", "thing", fg={"class": unit(1, 1, 0)[None]}),
    ]
    vocab = assemble_vocabulary(classes, ("class",))
    cells = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.2, 0.0], [1.0, 1.0, 1.0], [-4.0, 0.0, 3.0]])  # norms 3, .2, √3, 5
    scores, _ = match(cells.T.reshape(1, 3, 1, 4), vocab)
    want = torch.tensor(
        [
            [0.0, 0.0, 0.57735, 0.6],  # background: (0,0,1)
            [1.0, 0.0, 0.57735, -0.8],  # x: (1,0,0)
            [0.707107, 0.707107, 0.816497, -0.565685],
        ]
    )  # y: (1,1,0)/√2
    torch.testing.assert_close(scores[0, :, 0], want, rtol=0, atol=1e-5)
    # late fusion over two parts whose features differ in norm by 50×: the mean of their cosines
    big, small = (lambda crops: 50 * _constant_part(lambda w: 0.0)(crops)), _constant_part(lambda w: np.pi / 2)
    [(fused, labels, _)] = slide_match_many(
        [torch.zeros(3, 8, 8)], [[vocab, vocab]], [big, small], [0, len(vocab)], None
    )
    assert labels == [0, 1, 2]
    torch.testing.assert_close(fused[:, 0, 0], torch.tensor([0.0, 0.5, 0.707107]), rtol=0, atol=1e-5)


def test_a_bg_prototype_exactly_at_the_stuff_threshold_is_kept():
    """The stuff filter drops cosines *above* the threshold (≤ is kept), as the authors' `filter_bg_thres`."""
    thing = ClassPrototypes(
        "boat", "thing", fg={"class": unit(0, 0, 1)[None]}, bg={"instance": np.stack([unit(1, 0, 0), unit(0, 1, 0)])}
    )
    water = ClassPrototypes("water", "stuff", fg={"instance": unit(1, 0, 0)[None]})
    v = assemble_vocabulary([thing, water], ("instance", "class"), stuff_threshold=1.0)  # cosine exactly 1.0
    assert [p.row for p in v.provenance if p.group == "bg"] == [0, 1]
    tight = assemble_vocabulary([thing, water], ("instance", "class"), stuff_threshold=0.999)
    assert [p.row for p in tight.provenance if p.group == "bg"] == [1]


def test_a_pixel_whose_best_score_is_exactly_zero_is_background():
    """Scores ≤ 0 count as 0 and ties go to the background (sdov predict.py thresholds at 0 with `>`)."""
    scores = torch.tensor([[[-0.5, -0.5]], [[0.0, 0.25]]])  # (L=2: background, class; 1×2)
    labels, _, _ = upsample_argmax(scores, 1, 2, floor=0)
    assert labels.tolist() == [[0, 1]]  # the exact 0 is background, 0.25 the class
