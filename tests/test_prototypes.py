"""Prototype aggregation against hand computations; K-means counts, seeding and recovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovdiff_cli.prototypes import build_prototypes, class_prototype, encode_masks, instance_prototypes, kmeans


def _features() -> torch.Tensor:
    """(3 images, D=2, 2x2 grid); channel 0 counts 1..4 along the grid, channel 1 is 10× the image index."""
    f = torch.zeros(3, 2, 2, 2)
    for n in range(3):
        f[n, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        f[n, 1] = 10.0 * n
    return f


def test_eq1_instance_prototypes_and_size_weighted_class_prototype_by_hand():
    masks = torch.tensor([
        [[1, 1], [0, 0]],  # image 0: cells 1, 2 → mean (1.5, 0)
        [[0, 0], [0, 0]],  # image 1: empty → skipped
        [[0, 1], [1, 1]],  # image 2: cells 2, 3, 4 → mean (3, 20)
    ], dtype=torch.bool)  # fmt: skip
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
    thing = build_prototypes(feats, fg, bg, k=3, seed=0, stuff=False)
    assert thing["fg/class"].shape == (1, 6) and thing["fg/instance"].shape == (4, 6) and thing["fg/part"].shape == (3, 6)
    assert thing["bg/instance"].shape == (3, 6) and thing["bg/instance_src"].tolist() == [0, 1, 2]
    assert thing["fg/instance_src"].tolist() == [0, 1, 2, 3]
    assert thing["masks"].dtype == np.uint8 and (thing["masks"] == encode_masks(fg, bg)).all()
    assert set(np.unique(thing["masks"][3])) == {0, 1} and set(np.unique(thing["masks"][0])) == {1, 2}
    labels = thing["fg/part_labels"]
    assert labels.dtype == np.int16 and (labels[~fg] == -1).all() and (labels[fg] >= 0).all() and labels.max() < 3
    # each masked cell's label is its nearest part centroid
    cells = feats.permute(0, 2, 3, 1)[torch.from_numpy(fg)]
    nearest = torch.cdist(cells, torch.from_numpy(thing["fg/part"])).argmin(1)
    assert (torch.from_numpy(labels[fg]).long() == nearest).all()
    assert all(a.dtype == np.float32 for n, a in thing.items() if n.split("/")[-1] in ("class", "instance", "part"))

    stuff = build_prototypes(feats, fg, bg, k=3, seed=0, stuff=True)
    assert not any(n.startswith("bg/") for n in stuff)
    assert (stuff["masks"] == thing["masks"]).all()  # the sheet still shows the background
    for n in ("fg/class", "fg/instance", "fg/part"):
        np.testing.assert_array_equal(stuff[n], thing[n])


def test_empty_regions_give_zero_row_prototypes():
    feats = torch.randn(2, 4, 3, 3)
    out = build_prototypes(feats, np.ones((2, 3, 3), bool), np.zeros((2, 3, 3), bool), k=2, seed=0, stuff=False)
    assert out["bg/class"].shape == (0, 4) and out["bg/part"].shape == (0, 4) and (out["bg/part_labels"] == -1).all()
