"""Readers for the eight benchmarks, in the folder layouts that mmsegmentation's data preparation makes,
and for the two large-vocabulary ones in detectron2's (as SAN, CAT-Seg and ODISE prepare them).

Every reader yields the ground truth in *dataset class-index space* — label i is `classes[i]`, the
dataset's `ignore_index` (255; 65535 for ade847 and pc459) is ignored — after the benchmark's own conversion (`reduce_zero_label` for VOC-20, Context-59 and ADE),
so that metrics never need to know which benchmark they score. Layouts (relative to `--root`):

    voc, voc20        VOC2012/  JPEGImages/*.jpg  SegmentationClass/*.png  ImageSets/Segmentation/val.txt
    context, context59 VOC2010/ JPEGImages/*.jpg  SegmentationClassContext/*.png
                                ImageSets/SegmentationContext/val.txt
    object            coco_stuff164k/ images/val2017/*.jpg  annotations/val2017/*_instanceTrainIds.png
    stuff             coco_stuff164k/ images/val2017/*.jpg  annotations/val2017/*_labelTrainIds.png
    ade               ADEChallengeData2016/ images/validation/*.jpg  annotations/validation/*.png
    cityscapes        cityscapes/ leftImg8bit/val/<city>/*_leftImg8bit.png
                                  gtFine/val/<city>/*_gtFine_labelTrainIds.png
    ade847            ADE20K_2021_17_01/ images_detectron2/validation/*.jpg
                                  annotations_detectron2/validation/*.tif   (uint16, 65535 = ignore)
    pc459             VOC2010/ JPEGImages/*.jpg  annotations_detectron2/pc459_val/*.tif   (uint16, LabelMap-1,
                                  65535 = ignore; the split is the label maps there: the 5,105 val images)

`--root` may also name a folder holding the dataset folder (e.g. `VOCdevkit/` or `data/`) when only
one candidate is there. Images are read as stored: EXIF orientation is not applied, as in mmseg.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..classnames import IGNORE_INDEX, KIND_LISTS, class_kinds, class_names
from ..errors import InvalidSetting, OvdiffError


@dataclass(frozen=True)
class Layout:
    """Where a benchmark's files lie under its root folder."""

    folder: str  # the dataset folder's usual name, e.g. "VOC2012"
    parents: tuple[str, ...]  # where that folder may sit below a parent given as --root
    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    split_file: str | None  # ids listed one per line; None: every image under image_dir, sorted
    per_city: bool = False  # Cityscapes keeps one subfolder per city
    by_labels: bool = False  # the split is the label maps present (image_dir holds every split's images)
    hint: str = ""  # how to make the layout, for the error message


@dataclass(frozen=True)
class Spec:
    """One benchmark: its layout and how its label values become class indices."""

    name: str
    title: str
    layout: Layout
    has_background: bool  # classes[0] is "background"
    reduce_zero_label: bool  # label 0 is ignored and the others shift down by one (mmseg)
    ignore_index: int = IGNORE_INDEX  # the label value of unlabelled pixels


_VOC = Layout(
    "VOC2012",
    ("VOC2012", "VOCdevkit/VOC2012"),
    "JPEGImages",
    "SegmentationClass",
    ".jpg",
    ".png",
    "ImageSets/Segmentation/val.txt",
)
_CONTEXT = Layout(
    "VOC2010",
    ("VOC2010", "VOCdevkit/VOC2010"),
    "JPEGImages",
    "SegmentationClassContext",
    ".jpg",
    ".png",
    "ImageSets/SegmentationContext/val.txt",
    hint="; make it with mmsegmentation's tools/dataset_converters/pascal_context.py",
)
_COCO_PARENTS = ("coco_stuff164k", "coco")
_OBJECT = Layout(
    "coco_stuff164k",
    _COCO_PARENTS,
    "images/val2017",
    "annotations/val2017",
    ".jpg",
    "_instanceTrainIds.png",
    None,
    hint="; make the label maps with GroupViT's convert_dataset/convert_coco_object.py",
)
_STUFF = Layout(
    "coco_stuff164k",
    _COCO_PARENTS,
    "images/val2017",
    "annotations/val2017",
    ".jpg",
    "_labelTrainIds.png",
    None,
    hint="; make the label maps with mmsegmentation's tools/dataset_converters/coco_stuff164k.py",
)
_ADE = Layout(
    "ADEChallengeData2016",
    ("ADEChallengeData2016", "ade/ADEChallengeData2016"),
    "images/validation",
    "annotations/validation",
    ".jpg",
    ".png",
    None,
)
_CITYSCAPES = Layout(
    "cityscapes",
    ("cityscapes",),
    "leftImg8bit/val",
    "gtFine/val",
    "_leftImg8bit.png",
    "_gtFine_labelTrainIds.png",
    None,
    per_city=True,
    hint="; make the label maps with mmsegmentation's tools/dataset_converters/cityscapes.py",
)

