"""Prototype aggregation against hand computations; K-means against scikit-learn, seeding, golden values; streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovdiff_cli.config import ProtoConfig
from ovdiff_cli.method.stage2_prototypes import kmeans as kmeans_module
from ovdiff_cli.method.stage2_prototypes.aggregation import (
    RegionAccumulator,
    build_prototypes,
    class_prototype,
    decode_masks,
    encode_masks,
    instance_prototypes,
)
from ovdiff_cli.method.stage2_prototypes.kmeans import CellStore, kmeans


def _features() -> torch.Tensor:
    """(3 images, D=2, 2x2 grid); channel 0 counts 1..4 along the grid, channel 1 is 10× the image index."""
    f = torch.zeros(3, 2, 2, 2)
    for n in range(3):
        f[n, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        f[n, 1] = 10.0 * n
    return f


def test_eq1_instance_prototypes_and_size_weighted_class_prototype_by_hand():
    masks = torch.tensor(
        [
            [[1, 1], [0, 0]],  # image 0: cells 1, 2 → mean (1.5, 0)
            [[0, 0], [0, 0]],  # image 1: empty → skipped
            [[0, 1], [1, 1]],  # image 2: cells 2, 3, 4 → mean (3, 20)
        ],
        dtype=torch.bool,
    )
    protos, sizes, kept = instance_prototypes(_features(), masks)
    torch.testing.assert_close(protos, torch.tensor([[1.5, 0.0], [3.0, 20.0]]))
    assert sizes.tolist() == [2.0, 3.0] and kept.tolist() == [0, 2]
    # P̄ = (2·(1.5, 0) + 3·(3, 20)) / 5 = (2.4, 12)
    torch.testing.assert_close(class_prototype(protos, sizes), torch.tensor([[2.4, 12.0]]))
    # ...which is also the mean of every masked cell, as the paper's formula implies
    cells = _features().permute(0, 2, 3, 1)[masks]
    torch.testing.assert_close(class_prototype(protos, sizes)[0], cells.mean(0))


def _three_clusters(n_per=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    pts = torch.cat([c + 0.1 * torch.randn(n_per, 3, generator=g) for c in centres])
    return pts, torch.arange(3).repeat_interleave(n_per)


def test_kmeans_returns_k_centroids_recovers_clusters_and_is_seeded():
    pts, truth = _three_clusters()
    centroids, labels = kmeans(pts, 3, seed=0)
    assert centroids.shape == (3, 3) and labels.shape == (60,) and labels.dtype == torch.int64
    # each true cluster is one k-means cluster, whatever the numbering
    assert all(len(set(labels[truth == t].tolist())) == 1 for t in range(3)) and len(set(labels.tolist())) == 3
    c2, l2 = kmeans(pts, 5, seed=7)
    c3, l3 = kmeans(pts, 5, seed=7)
    assert c2.shape == (5, 3) and torch.equal(c2, c3) and torch.equal(l2, l3)
    c4, _ = kmeans(pts, 5, seed=8)
    assert not torch.equal(c2, c4)


def test_kmeans_with_fewer_points_than_k():
    pts = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    centroids, labels = kmeans(pts, 32, seed=0)
    assert centroids.shape == (3, 2) and sorted(map(tuple, centroids.tolist())) == sorted(map(tuple, pts.tolist()))
    assert torch.equal(centroids[labels], pts)
    dup = torch.tensor([[1.0, 1.0]] * 4 + [[5.0, 5.0]] * 2)  # 6 points, 2 distinct
    centroids, labels = kmeans(dup, 4, seed=0)
    assert centroids.shape == (2, 2) and torch.equal(centroids[labels], dup)
    with pytest.raises(ValueError):
        kmeans(torch.zeros(0, 2), 3, seed=0)


def test_build_prototypes_for_things_and_stuff():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 6, 5, 5, generator=g)
    fg = np.zeros((4, 5, 5), bool)
    fg[:, 1:4, 1:4] = True
    bg = ~fg
    bg[3] = False  # image 3 has no background
    thing = build_prototypes([(feats, fg, bg)], k=3, seed=0, stuff=False)
    assert (
        thing["fg/class"].shape == (1, 6) and thing["fg/instance"].shape == (4, 6) and thing["fg/part"].shape == (3, 6)
    )
    assert thing["bg/instance"].shape == (3, 6) and thing["bg/instance_src"].tolist() == [0, 1, 2]
    assert thing["fg/instance_src"].tolist() == [0, 1, 2, 3]
    assert "masks" not in thing  # the caller stores them, on the mask grid (encode_masks)
    labels = thing["fg/part_labels"]
    assert labels.dtype == np.int16 and (labels[~fg] == -1).all() and (labels[fg] >= 0).all() and labels.max() < 3
    # each masked cell's label is its nearest part centroid
    cells = feats.permute(0, 2, 3, 1)[torch.from_numpy(fg)]
    nearest = torch.cdist(cells, torch.from_numpy(thing["fg/part"])).argmin(1)
    assert (torch.from_numpy(labels[fg]).long() == nearest).all()
    assert all(a.dtype == np.float32 for n, a in thing.items() if n.split("/")[-1] in ("class", "instance", "part"))

    stuff = build_prototypes([(feats, fg, bg)], k=3, seed=0, stuff=True)
    assert not any(n.startswith("bg/") for n in stuff)
    for n in ("fg/class", "fg/instance", "fg/part"):
        np.testing.assert_array_equal(stuff[n], thing[n])


def test_masks_are_coded_as_bit_flags_and_decode_back():
    fg = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 0]]], bool)
    bg = np.array([[[0, 1, 1, 0]], [[1, 1, 1, 1]]], bool)
    coded = encode_masks(fg, bg)
    assert coded.dtype == np.uint8 and coded.tolist() == [[[1, 3, 2, 0]], [[2, 2, 2, 2]]]  # 3: a cell both touch
    back = decode_masks(coded)
    assert (back[0] == fg).all() and (back[1] == bg).all()


def test_empty_regions_give_zero_row_prototypes():
    feats = torch.randn(2, 4, 3, 3)
    out = build_prototypes([(feats, np.ones((2, 3, 3), bool), np.zeros((2, 3, 3), bool))], k=2, seed=0, stuff=False)
    assert out["bg/class"].shape == (0, 4) and out["bg/part"].shape == (0, 4) and (out["bg/part_labels"] == -1).all()


# Golden values: greedy k-means++ drawing from numpy's RandomState(seed), then Lloyd; a change of the draws or the update shows.
CURVE = torch.linspace(0, 1, 40).reshape(20, 2) ** 2
# scikit-learn's KMeans(4, random_state=3, n_init="auto") finds the same centroids, in the same order.
CURVE_CENTROIDS = [[0.414201, 0.447732], [0.765286, 0.810651], [0.034188, 0.042735], [0.193294, 0.216305]]
CURVE_LABELS = [2] * 7 + [3] * 4 + [0] * 4 + [1] * 5


def test_kmeans_golden_values_in_fp32_and_bf16():
    centroids, labels = kmeans(CURVE, 4, seed=3)
    np.testing.assert_allclose(centroids.numpy(), CURVE_CENTROIDS, atol=2e-6)
    assert labels.tolist() == CURVE_LABELS
    # bf16 points: the same draws and clusters, centroids summed in fp32 from the rounded points
    c16, l16 = kmeans(CURVE.bfloat16(), 4, seed=3)
    assert c16.dtype == torch.float32 and l16.tolist() == CURVE_LABELS
    np.testing.assert_allclose(c16.numpy(), CURVE_CENTROIDS, atol=2e-3)


def _stream(feats, fg, bg, sizes, **kw):
    """build_prototypes over batches of the given sizes."""
    out, start = [], 0
    for n in sizes:
        out.append((feats[start : start + n], fg[start : start + n], bg[start : start + n]))
        start += n
    return build_prototypes(out, **kw)


def _random_class(n=5, d=8, hw=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, hw, hw, generator=g)
    fg = (torch.rand(n, hw, hw, generator=g) > 0.4).numpy()
    return feats, fg, ~fg


def test_streaming_is_independent_of_the_batching():
    feats, fg, bg = _random_class()
    for max_points in (None, 40):  # every cell (the authors') / a sample of 40 of ~100 cells
        whole = _stream(feats, fg, bg, [5], k=4, seed=0, stuff=False, max_points=max_points)
        parts = _stream(feats, fg, bg, [2, 1, 2], k=4, seed=0, stuff=False, max_points=max_points)
        assert whole.keys() == parts.keys()
        for name in whole:
            np.testing.assert_allclose(whole[name], parts[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_accumulator_equals_the_whole_set_computation_and_bounds_its_sample():
    feats, fg, _ = _random_class()
    acc = RegionAccumulator(8, 4, seed=0, max_points=30)
    acc.add(feats[:3], fg[:3], 0)
    acc.add(feats[3:], fg[3:], 3)
    keys, points = acc.sample
    assert len(keys) == 30 and points.shape == (30, 8)  # never more than max_points
    out = acc.finish()
    inst, sizes, kept = instance_prototypes(feats, torch.from_numpy(fg))
    np.testing.assert_allclose(out["instance"], inst.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["class"], class_prototype(inst, sizes).numpy(), rtol=1e-5, atol=1e-6)
    assert out["instance_src"].tolist() == kept.tolist()
    # part labels cover every masked cell (not only the 30 sampled), each its nearest centroid
    cells = feats.permute(0, 2, 3, 1)[torch.from_numpy(fg)]
    nearest = torch.cdist(cells, torch.from_numpy(out["part"])).argmin(1)
    assert (out["part_labels"][~fg] == -1).all()
    assert (torch.from_numpy(out["part_labels"][fg]).long() == nearest).all()
    # the sample is uniform over cells: a different seed draws a different one
    other = RegionAccumulator(8, 4, seed=1, max_points=30)
    other.add(feats, fg, 0)
    assert not np.array_equal(np.sort(other.sample[0]), np.sort(keys))


def test_accumulator_rejects_mismatched_input():
    feats, fg, _ = _random_class()
    acc = RegionAccumulator(8, 2, seed=0)
    with pytest.raises(ValueError, match="channels"):
        acc.add(feats[:, :4], fg, 0)
    acc.add(feats[:2], fg[:2], 0)
    with pytest.raises(ValueError, match="overlap"):
        acc.add(feats[:1], fg[:1], 1)
    with pytest.raises(ValueError, match="grid"):
        acc.add(feats[2:3, :, :4, :4], fg[2:3, :4, :4], 2)


def _sq_inertia(points: np.ndarray, centroids: np.ndarray) -> float:
    d = ((points[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
    return float(d.min(1).sum())


def test_kmeans_is_scikit_learns_on_every_masked_cell(monkeypatch, tmp_path):
    """sdov gen_proto_*.py: KMeans(32, random_state=0, n_init="auto") on all the class's masked cells.

    The default build (ProtoConfig's K-means settings), streamed in small chunks from its spill file,
    clusters the same cells as well as scikit-learn (inertia within 1%), and each centroid is the mean
    of the cells its part labels give it (all cells, not a sample). (Its seeding is scikit-learn's
    draw for draw, pinned on exact data below; on float data, rounding may pick another near-equal
    candidate on another machine, which the inertia bound allows.)
    """
    from sklearn.cluster import KMeans

    monkeypatch.setattr(kmeans_module, "CHUNK_ELEMENTS", 8 * 1000)  # 1000 rows a chunk: several reads of the spill
    cfg = ProtoConfig()
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(6, 8, 24, 24, generator=g) * torch.linspace(0.5, 2.0, 8).view(1, 8, 1, 1) + 3
    fg = (torch.rand(6, 24, 24, generator=g) > 0.3).numpy()  # ~2400 fg cells, ~1000 bg
    out = _stream(
        feats,
        fg,
        ~fg,
        [3, 2, 1],
        k=cfg.k_parts,
        seed=0,
        stuff=False,
        iters=cfg.kmeans_iters,
        max_points=cfg.kmeans_max_points,
        spill_dir=str(tmp_path),
    )
    for group, mask in (("fg", fg), ("bg", ~fg)):
        cells = feats.permute(0, 2, 3, 1)[torch.from_numpy(mask)].numpy()
        ref = KMeans(cfg.k_parts, random_state=0, n_init="auto").fit(cells)
        ours = out[f"{group}/part"]
        assert ours.shape == (32, 8)
        assert abs(_sq_inertia(cells, ours) / ref.inertia_ - 1) < 0.01, group
        labels = out[f"{group}/part_labels"][mask]
        means = np.stack([cells[labels == j].mean(0) for j in range(32)])
        np.testing.assert_allclose(means, ours, atol=2e-2, err_msg=group)


def test_kmeans_plusplus_is_scikit_learns_greedy_seeding():
    """Greedy k-means++ with 2 + ⌊ln k⌋ candidates per centre, drawn from RandomState(seed) as
    scikit-learn draws them, on centred data: the same centres as its `kmeans_plusplus`. Integer points
    with an exact mean keep every distance and sum exact, so no rounding can pick another candidate."""
    from sklearn.cluster import kmeans_plusplus

    x = np.random.default_rng(0).integers(0, 16, (64, 3)).astype(np.float32)
    x[-1] += 64 * x.mean(0).round() - x.sum(0)  # column sums divisible by 64: the mean is exact
    data = kmeans_module.CentredCells(CellStore.of(torch.from_numpy(x)), kmeans_module.KMEANS_TOL)
    for k in (8, 16):
        want, _ = kmeans_plusplus(x - x.mean(0), k, random_state=np.random.RandomState(0))
        np.testing.assert_array_equal(kmeans_module.kmeans_plusplus(data, k, np.random.RandomState(0)).numpy(), want)


def test_kmeans_tolerance_is_scikit_learns_rule():
    """Lloyd stops when the centres' summed squared shift is at most tol × the mean per-feature variance."""
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 7
    data = kmeans_module.CentredCells(CellStore.of(x), 1e-4)
    assert data.tol == pytest.approx(1e-4 * float(x.double().var(0, unbiased=False).mean()), rel=1e-6)


def test_cell_store_reads_back_what_was_appended_in_chunks_and_by_index(monkeypatch, tmp_path):
    monkeypatch.setattr(kmeans_module, "CHUNK_ELEMENTS", 4 * 3)  # 3 rows a chunk
    rows = torch.arange(40, dtype=torch.float32).view(10, 4)
    store = CellStore(4, str(tmp_path))
    for a, b in ((0, 4), (4, 5), (5, 10)):
        store.append(rows[a:b].clone())
    assert len(store) == 10
    got = list(store.chunks())
    assert [first for first, _ in got] == [0, 3, 4, 5, 8] and all(len(x) <= 3 for _, x in got)
    torch.testing.assert_close(torch.cat([x for _, x in got]), rows)
    torch.testing.assert_close(store.take(np.array([9, 0, 4, 6])), rows[[9, 0, 4, 6]])
    store.close()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_features_give_the_fp32_prototypes_to_their_precision(dtype):
    feats, fg, bg = _random_class()
    ref = _stream(feats, fg, bg, [5], k=3, seed=0, stuff=False)
    half = _stream(feats.to(dtype), fg, bg, [5], k=3, seed=0, stuff=False)
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    for name in ("fg/class", "fg/instance", "bg/class", "bg/instance"):
        assert half[name].dtype == np.float32
        np.testing.assert_allclose(half[name], ref[name], atol=tol, err_msg=name)
    # part labels: every masked cell labelled, (nearly always) by its nearest centroid of the half features
    labels = half["fg/part_labels"]
    assert (labels[~fg] == -1).all() and (labels[fg] >= 0).all()
    cells = feats.to(dtype).float().permute(0, 2, 3, 1)[torch.from_numpy(fg)]
    nearest = torch.cdist(cells, torch.from_numpy(half["fg/part"])).argmin(1)
    assert (torch.from_numpy(labels[fg]).long() == nearest).float().mean() > 0.95


def test_an_image_without_foreground_on_the_grid_adds_no_background_either():
    """The authors skip a support image whose fg is empty on a part's grid, its bg included."""
    feats = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    fg = np.zeros((3, 5, 5), bool)
    fg[1:, 1:4, 1:4] = True  # image 0: no foreground cell
    bg = np.ones((3, 5, 5), bool)
    bg[1:, 1:4, 1:4] = False
    out = build_prototypes([(feats, fg, bg)], k=2, seed=0, stuff=False)
    assert out["fg/instance_src"].tolist() == [1, 2] and out["bg/instance_src"].tolist() == [1, 2]
    assert (out["bg/part_labels"][0] == -1).all()  # none of its cells was clustered
    as_tensors = build_prototypes([(feats, torch.from_numpy(fg), torch.from_numpy(bg))], k=2, seed=0, stuff=False)
    assert as_tensors["bg/instance_src"].tolist() == [1, 2]


def test_an_empty_cluster_moves_onto_the_point_farthest_from_its_centre_as_scikit_learn():
    """scikit-learn's `_relocate_empty_clusters`: an empty centre takes the point farthest from its own centre, and
    that point leaves its old cluster's sum and count (the M step then divides)."""
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [4.0, 4.0], [5.0, 4.0], [9.0, 9.0]])
    data = kmeans_module.CentredCells(CellStore.of(points), kmeans_module.KMEANS_TOL)
    centred = points - points.mean(0)
    labels = torch.tensor([0, 0, 1, 1, 1])
    dist = torch.tensor([0.1, 5.0, 0.2, 0.3, 9.0])  # point 4 is the farthest from its centre, then point 1
    sums = torch.stack([centred[:2].sum(0), centred[2:].sum(0), torch.zeros(2)])
    counts = torch.tensor([2.0, 3.0, 0.0])
    kmeans_module.relocate_empty(data, labels, dist, sums, counts)
    torch.testing.assert_close(sums[2], centred[4])
    torch.testing.assert_close(sums[1], centred[2:4].sum(0))
    torch.testing.assert_close(counts, torch.tensor([2.0, 2.0, 1.0]))
    torch.testing.assert_close(sums[0], centred[:2].sum(0))  # a full cluster keeps its points
