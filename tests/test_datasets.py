"""Each reader on a two-image fake tree in its mmsegmentation (or, for ade847 and pc459, detectron2) layout,
plus the real VOC sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import VOC_SAMPLE
from PIL import Image

from ovdiff_cli.classnames import CORRECTIONS, KIND_LISTS, RAW_CLASSES
from ovdiff_cli.errors import OvdiffError
from ovdiff_cli.eval.datasets import DATASET_NAMES, load_dataset
from ovdiff_cli.io.palette import voc_palette

# name: (dataset folder, image path, label path, split file) written out here, independently of the code.
LAYOUTS = {
    "voc": ("VOC2012", "JPEGImages/{id}.jpg", "SegmentationClass/{id}.png", "ImageSets/Segmentation/val.txt"),
    "context": (
        "VOC2010",
        "JPEGImages/{id}.jpg",
        "SegmentationClassContext/{id}.png",
        "ImageSets/SegmentationContext/val.txt",
    ),
    "object": ("coco_stuff164k", "images/val2017/{id}.jpg", "annotations/val2017/{id}_instanceTrainIds.png", None),
    "stuff": ("coco_stuff164k", "images/val2017/{id}.jpg", "annotations/val2017/{id}_labelTrainIds.png", None),
    "ade": ("ADEChallengeData2016", "images/validation/{id}.jpg", "annotations/validation/{id}.png", None),
    "cityscapes": (
        "cityscapes",
        "leftImg8bit/val/{city}/{id}_leftImg8bit.png",
        "gtFine/val/{city}/{id}_gtFine_labelTrainIds.png",
        None,
    ),
}
LAYOUTS["ade847"] = (
    "ADE20K_2021_17_01",
    "images_detectron2/validation/{id}.jpg",
    "annotations_detectron2/validation/{id}.tif",
    None,
)
LAYOUTS["pc459"] = ("VOC2010", "JPEGImages/{id}.jpg", "annotations_detectron2/pc459_val/{id}.tif", None)
WIDE = {"ade847", "pc459"}  # 16-bit TIFF label maps, 65535 = ignore
LAYOUTS["voc20"] = LAYOUTS["voc"]
LAYOUTS["context59"] = LAYOUTS["context"]

IDS = {
    "voc": ["2007_000033", "2007_000042"],
    "context": ["2008_000002", "2008_000019"],
    "object": ["000000000139", "000000000285"],
    "stuff": ["000000000139", "000000000285"],
    "ade": ["ADE_val_00000001", "ADE_val_00000002"],
    "cityscapes": ["frankfurt_000000_000294", "lindau_000000_000019"],
    "ade847": ["ADE_frame_00000007", "ADE_val_00000001"],
    "pc459": ["2008_000002", "2008_000019"],
}
IDS["voc20"], IDS["context59"] = IDS["voc"], IDS["context"]

# Raw label values written to disk, and the class indices the reader must return for them.
RAW_VALUES = {
    "voc": ([0, 5, 20, 255], [0, 5, 20, 255]),
    "voc20": ([0, 1, 20, 255], [255, 0, 19, 255]),
    "context": ([0, 1, 59, 30], [0, 1, 59, 30]),
    "context59": ([0, 1, 59, 30], [255, 0, 58, 29]),
    "object": ([0, 1, 80, 255], [0, 1, 80, 255]),
    "ade": ([0, 1, 150, 75], [255, 0, 149, 74]),
    "stuff": ([0, 170, 91, 255], [0, 170, 91, 255]),
    "cityscapes": ([0, 18, 7, 255], [0, 18, 7, 255]),
    "ade847": ([0, 846, 300, 65535], [0, 846, 300, 65535]),  # no reduce_zero_label: 0 is "wall"
    "pc459": ([0, 458, 255, 65535], [0, 458, 255, 65535]),  # 255 is a class here ("shell"), not ignore
}
NUM_CLASSES = {
    "voc": 21,
    "voc20": 20,
    "context": 60,
    "context59": 59,
    "object": 81,
    "ade": 150,
    "stuff": 171,
    "cityscapes": 19,
    "ade847": 847,
    "pc459": 459,
}
BACKGROUND = {"voc", "context", "object"}


def _save_label(path: Path, arr: np.ndarray, palette: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":  # detectron2's 16-bit label maps (mode I;16)
        Image.fromarray(arr.astype(np.uint16)).save(path)
        return
    im = Image.fromarray(arr.astype(np.uint8))  # mode L: values are labels
    if palette:  # VOC ships palette PNGs: the palette index is the label
        im = Image.frombytes("P", im.size, im.tobytes())
        im.putpalette(voc_palette().ravel().tolist())
    im.save(path)


def make_tree(base: Path, name: str, extra_unlisted: bool = True) -> tuple[Path, dict[str, np.ndarray]]:
    """Write a 2-image fake dataset under base/<folder>; return that folder and the expected labels."""
    folder, img_t, lbl_t, split = LAYOUTS[name]
    root = base / folder
    raw_vals, want_vals = RAW_VALUES[name]
    expected = {}
    for k, i in enumerate(IDS[name]):
        city = i.split("_")[0]
        h, w = 6 + k, 8
        dtype = np.uint16 if name in WIDE else np.uint8
        raw = np.array(raw_vals, dtype=dtype)[np.arange(h * w).reshape(h, w) % 4]
        expected[i] = np.array(want_vals, dtype=dtype)[np.arange(h * w).reshape(h, w) % 4]
        img = root / img_t.format(id=i, city=city)
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 40 * k, dtype=np.uint8)).save(img)
        _save_label(root / lbl_t.format(id=i, city=city), raw, palette=name in ("voc", "voc20"))
    if split:
        (root / split).parent.mkdir(parents=True, exist_ok=True)
        (root / split).write_text("\n".join(IDS[name]) + "\n")
    if extra_unlisted and (split or name == "pc459"):  # an image outside the split must not be read
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / img_t.format(id="2099_999999", city=""))
    return root, expected


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_reader_on_fake_tree(tmp_path, name):
    root, expected = make_tree(tmp_path, name)
    ds = load_dataset(name, root)
    assert ds.name == name and len(ds) == 2
    assert len(ds.classes) == NUM_CLASSES[name] == ds.num_classes
    assert ds.ignore_index == (65535 if name in WIDE else 255)
    assert ds.has_background == (name in BACKGROUND)
    assert (ds.classes[0] == "background") == ds.has_background
    items = list(ds)
    assert [it.id for it in items] == IDS[name]
    for it in items:
        assert it.label.dtype == (np.uint16 if name in WIDE else np.uint8) and it.label.ndim == 2
        np.testing.assert_array_equal(it.label, expected[it.id])
        assert it.image_path.is_file()
        assert it.image().shape == (*it.label.shape, 3)
    assert len(load_dataset(name, root, limit=1)) == 1


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_reader_accepts_parent_folder(tmp_path, name):
    root, _ = make_tree(tmp_path, name)
    assert load_dataset(name, tmp_path).root == root


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_wrong_layout_names_missing_path(tmp_path, name):
    root, _ = make_tree(tmp_path, name)
    label_dir = root / LAYOUTS[name][2].split("/{")[0]
    label_dir.rename(label_dir.with_name(label_dir.name + "_moved"))
    with pytest.raises(OvdiffError) as err:
        load_dataset(name, root)
    msg = str(err.value)
    assert "\n" not in msg and str(label_dir) in msg and "expected" in msg


@pytest.mark.parametrize("name", ["voc", "context"])
def test_missing_split_file(tmp_path, name):
    root, _ = make_tree(tmp_path, name)
    split = root / LAYOUTS[name][3]
    split.unlink()
    with pytest.raises(OvdiffError, match=str(split)):
        load_dataset(name, root)


def test_missing_label_file_is_named(tmp_path):
    root, _ = make_tree(tmp_path, "stuff")
    gone = root / "annotations/val2017/000000000285_labelTrainIds.png"
    gone.unlink()
    with pytest.raises(OvdiffError, match=str(gone)):
        load_dataset("stuff", root)


def test_wrong_label_kind_is_caught(tmp_path):
    root, _ = make_tree(tmp_path, "cityscapes")
    lbl = root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelTrainIds.png"
    _save_label(lbl, np.full((7, 8), 33, np.uint8), palette=False)  # a labelIds map, not trainIds
    ds = load_dataset("cityscapes", root)
    with pytest.raises(OvdiffError, match="labelTrainIds"):
        list(ds)


def test_ambiguous_parent_is_an_error(tmp_path):
    make_tree(tmp_path, "voc")
    make_tree(tmp_path / "VOCdevkit", "voc")
    with pytest.raises(OvdiffError, match="candidates"):
        load_dataset("voc", tmp_path)


def test_root_not_a_folder(tmp_path):
    with pytest.raises(OvdiffError, match="not a folder"):
        load_dataset("ade", tmp_path / "nope")
    with pytest.raises(OvdiffError, match="unknown dataset"):
        load_dataset("kitti", tmp_path)


def test_corrected_and_raw_names(tmp_path):
    root, _ = make_tree(tmp_path, "voc")
    fixed = load_dataset("voc", root).classes
    raw = load_dataset("voc", root, raw_names=True).classes
    assert raw == list(RAW_CLASSES["voc"])
    assert "potted plant" in fixed and "airplane" in fixed and "pottedplant" not in fixed
    assert sum(len(v) for v in CORRECTIONS.values()) == 14  # App. C.3: "resulting in 14 fixes"
    root, _ = make_tree(tmp_path, "context59")
    assert "computer mouse" in load_dataset("context59", root).classes


def test_benchmark_kinds_are_the_authors_and_custom_classes_take_the_table(tmp_path):
    root, _ = make_tree(tmp_path, "context")
    kinds = load_dataset("context", root).kinds()
    assert "background" not in kinds and len(kinds) == 59
    assert (kinds["door"], kinds["tree"], kinds["wall"], kinds["table"]) == ("thing", "thing", "stuff", "thing")
    assert load_dataset("context", root).kinds_record()["stuff"][:3] == ["bedclothes", "ceiling", "cloth"]
    custom = load_dataset("context", root, custom_classes=["door", "wall"])
    assert custom.kinds() is None and custom.kinds_record() == {"list": KIND_LISTS["table"], "stuff": None}


@pytest.mark.skipif(not VOC_SAMPLE.is_dir(), reason="shared VOC sample not present")
def test_real_voc_sample():
    ds = load_dataset("voc", VOC_SAMPLE)
    assert len(ds) == 1
    item = ds[0]
    assert item.id == "2007_000063"
    assert item.label.shape == (375, 500)
    assert set(np.unique(item.label).tolist()) == {0, 9, 12, 255}
    assert ds.classes[9] == "chair" and ds.classes[12] == "dog"
    assert item.image().shape == (375, 500, 3)
    voc20 = load_dataset("voc20", VOC_SAMPLE.parent)  # parent folder accepted
    lab = voc20[0].label
    assert set(np.unique(lab).tolist()) == {8, 11, 255}
    assert voc20.classes[8] == "chair" and voc20.classes[11] == "dog"
    np.testing.assert_array_equal(lab == 255, (item.label == 0) | (item.label == 255))


def test_images_read_as_stored_without_exif_rotation(tmp_path):
    root, _ = make_tree(tmp_path, "ade")
    path = root / "images/validation/ADE_val_00000001.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(path, exif=exif)
    item = load_dataset("ade", root)[0]
    assert item.image().shape == (6, 8, 3) == (*item.label.shape, 3)


def test_large_vocabulary_lists_and_prompts(tmp_path):
    ade_raw, pc_raw = RAW_CLASSES["ade847"], RAW_CLASSES["pc459"]
    assert len(ade_raw) == len(set(ade_raw)) == 847 and len(pc_raw) == len(set(pc_raw)) == 459
    # Mask2Former's order: label 0 wall, 1 building, 846 the last; PC-459's labels.txt: 0 accordion, 458 wool
    assert ade_raw[:2] == ("wall", "building, edifice") and pc_raw[0] == "accordion" and pc_raw[-1] == "wool"
    root, _ = make_tree(tmp_path, "ade847")
    ds = load_dataset("ade847", root)
    assert len(set(ds.classes)) == 847  # one prompt per class, no two alike
    assert ds.classes[:2] == ["wall", "building"] and "pot (flowerpot)" in ds.classes and "pot" in ds.classes
    assert load_dataset("ade847", root, raw_names=True).classes[1] == "building, edifice"
    assert ds.kinds() is None and ds.kinds_record()["list"] == KIND_LISTS["table"]  # no authors' list


def test_large_label_beyond_the_classes_is_caught(tmp_path):
    root, _ = make_tree(tmp_path, "pc459")
    _save_label(root / "annotations_detectron2/pc459_val/2008_000019.tif", np.full((7, 8), 459, np.uint16), False)
    ds = load_dataset("pc459", root)
    with pytest.raises(OvdiffError, match="459 classes"):
        list(ds)


def test_large_ignore_is_not_scored(tmp_path):
    """65535 is dropped from the confusion matrix; 255, a class of PC-459, is scored."""
    from ovdiff_cli.eval.evaluate import evaluate

    root, expected = make_tree(tmp_path, "pc459")
    ds = load_dataset("pc459", root)
    result = evaluate(ds, lambda image, info: np.full(image.shape[:2], 255, np.int64), keep=0)
    labelled = sum(int((e != 65535).sum()) for e in expected.values())
    assert int(result.confusion.sum()) == labelled
    assert result.per_class_iou[255] > 0 and np.isnan(result.per_class_iou[1])
