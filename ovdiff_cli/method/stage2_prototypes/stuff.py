"""Stuff or thing? The table behind the stuff filter for user vocabularies (paper §3 "Stuff
filtering", App. C.6).

The paper asked ChatGPT; we ship a table instead, covering COCO-Stuff (80 things, 91 stuff),
Pascal Context and ADE20K, Cityscapes and Pascal VOC, raw and corrected names. `ovdiff eval` scores
VOC, Context, Object and ADE with the authors' own answer instead (`eval.classnames.class_kinds`),
errors included, and COCO-Stuff and Cityscapes, which it does not list, with this table. Precedence:
1. App. C.6's remarks on ChatGPT's answers: glass, blanket, trade name are things (instances of
   tableware, bedding, signage); land and sand are stuff, like snow and ground; and, our addition
   (ChatGPT said thing, the paper is silent), earth is stuff;
2. COCO-Stuff's own split for its 171 labels (the paper measures ChatGPT against it), a label's
   "-other"/"-stuff" base name included (floor-other → floor);
3. for the remaining Context/ADE/Cityscapes names, the same rule COCO-Stuff applies: regions without
   a definite shape that other objects appear against (surfaces, terrain, vegetation, built
   structures, materials) are stuff; countable objects are things.

Unknown names fall back to, in order: the head noun ("chocolate glazed donut" → donut), the nearest
table name in the scorer's text space (embeddings cached), and "thing". No network is ever used.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from ...classnames.lists import COCO_STUFF_ONLY, COCO_THINGS

if TYPE_CHECKING:
    from ...types import StageSource, TextMemo

KINDS = ("thing", "stuff")


def key(name: str) -> str:
    """Lookup form: lower case, '-' and '_' as spaces, single spaces."""
    return " ".join(re.sub(r"[-_]", " ", name.lower()).split())


# Paper App. C.6: the kinds the authors give where they discuss ChatGPT's answers (glass, blanket, trade
# name, land, sand; snow and ground ChatGPT had right), plus earth (ChatGPT: thing; stuff by COCO's rule).
PAPER_FIXES = {
    "glass": "thing",
    "blanket": "thing",
    "trade name": "thing",
    "land": "stuff",
    "sand": "stuff",
    "snow": "stuff",
    "ground": "stuff",
    "earth": "stuff",
}

# Context / ADE20K / Cityscapes / VOC names that COCO-Stuff does not label (or labels under a
# different word), classified by COCO-Stuff's rule; each line groups names by the reason.
_OTHER_STUFF = (
    # surfaces and built structures, as COCO's wall/floor/ceiling/building/road/stairs/railing/counter
    "windowpane",
    "blind",
    "sidewalk",
    "path",
    "runway",
    "track",
    "dirt track",
    "stairway",
    "step",
    "escalator",
    "bannister",
    "shelves",
    "kitchen island",
    "bar",
    "countertop",
    "tower",
    "hovel",
    "grandstand",
    "stage",
    "pier",
    "awning",
    "canopy",
    "screen door",
    "swimming pool",
    # terrain, water and vegetation, as COCO's dirt/sea/river/hill/grass/tree/bush
    "field",
    "terrain",
    "vegetation",
    "palm",
    "lake",
    "waterfall",
    # clothing, as COCO's clothes
    "apparel",
    "clothing",
)
_OTHER_THINGS = (
    # furniture and fittings with a definite shape (COCO: chair, couch, bed, dining table are things)
    "sofa",
    "armchair",
    "seat",
    "swivel chair",
    "stool",
    "ottoman",
    "wardrobe",
    "bookcase",
    "chest of drawers",
    "case",
    "buffet",
    "coffee table",
    "pool table",
    "cradle",
    "bathtub",
    "shower",
    "fireplace",
    "chandelier",
    "lamp",
    "sconce",
    "streetlight",
    "pole",
    "column",
    "base",
    "cushion",
    "bedclothes",
    # appliances and electronics
    "computer",
    "monitor",
    "crt screen",
    "screen",
    "television receiver",
    "tv monitor",
    "tvmonitor",
    "stove",
    "dishwasher",
    "washer",
    "radiator",
    "fan",
    "hood",
    "arcade machine",
    "conveyer belt",
    # signage and pictures
    "sign",
    "signboard",
    "traffic sign",
    "poster",
    "painting",
    "bulletin board",
    "flag",
    # containers and small objects
    "bag",
    "box",
    "barrel",
    "basket",
    "pot",
    "tray",
    "plate",
    "ashcan",
    "tank",
    "ball",
    "plaything",
    "sculpture",
    "fountain",
    "booth",
    # vehicles, people and animals
    "aeroplane",
    "motorbike",
    "minibike",
    "van",
    "ship",
    "rider",
    "animal",
    # VOC / Context names and their App. C.3 corrections
    "diningtable",
    "pottedplant",
    "computer mouse",
    "computer keyboard",
    "remote control",
    "hair dryer",
    "television",
    # the authors' prompt overlay (eval.classnames.PROMPT_OVERLAY); "window blinds" is COCO's window-blind
    "liquid tank",
    "cooker hood",
    "wastebin",
    "shop case",
)


def _coco_stuff_keys() -> set[str]:
    out = set()
    for n in COCO_STUFF_ONLY:
        out.add(key(n))
        base, _, suffix = n.rpartition("-")
        if suffix in ("other", "stuff") and base:
            out.add(key(base))
    return out


def _tables() -> tuple[frozenset[str], frozenset[str]]:
    stuff = _coco_stuff_keys() | {key(n) for n in _OTHER_STUFF}
    things = {key(n) for n in COCO_THINGS} | {key(n) for n in _OTHER_THINGS}
    for name, kind in PAPER_FIXES.items():
        (stuff if kind == "stuff" else things).add(name)
        (things if kind == "stuff" else stuff).discard(name)
    return frozenset(stuff), frozenset(things)


STUFF, THINGS = _tables()


def _variants(k: str) -> list[str]:
    """k and its simple singular/plural forms (cats → cat, shelves → shelf, glasses → glass, bus → buses)."""
    out = [k]
    if k.endswith("ies"):
        out.append(k[:-3] + "y")
    if k.endswith("ves"):
        out += [k[:-3] + "f", k[:-3] + "fe"]
    if k.endswith("es"):
        out.append(k[:-2])
    if k.endswith("s"):
        out.append(k[:-1])
    out += [k + "s", k + "es"]
    return out


def lookup(name: str) -> str | None:
    """The table's kind for `name` (case, separators and simple plurals ignored), else None."""
    for v in _variants(key(name)):
        if v in STUFF:
            return "stuff"
        if v in THINGS:
            return "thing"
    return None


