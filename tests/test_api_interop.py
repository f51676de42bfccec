"""The API in the shapes people already use: names as a vocabulary, batches and iterators of images,
Hugging Face-style segments, and the supervision / FiftyOne / COCO adapters."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovdiff
from ovdiff_cli.errors import MissingClasses, MissingLibrary, OvdiffError, RemoteInput

NAMES = ["kite", "ball", "sky", "grass"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return ovdiff.Pipeline(
        preset="procedural", cache=tmp_path_factory.mktemp("interop") / "cache", device="cpu", dtype="fp32"
    )


@pytest.fixture(scope="module")
def result(pipe):
    return pipe.segment(ovdiff.procedural_scene(seed=4), NAMES)


def test_a_list_of_names_is_a_vocabulary_everywhere(pipe, result):
    image = ovdiff.procedural_scene(seed=4)
    vocab = pipe.vocabulary(NAMES)
    assert result.class_names == NAMES and np.array_equal(result.labels, pipe.segment(image, vocab).labels)
    assert np.array_equal(pipe.encode(image).match(tuple(NAMES)).labels, result.labels)
    assert pipe.as_vocabulary(NAMES) is pipe.as_vocabulary(list(NAMES))  # read from the cache once per pipeline
    with pytest.raises(OvdiffError, match="list of class names"):
        pipe.segment(image, "kite,sky")


def test_a_list_is_a_batch_and_an_iterator_is_streamed(pipe, tmp_path):
    from PIL import Image

    scenes = [ovdiff.procedural_scene(seed=s) for s in (1, 2, 3)]
    Image.fromarray(scenes[1]).save(tmp_path / "b.png")
    one_by_one = [pipe.segment(s, NAMES).labels for s in scenes]
    batch = pipe.segment([scenes[0], tmp_path / "b.png", str(tmp_path / "b.png"), Image.fromarray(scenes[2])], NAMES)
    assert isinstance(batch, list) and len(batch) == 4
    for r, expect in zip(batch, [one_by_one[0], one_by_one[1], one_by_one[1], one_by_one[2]], strict=True):
        assert np.array_equal(r.labels, expect)
    read: list[int] = []

    def paths():
        for s in (0, 2):
            read.append(s)
            yield scenes[s]

    stream = pipe.segment(paths(), NAMES)
    assert isinstance(stream, Iterator) and read == []  # lazy: nothing read before the first result is asked for
    assert [r.labels.tolist() for r in stream] == [one_by_one[0].tolist(), one_by_one[2].tolist()]


def test_urls_are_refused_with_one_typed_error(pipe):
    with pytest.raises(RemoteInput, match="download it first"):
        pipe.segment("https://example.com/cat.jpg", NAMES)


def test_segments_carry_label_mask_and_mean_winning_score(result):
    segs = result.segments
    assert [s["label"] for s in segs] == [result.names[k] for k in np.unique(result.labels)]
    assert sum(s["mask"].sum() for s in segs) == result.labels.size
    h, w = result.labels.shape
    up = F.interpolate(torch.from_numpy(result.scores)[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    won = up.max(0).values.double().numpy()
    for s in segs:
        k = result.class_names.index(s["label"]) + 1 if s["label"] != "background" else 0
        assert np.array_equal(s["mask"], result.labels == k)
        assert s["score"] == pytest.approx(won[s["mask"]].mean(), abs=1e-5)
    assert len({round(s["score"], 4) for s in segs}) > 1  # real per-segment scores, not a constant


def test_to_supervision_gives_detections_with_masks_ids_and_names(result):
    pytest.importorskip("supervision")
    det = result.to_supervision()
    present = [k for k in np.unique(result.labels) if k > 0]
    assert det.class_id.tolist() == present and len(det) == len(present)
    assert det.data["class_name"].tolist() == [result.class_names[k - 1] for k in present]
    by_name = {s["label"]: s for s in result.segments}
    for i, k in enumerate(present):
        mask = result.labels == k
        assert np.array_equal(det.mask[i], mask)
        assert det.confidence[i] == pytest.approx(by_name[result.class_names[k - 1]]["score"], abs=1e-6)
        ys, xs = np.nonzero(mask)
        assert det.xyxy[i].tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]


def test_to_fiftyone_gives_a_segmentation_and_its_mask_targets(result, monkeypatch):
    """fiftyone cannot be installed here (it would change the venv's OpenCV and needs MongoDB), so a
    minimal module with its `Segmentation(mask=...)` constructor stands in for it."""
    fake = types.ModuleType("fiftyone")

    class Segmentation:
        def __init__(self, mask=None):
            self.mask = mask

    fake.Segmentation = Segmentation
    monkeypatch.setitem(sys.modules, "fiftyone", fake)
    seg, targets = result.to_fiftyone()
    assert isinstance(seg, Segmentation) and seg.mask.dtype == np.uint8 and np.array_equal(seg.mask, result.labels)
    assert targets == {0: "background", **{k + 1: n for k, n in enumerate(NAMES)}}


def test_a_missing_optional_library_is_one_clear_error(result, monkeypatch):
    monkeypatch.setitem(sys.modules, "fiftyone", None)  # import fails as when it is not installed
    with pytest.raises(
        MissingLibrary, match=r"to_fiftyone\(\) needs the optional package fiftyone: pip install fiftyone"
    ):
        result.to_fiftyone()
    monkeypatch.setitem(sys.modules, "supervision", None)
    with pytest.raises(MissingLibrary, match="pip install supervision"):
        result.to_supervision()


def test_to_coco_records_decode_with_pycocotools(result):
    from pycocotools import mask as cocomask

    records = result.to_coco(image_id=7)
    by_name = {s["label"]: s for s in result.segments}
    assert [r["category_id"] for r in records] == [k for k in np.unique(result.labels) if k > 0]
    for r in records:
        rle = dict(r["segmentation"], counts=r["segmentation"]["counts"].encode())
        assert r["image_id"] == 7 and np.array_equal(cocomask.decode(rle), result.labels == r["category_id"])
        assert r["area"] == int(cocomask.area(rle))
        assert r["score"] == pytest.approx(by_name[result.class_names[r["category_id"] - 1]]["score"], abs=1e-6)


def test_build_false_names_the_call_and_the_command_that_build(pipe):
    with pytest.raises(MissingClasses) as e:
        pipe.vocabulary(["zebra"], build=False)
    assert "ovdiff.Pipeline(preset='procedural', seed=0).vocabulary(['zebra'])" in str(e.value)
    assert "ovdiff protos add 'zebra' --preset procedural --seed 0" in str(e.value)


def test_names_differing_only_in_case_are_one_clear_error(pipe):
    with pytest.raises(OvdiffError, match="'kite' and 'Kite' differ only in case"):
        pipe.segment(ovdiff.procedural_scene(seed=1), ["kite", "Kite"])


def test_the_cli_phrases_a_missing_class_once_in_its_own_words(pipe):
    from ovdiff_cli.cli.common import phrase

    with pytest.raises(MissingClasses) as e:
        pipe.vocabulary(["zebra"], build=False)
    line = phrase(e.value)
    assert line.count("build them with") == 1 and "ovdiff protos add zebra --seed 0 --preset procedural" in line
    assert "ovdiff.Pipeline(" not in line
