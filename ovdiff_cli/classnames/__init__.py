"""Class names of the benchmarks (the eight of the paper, and ADE-847 and PC-459 of `large.py`), as their label maps number them, and the paper's corrections.

The raw lists are mmsegmentation's (`mmseg/datasets/*.py`) and, for COCO-Object, GroupViT's/TCL's
`COCOObjectDataset`: index i of a list is label value i of the converted label maps (after
`reduce_zero_label` where the benchmark uses it). Only ADE's `'bed '` loses mmseg's stray space.

App. C.3 of the paper renames "certain class names to fix errors (pottedplant → potted plant),
resolve ambiguity (mouse → computer mouse) or change to more common spelling/word (aeroplane →
airplane), resulting in 14 fixes" on VOC, Context and Object; it names only those three.
tvmonitor → monitor is the authors' own as well: Table C.9 lists Context's classes as prompted,
"monitor" among them, and their released VOC list (karazijal/sdov, mmdata.py) has "monitor". The
others below are our reading of the same three rules, applied to the names prior work (TCL) feeds
its text encoder; `CORRECTIONS` counts 4 (VOC) + 5 (Context) + 5 (Object) = 14. VOC-20 and
Context-59 share their parent's fixes. ADE, COCO-Stuff and Cityscapes (Table A.8, "following TCL")
keep their names.

The authors' VOC list (mmdata.py) also shortens diningtable to "table", and prompts it so: we do
the same. "table" is a stuff label in COCO-Stuff, so the benchmarks do not take their kinds from our
stuff table (`method/stage2_prototypes/stuff.py`, for user vocabularies) but from the authors' thing/stuff answer
(Table C.9, `IS_STUFF` in mmdata.py), where "table" is a thing: `class_kinds`. That answer covers
VOC, Context and ADE, and calls every COCO-Object class a thing; COCO-Stuff and Cityscapes, which it
does not list, keep our table.

The authors' predict.py also applies, by default, a prompt overlay to every benchmark's names
(`PROMPT_OVERLAY`): six ADE names and "keyboard". It is not one of App. C.3's 14 fixes.
"""

from __future__ import annotations

from .large import ade847_rows, pc459_names, short_names
from .lists import ADE, CITYSCAPES, CONTEXT, OBJECT, STUFF, VOC

RAW_CLASSES: dict[str, tuple[str, ...]] = {
    "voc": VOC,
    "voc20": VOC[1:],
    "context": CONTEXT,
    "context59": CONTEXT[1:],
    "object": OBJECT,
    "ade": ADE,
    "stuff": STUFF,
    "cityscapes": CITYSCAPES,
    "ade847": tuple(name for _, name in ade847_rows()),  # large.py: Mask2Former's synonym sets
    "pc459": pc459_names(),  # large.py: PASCAL Context's labels.txt
}

# Benchmark family -> {raw name: corrected name}. Why each: "error" (words run together),
# "ambiguity" (the name has a more common other sense that diffusion models draw), "spelling/word".
CORRECTIONS: dict[str, dict[str, str]] = {
    "voc": {
        "aeroplane": "airplane",  # word (paper's example)
        "diningtable": "table",  # error (the authors' VOC list)
        "pottedplant": "potted plant",  # error (paper's example)
        "tvmonitor": "monitor",  # error (the authors' VOC list)
    },
    "context": {
        "aeroplane": "airplane",  # word
        "pottedplant": "potted plant",  # error
        "tvmonitor": "monitor",  # error (Table C.9)
        "mouse": "computer mouse",  # ambiguity (paper's example)
        "keyboard": "computer keyboard",  # ambiguity (piano keyboards)
    },
    "object": {
        "mouse": "computer mouse",  # ambiguity
        "keyboard": "computer keyboard",  # ambiguity
        "remote": "remote control",  # ambiguity (an adjective alone)
        "hair drier": "hair dryer",  # spelling
        "tv": "television",  # word (abbreviation)
    },
}

FAMILY = {"voc": "voc", "voc20": "voc", "context": "context", "context59": "context", "object": "object"}

# The authors' prompt overlay (sdov mmdata.py, on unless predict.py's --no-overlay): raw name → prompt.
PROMPT_OVERLAY = {
    "tank": "liquid tank",
    "blind": "window blinds",
    "hood": "cooker hood",
    "ashcan": "wastebin",
    "case": "shop case",
    "keyboard": "computer keyboard",
    "apparel": "clothing",
}

# The names the authors' ChatGPT answer calls stuff (Table C.9; mmdata.py's IS_STUFF), errors and all
# (App. C.6 names glass, blanket and trade name as wrong, yet the runs used them). Their code takes
# every name it does not list as a thing.
AUTHORS_STUFF = frozenset(
    {
        "background",
        "bedclothes",
        "blanket",
        "ceiling",
        "cloth",
        "curtain",
        "fence",
        "floor",
        "glass",
        "grass",
        "ground",
        "lake",
        "mountain",
        "platform",
        "road",
        "rock",
        "sidewalk",
        "sky",
        "snow",
        "step",
        "track",
        "trade name",
        "tray",
        "wall",
        "water",
        "wood",
    }
)
AUTHORS_KINDS = ("voc", "voc20", "context", "context59", "object", "ade")  # the benchmarks their answer covers

KIND_LISTS = {
    "authors": "the authors' (Table C.9, sdov mmdata.py IS_STUFF; unlisted names are things)",
    "table": "ovdiff's stuff table, as for a vocabulary of one's own (the authors list none for these classes)",
}


def class_names(dataset: str, raw: bool = False) -> list[str]:
    """The class names of `dataset` in label order, as prompted: App. C.3's corrections and the
    authors' prompt overlay, unless `raw`."""
    names = list(RAW_CLASSES[dataset])
    if raw:
        return names
    if dataset == "ade847":  # a synonym set is prompted by its first word (large.short_names)
        names = short_names(RAW_CLASSES[dataset])
    fixes = CORRECTIONS.get(FAMILY.get(dataset, ""), {})
    return [PROMPT_OVERLAY.get(n, fixes.get(n, n)) for n in names]


def kind_list(dataset: str) -> str:
    """Which thing/stuff list a benchmark's classes take their kinds from: "authors" or "table"."""
    return "authors" if dataset in AUTHORS_KINDS else "table"


def class_kinds(dataset: str) -> list[str] | None:
    """The authors' kind ("thing"/"stuff") of each class of `dataset`, in label order; None for a
    benchmark they do not list (its classes are classified by the stuff table, as a user's are)."""
    if kind_list(dataset) != "authors":
        return None
    return ["stuff" if n in AUTHORS_STUFF else "thing" for n in RAW_CLASSES[dataset]]


IGNORE_INDEX = 255  # the label value every benchmark's label maps leave unscored (mmsegmentation's ignore_index)
NO_CLASS = -1  # a prediction of no class that, unlike 255, is no class index of a >255-class vocabulary