_D2_HINT = "; make it with a detectron2 prepare script (Mask2Former's datasets/prepare_{}.py): uint16 .tif label maps"
_ADE847 = Layout(
    "ADE20K_2021_17_01",
    ("ADE20K_2021_17_01", "ade/ADE20K_2021_17_01"),
    "images_detectron2/validation",
    "annotations_detectron2/validation",
    ".jpg",
    ".tif",
    None,
    hint=_D2_HINT.format("ade20k_full_sem_seg"),
)
_PC459 = Layout(
    "VOC2010",
    ("VOC2010", "VOCdevkit/VOC2010"),
    "JPEGImages",
    "annotations_detectron2/pc459_val",
    ".jpg",
    ".tif",
    None,
    by_labels=True,
    hint="; make it with CAT-Seg's datasets/prepare_pascal_context_459.py: uint16 .tif label maps (LabelMap - 1)",
)
WIDE_IGNORE = 65535  # detectron2's ignore value in 16-bit label maps

SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("voc", "PASCAL VOC 2012 (21 classes)", _VOC, True, False),
        Spec("voc20", "PASCAL VOC 2012 without background (VOC-20)", _VOC, False, True),
        Spec("context", "Pascal Context (60 classes)", _CONTEXT, True, False),
        Spec("context59", "Pascal Context without background (Context-59)", _CONTEXT, False, True),
        Spec("object", "COCO-Object (81 classes)", _OBJECT, True, False),
        Spec("ade", "ADE20K (ADE-150)", _ADE, False, True),
        Spec("stuff", "COCO-Stuff-164k (171 classes)", _STUFF, False, False),
        Spec("cityscapes", "Cityscapes (19 classes)", _CITYSCAPES, False, False),
        Spec("ade847", "ADE20K-full (A-847)", _ADE847, False, False, WIDE_IGNORE),
        Spec("pc459", "PASCAL Context full (PC-459)", _PC459, False, False, WIDE_IGNORE),
    )
}
DATASET_NAMES = tuple(SPECS)


@dataclass(frozen=True)
class ItemInfo:
    """One image of a split: what a predictor may know about it besides the pixels."""

    id: str  # file stem without suffixes, e.g. "2007_000033"; predictions are saved as <id>.png
    image_path: Path
    label_path: Path


@dataclass
class Item:
    """An image of the split with its ground truth: label (H,W) class indices (uint8 with 255 = ignore;
    uint16 with 65535 = ignore for ade847 and pc459)."""

    info: ItemInfo
    label: np.ndarray

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def image_path(self) -> Path:
        return self.info.image_path

    def image(self) -> np.ndarray:
        return load_image(self.info.image_path)


