"""fg/bg masks: the attribution rule on constructed proposals, the threshold fallback, normalised cuts, SAM plumbing."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from ovdiff_cli.cli.common import phrase
from ovdiff_cli.compose import build_proposer
from ovdiff_cli.errors import ModelLoadError, OvdiffError
from ovdiff_cli.io.sheets import overlay_masks
from ovdiff_cli.method.stage2_prototypes.masks import (
    MASKCUT_TAU,
    FastNCutProposer,
    SamProposer,
    fg_bg_masks,
    maskcut,
    ncut_objects,
    select_fg_bg,
)
from ovdiff_cli.models.sam import load_sam


def _box(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_fg_is_highest_and_bg_lowest_mean_attribution():
    att = np.zeros((8, 8), np.float32)
    att[0:4, 0:4] = 1.0  # top-left quadrant: strongest
    att[4:8, 4:8] = 0.5  # bottom-right: middling
    top_left, bottom_right = _box((8, 8), 0, 4, 0, 4), _box((8, 8), 4, 8, 4, 8)
    rest = ~(top_left | bottom_right)
    empty = np.zeros((8, 8), bool)
    fg, bg = select_fg_bg([bottom_right, empty, rest, top_left], att)
    assert (fg == top_left).all() and (bg == rest).all()
    # each pixel belongs to its best-ranked proposal: bg never overlaps another proposal
    fg, bg = select_fg_bg([top_left, _box((8, 8), 0, 8, 0, 8), bottom_right], att)
    assert (fg == top_left).all() and (bg == ~(top_left | bottom_right)).all()
    with pytest.raises(ValueError, match="two"):
        select_fg_bg([empty, bottom_right], att)


def test_fewer_than_two_proposals_fall_back_to_the_attribution_thresholds():
    att = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    for proposals in ([], [np.zeros((8, 8), bool)], [_box((8, 8), 0, 2, 0, 2)]):
        fg, bg, how = fg_bg_masks(proposals, att)
        assert how == "thresholds" and (fg == (att > 0.5)).all() and (bg == (att < 0.2)).all()
    fg, bg, how = fg_bg_masks(proposals, att, 0.3, 0.7)
    assert (fg == (att > 0.7)).all() and (bg == (att < 0.3)).all()
    fg, bg, how = fg_bg_masks([_box((8, 8), 0, 2, 0, 2), ~_box((8, 8), 0, 2, 0, 2)], att)
    assert how == "proposals"


def _blob_features(h=16, w=16, d=32, seed=0):
    """Noise around a background direction, with two blobs of their own directions."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(d, h, w)) * 0.3
    f[1] += 3
    blob_a, blob_b = _box((h, w), 3, 8, 4, 10), _box((h, w), 10, 14, 9, 15)
    f[:, blob_a] += np.eye(d)[0][:, None] * 3 - np.eye(d)[1][:, None] * 3
    f[:, blob_b] += np.eye(d)[2][:, None] * 3 - np.eye(d)[1][:, None] * 3
    return f, blob_a, blob_b


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_ncut_fast_finds_constructed_objects():
    f, blob_a, blob_b = _blob_features()
    objects = ncut_objects(f)
    assert len(objects) >= 2
    assert max(_iou(o, blob_a) for o in objects) > 0.9 and max(_iou(o, blob_b) for o in objects) > 0.9
    assert not (objects[0] & objects[1]).any()


def test_ncut_fast_proposer_pools_large_grids_and_adds_the_background():
    f, blob_a, blob_b = _blob_features()
    big = torch.from_numpy(np.kron(f, np.ones((1, 3, 3)))).float()  # 48x48 grid → pooled to 32x32
    proposals = FastNCutProposer().propose(np.zeros((8, 8, 3), np.uint8), big)
    assert all(p.shape == (48, 48) and p.dtype == bool for p in proposals)
    big_a = np.kron(blob_a, np.ones((3, 3), bool))
    assert max(_iou(p, big_a) for p in proposals) > 0.8
    union = np.logical_or.reduce(proposals[:-1])
    assert (proposals[-1] == ~union).all()  # the background proposal


# --------------------------------------------------------------------------- MaskCut (ncut), as published