def head_noun(name: str) -> str:
    """The last word before any " of " ("glass of water" → glass; "red sports car" → car)."""
    words = key(name).split(" of ")[0].split()
    return words[-1] if words else ""


def nearest_known(name: str, stages: StageSource, texts: TextMemo | None = None) -> tuple[str, str]:
    """(kind, table name) of the table name closest to `name` by cosine in the scorer's text space.

    Table embeddings are kept in `texts` (e.g. the cache) under the scorer's identity, so this costs one
    text encoding after the first time.
    """
    import torch

    from ..stage3_filter.prefilter import (
        class_prompt,
    )  # the category pre-filter's prompt: the cached embeddings are shared

    scorer = stages.scorer()  # built only now: most names are in the table
    known = sorted(STUFF | THINGS)
    prompts = [class_prompt(n) for n in known] + [class_prompt(name)]
    fp = scorer.identity()
    cached = texts.text_embeddings(fp, prompts) if texts is not None else [None] * len(prompts)
    missing = [p for p, e in zip(prompts, cached, strict=True) if e is None]
    if missing:
        enc = scorer.encode_texts(missing).float().cpu().numpy()
        new = dict(zip(missing, enc, strict=True))
        if texts is not None:
            texts.put_text_embeddings(fp, new)
        cached = [new[p] if e is None else e for p, e in zip(prompts, cached, strict=True)]
    emb = torch.from_numpy(np.stack(cached).astype(np.float32))
    emb = torch.nn.functional.normalize(emb, dim=1)
    best = known[int((emb[:-1] @ emb[-1]).argmax())]
    return ("stuff" if best in STUFF else "thing"), best


def classify(name: str, stages: StageSource | None = None, texts: TextMemo | None = None) -> tuple[str, str]:
    """(kind, source) of a class name: kind "stuff" or "thing"; source "table" or "fallback".

    Fallbacks: head noun in the table, then (given the stages, whose scorer it builds) the nearest table name in text space,
    then "thing".
    """
    kind = lookup(name)
    if kind is not None:
        return kind, "table"
    kind = lookup(head_noun(name)) if " " in key(name) else None
    if kind is not None:
        return kind, "fallback"
    if stages is not None:
        return nearest_known(name, stages, texts)[0], "fallback"
    return "thing", "fallback"
