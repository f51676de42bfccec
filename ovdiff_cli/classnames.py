"""Class names of the eight benchmarks, as their label maps number them, and the paper's corrections.

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
stuff table (`method/stuff.py`, for user vocabularies) but from the authors' thing/stuff answer
(Table C.9, `IS_STUFF` in mmdata.py), where "table" is a thing: `class_kinds`. That answer covers
VOC, Context and ADE, and calls every COCO-Object class a thing; COCO-Stuff and Cityscapes, which it
does not list, keep our table.

The authors' predict.py also applies, by default, a prompt overlay to every benchmark's names
(`PROMPT_OVERLAY`): six ADE names and "keyboard". It is not one of App. C.3's 14 fixes.
"""

from __future__ import annotations

VOC = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# mmseg's PascalContextDataset (60): background + the 59 classes in alphabetical order, as
# tools/dataset_converters/pascal_context.py numbers them.
CONTEXT = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant",
    "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track",
    "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip

COCO_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

COCO_STUFF_ONLY = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone",
    "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass",
    "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic",
    "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

OBJECT = ("background", *COCO_THINGS)  # GroupViT's convert_coco_object.py: 0 = every stuff/unlabelled pixel
STUFF = COCO_THINGS + COCO_STUFF_ONLY

ADE = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

CITYSCAPES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

RAW_CLASSES: dict[str, tuple[str, ...]] = {
    "voc": VOC,
    "voc20": VOC[1:],
    "context": CONTEXT,
    "context59": CONTEXT[1:],
    "object": OBJECT,
    "ade": ADE,
    "stuff": STUFF,
    "cityscapes": CITYSCAPES,
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
    "tank": "liquid tank", "blind": "window blinds", "hood": "cooker hood", "ashcan": "wastebin",
    "case": "shop case", "keyboard": "computer keyboard", "apparel": "clothing",
}  # fmt: skip

# The names the authors' ChatGPT answer calls stuff (Table C.9; mmdata.py's IS_STUFF), errors and all
# (App. C.6 names glass, blanket and trade name as wrong, yet the runs used them). Their code takes
# every name it does not list as a thing.
AUTHORS_STUFF = frozenset({
    "background", "bedclothes", "blanket", "ceiling", "cloth", "curtain", "fence", "floor", "glass", "grass",
    "ground", "lake", "mountain", "platform", "road", "rock", "sidewalk", "sky", "snow", "step", "track",
    "trade name", "tray", "wall", "water", "wood",
})  # fmt: skip
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