def _groups(shape, regions, d=16, seed=0, noise=0.05):
    """Features on a grid: each region (bool mask) gets its own direction; the rest direction 0."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(d, *shape)) * noise
    f[0] += 1
    for k, r in enumerate(regions, start=1):
        f[:, r] += np.eye(d)[k][:, None] * 3 - np.eye(d)[0][:, None]
    return f


def test_maskcut_splits_the_generalised_eigenproblem_of_the_thresholded_affinity():
    """MaskCut's cut is the second-smallest generalised eigenvector of (D−W)v = λDv (scipy's eigh)."""
    import scipy.linalg

    from ovdiff_cli.method.stage2_prototypes.masks import second_eigvec

    f, _, _ = _blob_features(12, 12)
    x = f.reshape(f.shape[0], -1).T
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = np.where(x @ x.T > 0.15, 1.0, 1e-5)
    _, vecs = scipy.linalg.eigh(np.diag(w.sum(1)) - w, np.diag(w.sum(1)), subset_by_index=[1, 1])
    _, v = second_eigvec(w)
    assert abs(np.corrcoef(vecs[:, 0], v)[0, 1]) > 1 - 1e-6


def test_maskcut_finds_constructed_objects_disjoint():
    f, blob_a, blob_b = _blob_features()
    objects = maskcut(f)
    assert len(objects) == 2 and not (objects[0] & objects[1]).any()
    assert max(_iou(o, blob_a) for o in objects) == 1.0 and max(_iou(o, blob_b) for o in objects) == 1.0


def test_maskcut_affinity_threshold_is_cutlers_tau():
    """Halves whose keys have cosine 0.17, and a 3×3 blob apart: at CutLER's τ = 0.15 the halves are one
    clique and the cut isolates the blob; at 0.2 they are two, and the cut splits them."""
    h = w = 12
    right, blob = np.zeros((h, w), bool), _box((h, w), 2, 5, 8, 11)
    right[:, 6:] = True
    keys = np.array([[1, 0, 0], [0.17, np.sqrt(1 - 0.17**2), 0], [0, 0, 1]])
    f = keys[np.where(blob, 2, right.astype(int))].transpose(2, 0, 1)
    assert MASKCUT_TAU == 0.15 and (maskcut(f)[0] == blob).all()
    assert maskcut(f, tau=0.2)[0].sum() == 72


def test_maskcut_corner_rule_takes_the_side_without_the_corners():
    """A one-cell frame (44 cells) around a 10×10 centre: the eigenvector peaks in the smaller frame,
    which holds all 4 corners, so MaskCut takes the centre."""
    frame = np.ones((12, 12), bool)
    frame[1:-1, 1:-1] = False
    objects = maskcut(_groups((12, 12), [frame]))
    assert (objects[0] == ~frame).all()


def test_maskcut_drops_a_later_mask_of_at_most_one_percent():
    """The first cut keeps what it finds; a later one of ≤ 1% of the grid (here 4 of 400 cells) is dropped."""
    big, small = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    big[3:10, 3:12] = True
    small[15:17, 15:17] = True
    f = _groups((20, 20), [big, small])
    objects = maskcut(f)
    assert len(objects) == 1 and (objects[0] == big).all()
    assert any((o == small[10:, 10:]).all() for o in maskcut(f[:, 10:, 10:]))  # alone, 4 of 100 cells: kept


def test_maskcut_golden_on_seeded_noise():
    """Every rule at once on features without structure (three cuts, masked patches kept in the graph
    with zero features): the cells of each mask, pinned."""
    f = np.random.default_rng(3).normal(size=(8, 10, 10))
    assert [int(o.sum()) for o in maskcut(f)] == [4, 16, 3]


def test_maskcut_proposer_reads_a_480_lanczos_pass_at_512(tiny_stages):
    """At the paper's 512 px feature size, ncut featurises each support image resized with Lanczos to
    480² (MaskCut's input: a 60×60 grid for DINO ViT-B/8), apart from the 512 px pass of the prototypes."""
    import dataclasses

    from ovdiff_cli.method.stage2_prototypes.classbuild import mask_batches, proposer_pass
    from ovdiff_cli.method.stage2_prototypes.masks import MaskCutProposer, lanczos
    from ovdiff_cli.models.presets import PRESETS
    from ovdiff_cli.procedural import support_sample

    proposer = build_proposer("ncut", tiny_stages.store)
    assert isinstance(proposer, MaskCutProposer)
    assert [proposer.input_side(512, 8), proposer.input_side(512, 16), proposer.input_side(64, 8)] == [480, 480, 64]
    cfg = dataclasses.replace(PRESETS["tiny"].protos, feature_size=512)
    samples = [support_sample("ball", 1, 96, 16)]
    part = tiny_stages.part("dino")
    seen = []
    inner = part.backbone
    part.backbone = lambda x: seen.append(x.clone()) or inner(x)
    try:
        assert proposer_pass(samples, tiny_stages, cfg) == (480, False)
        ((_, _, _, feats),) = list(mask_batches(samples, tiny_stages, cfg, {(64, 64)}))
    finally:
        part.backbone = inner
    assert feats is None  # not the prototypes' pass: that one is made at 512
    # built here with PIL itself, not with the module's own resize: a switch to bilinear fails
    from PIL import Image

    pil = Image.fromarray(samples[0].image).resize((480, 480), Image.Resampling.LANCZOS)
    want = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(seen[0][0], want)
    assert np.array_equal(lanczos(samples[0].image, 480), np.array(pil))


def test_threshold_proposer_proposes_nothing_and_unknown_names_are_refused(tiny_stages):
    assert (
        build_proposer("threshold", tiny_stages.store).propose(np.zeros((8, 8, 3), np.uint8), torch.zeros(4, 2, 2))
        == []
    )
    assert isinstance(build_proposer("ncut-fast", tiny_stages.store), FastNCutProposer)  # the lighter cut, kept
    with pytest.raises(OvdiffError, match="cutler, ncut, ncut-fast, threshold, sam"):
        build_proposer("maskrcnn", tiny_stages.store)


def test_sam_without_weights_explains_how_to_get_them(tiny_stages, tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load SAM weights") as info:
        load_sam(str(tmp_path / "no-sam-here"), tiny_stages.device, tiny_stages.dtype)
    assert info.value.role == "sam" and "--" not in str(info.value).split("hf download")[0]
    assert re.search("--sam-model DIR.*--mask-proposer ncut", phrase(info.value))


def test_tiny_sam_runs_through_the_pipeline(tiny_stages, tiny_sam_dir):
    proposer = SamProposer(load_sam(str(tiny_sam_dir), tiny_stages.device, tiny_stages.dtype), points_per_side=4)
    # Random weights score every mask below SAM's quality thresholds: lift them so masks come through.
    pipe = proposer.pipe
    proposer.pipe = lambda im, **kw: pipe(im, pred_iou_thresh=0.0, stability_score_thresh=0.0, **kw)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    proposals = proposer.propose(image, torch.zeros(8, 8, 8))
    assert proposals and all(p.shape == (64, 64) and p.dtype == bool and p.any() for p in proposals)


def test_overlay_tints_fg_red_and_bg_blue():
    image = np.full((8, 8, 3), 128, np.uint8)
    codes = np.zeros((4, 4), np.uint8)
    codes[0, 0], codes[3, 3] = 1, 2
    out = overlay_masks(image, codes).astype(int)
    assert out[0, 0, 0] > 150 and out[0, 0, 2] < 100  # fg red
    assert out[7, 7, 2] > 150 and out[7, 7, 0] < 100  # bg blue
    assert (out[4, 0] == 128).all()  # neither: untouched


@pytest.mark.parametrize("name", ["kite", "ball", "sky", "grass"])
def test_ncut_and_the_attribution_rule_recover_the_procedural_worlds_objects(procedural_stages, name):
    """In the procedural world the attribution map is the class's own soft mask: fg must hold it, bg must not."""
    from ovdiff_cli.method.stage1_support.sampling import image_seed
    from ovdiff_cli.method.stage2_prototypes.features import images_to_tensor
    from ovdiff_cli.method.stage2_prototypes.masks import class_masks, image_attribution, mask_to_grid
    from ovdiff_cli.procedural import support_sample

    extractor, proposer = procedural_stages.part("procedural"), build_proposer("ncut", procedural_stages.store)
    samples = [support_sample(name, image_seed(name, 0, i), 128, 32) for i in range(6)]
    feats = extractor(images_to_tensor([s.image for s in samples], 128))
    masks = class_masks(samples, feats, proposer)
    recalls = []
    for s, fg, bg in zip(samples, *masks.on_grid(feats.shape[-2:]), strict=True):
        core = mask_to_grid(image_attribution(s.attribution, s.image.shape[:2]) > 0.6, fg.shape)
        recalls.append((fg & core).sum() / core.sum())
        assert not (bg & core).any()
    assert np.median(recalls) >= 0.9 and masks.counts()["proposals"] > 0


def test_maskcut_drops_a_cut_that_repeats_the_previous_one_by_iou_above_half(monkeypatch):
    """MaskCut keeps a later cut overlapping the previous one by IoU 0.5 exactly and drops one above it."""
    from ovdiff_cli.method.stage2_prototypes import masks

    grid = np.zeros((6, 6), bool)
    first = grid.copy()
    first[2, :] = True  # 6 cells, no corner

    def cut(cells: np.ndarray) -> np.ndarray:
        v = np.where(cells.ravel(), 1.0, -0.2)
        v[np.flatnonzero(cells.ravel())[0]] = 2.0  # the seed
        return v

    half = grid.copy()
    half[2, 2:] = half[3, 4:] = True  # 4 shared of 8: IoU 0.5
    more = grid.copy()
    more[2, 1:] = more[3, 5] = True  # 5 shared of 7: IoU 0.71
    for second, kept in ((half, True), (more, False)):
        vectors = [cut(first), cut(second)]
        monkeypatch.setattr(masks, "second_eigvec", lambda aff, vs=vectors: (0.5, vs.pop(0)))
        found = masks.maskcut(np.ones((4, 6, 6), np.float32), n_cuts=2)
        assert np.array_equal(found[0], first)
        assert (len(found) == 2 and np.array_equal(found[1], second & ~first)) if kept else len(found) == 1