def load_image(path: Path | str) -> np.ndarray:
    """HxWx3 uint8 RGB as stored (no EXIF rotation: dataset labels match the stored pixels)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise OvdiffError(f"cannot read image {path}: {e}") from e


def read_index_png(path: Path | str) -> np.ndarray:
    """(H,W) label values of a single-channel or palette PNG (a palette index is the label), or of a
    16-bit TIFF (detectron2's label maps of ade847 and pc459)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA"):
                raise OvdiffError(f"label map {path} is an RGB image: expected a single-channel or palette PNG")
            arr = np.asarray(im)
    except OSError as e:
        raise OvdiffError(f"cannot read label map {path}: {e}") from e
    if arr.ndim != 2:
        raise OvdiffError(f"label map {path} has shape {arr.shape}: expected one channel")
    return arr


class SegDataset:
    """The validation split of one benchmark under `root`; iterating loads each item's label map.

    `classes` are the paper's corrected names (App. C.3) unless `raw_names`; `limit` keeps the first
    `limit` images in split order (the order of the split file, or sorted file names).
    """

    def __init__(
        self,
        name: str,
        root: Path | str,
        limit: int | None = None,
        raw_names: bool = False,
        custom_classes: list[str] | None = None,
    ):
        if name not in SPECS:
            raise OvdiffError(f"unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)}")
        if limit is not None:
            from ..limits import in_range

            in_range("limit", limit)
        self.spec = SPECS[name]
        self.name = name
        self.has_background = self.spec.has_background
        self.title = self.spec.title
        self.custom = custom_classes is not None  # not the benchmark's own classes: no paper number applies
        self.raw_names = raw_names
        if custom_classes is None:
            self.classes = class_names(name, raw=raw_names)
        else:  # a custom dataset in this benchmark's layout: label k names custom_classes[k-1] (or [k])
            self.classes = (["background"] if self.has_background else []) + list(custom_classes)
            self.title = f"{len(self.classes)} classes of your own, in the {name} layout"
        self.root = resolve_root(self.spec, Path(root).expanduser())
        self.infos = _list_items(self.spec, self.root, limit)
        self._by_id = {info.id: info for info in self.infos}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ignore_index(self) -> int:
        """The ground truth's unlabelled value: 255, or 65535 for the 16-bit label maps of ade847 and pc459."""
        return self.spec.ignore_index

    def __len__(self) -> int:
        return len(self.infos)

    def __iter__(self) -> Iterator[Item]:
        for info in self.infos:
            yield self.load(info)

    def __getitem__(self, key: int | str) -> Item:
        info = self._by_id[key] if isinstance(key, str) else self.infos[key]
        return self.load(info)

    def load(self, info: ItemInfo) -> Item:
        return Item(info, self.load_label(info.label_path))

    def load_label(self, path: Path) -> np.ndarray:
        """(H,W) class indices with `ignore_index` = ignore, after the benchmark's conversion."""
        raw = read_index_png(path)
        ignore = self.ignore_index
        if raw.dtype.kind not in "ui" or (raw.size and (raw.min() < 0 or raw.max() > ignore)):
            raise OvdiffError(f"label map {path} has values outside 0..{ignore}: not a {self.name} label map")
        label = raw.astype(np.uint8 if ignore == IGNORE_INDEX else np.uint16)
        if self.spec.reduce_zero_label:  # mmseg: 0 -> 255, k -> k-1, 255 stays 255
            label = label - np.uint8(1)  # wraps 0 to 255
            label[label == 254] = IGNORE_INDEX
        bad = (label >= self.num_classes) & (label != ignore)
        if bad.any():
            raise OvdiffError(
                f"label map {path} has value {int(label[bad].max())}, but {self.name} has {self.num_classes} "
                f"classes: expected the {self.spec.layout.label_suffix} label maps of its layout{self.spec.layout.hint}"
            )
        return label

    def kinds(self) -> dict[str, str] | None:
        """Thing/stuff of each named class (background excluded) as the authors list it; None where they
        list none (COCO-Stuff, Cityscapes, classes of one's own): the stuff table classifies those."""
        kinds = None if self.custom else class_kinds(self.name)
        if kinds is None:
            return None
        first = 1 if self.has_background else 0
        return dict(zip(self.classes[first:], kinds[first:], strict=True))

    def kinds_record(self) -> dict:
        """Which thing/stuff list a run on this dataset uses, and the classes it calls stuff (None: the table decides)."""
        kinds = self.kinds()
        return {
            "list": KIND_LISTS["table" if kinds is None else "authors"],
            "stuff": None if kinds is None else [n for n, k in kinds.items() if k == "stuff"],
        }

    def __repr__(self) -> str:
        return f"SegDataset({self.name!r}, root={str(self.root)!r}, n={len(self)})"


def load_dataset(
    name: str,
    root: Path | str,
    limit: int | None = None,
    raw_names: bool = False,
    custom_classes: list[str] | None = None,
) -> SegDataset:
    """The reader for benchmark `name` (one of DATASET_NAMES) on the dataset folder `root`.

    `custom_classes` replaces the benchmark's class list for a dataset of your own in its layout
    (background, where the benchmark has one, stays label 0).
    """
    return SegDataset(name, root, limit=limit, raw_names=raw_names, custom_classes=custom_classes)


def _expected(spec: Spec) -> str:
    lay = spec.layout
    parts = [lay.image_dir + "/", lay.label_dir + "/"] + ([lay.split_file] if lay.split_file else [])
    kind = "detectron2" if spec.ignore_index != IGNORE_INDEX else "mmsegmentation"
    return f"expected the dataset folder {lay.folder}/ holding {', '.join(parts)} ({kind} layout{lay.hint})"


def resolve_root(spec: Spec, root: Path) -> Path:
    """The dataset folder: `root` itself, or the one candidate below it (e.g. VOCdevkit/VOC2012)."""
    if not root.is_dir():
        raise InvalidSetting("root", f"{root} is not a folder ({spec.name}); {_expected(spec)}")
    lay = spec.layout

    def looks_right(p: Path) -> bool:
        return (p / lay.image_dir).is_dir() or (p / lay.label_dir).is_dir()

    if not looks_right(root):
        found = [root / sub for sub in lay.parents if looks_right(root / sub)]
        if len(found) > 1:
            raise InvalidSetting(
                "root",
                f"{root} holds {len(found)} {spec.name} candidates "
                f"({', '.join(str(f) for f in found)}): give one of them",
            )
        if found:
            root = found[0]
    for rel in (lay.image_dir, lay.label_dir):
        if not (root / rel).is_dir():
            raise OvdiffError(f"{spec.name}: folder {root / rel} not found; {_expected(spec)}")
    if lay.split_file and not (root / lay.split_file).is_file():
        raise OvdiffError(f"{spec.name}: split file {root / lay.split_file} not found; {_expected(spec)}")
    return root


def _read_split(spec: Spec, path: Path) -> str:
    """The split file's text (image ids, one a line), or one line saying why it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise OvdiffError(
            f"{spec.name}: split file {path} is not text (byte {e.start} is not UTF-8); it lists image ids, one a line"
        ) from None
    except OSError as e:
        raise OvdiffError(f"{spec.name}: cannot read split file {path}: {e.strerror}") from None
    if "\x00" in text:
        raise OvdiffError(
            f"{spec.name}: split file {path} is not text (it holds NUL bytes); it lists image ids, one a line"
        )
    return text


def _list_items(spec: Spec, root: Path, limit: int | None) -> list[ItemInfo]:
    lay = spec.layout
    img_dir, lbl_dir = root / lay.image_dir, root / lay.label_dir
    infos: list[ItemInfo] = []
    if lay.split_file:
        ids = [ln.strip() for ln in _read_split(spec, root / lay.split_file).splitlines() if ln.strip()]
        infos = [ItemInfo(i, img_dir / f"{i}{lay.image_suffix}", lbl_dir / f"{i}{lay.label_suffix}") for i in ids]
    elif lay.by_labels:  # pc459: the label maps name the split; every image of VOC2010 lies in image_dir
        pattern = f"*{lay.label_suffix}"
        for lbl in sorted(lbl_dir.glob(pattern)):
            stem = lbl.name[: -len(lay.label_suffix)]
            infos.append(ItemInfo(stem, img_dir / f"{stem}{lay.image_suffix}", lbl))
        if not infos:
            raise OvdiffError(f"{spec.name}: no label maps in {lbl_dir / pattern}; {_expected(spec)}")
    else:
        pattern = f"*/*{lay.image_suffix}" if lay.per_city else f"*{lay.image_suffix}"
        for img in sorted(img_dir.glob(pattern)):
            stem = img.name[: -len(lay.image_suffix)]
            sub = img.parent.relative_to(img_dir)
            infos.append(ItemInfo(stem, img, lbl_dir / sub / f"{stem}{lay.label_suffix}"))
    if not infos:
        where = root / lay.split_file if lay.split_file else img_dir / pattern
        raise OvdiffError(f"{spec.name}: no images listed in {where}; {_expected(spec)}")
    infos = infos[:limit] if limit else infos
    for kind, attr in (("image", "image_path"), ("label map", "label_path")):
        missing = [getattr(i, attr) for i in infos if not getattr(i, attr).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise OvdiffError(f"{spec.name}: {kind} {missing[0]} not found{more}; {_expected(spec)}")
    return infos
