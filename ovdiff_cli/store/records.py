"""The fields of every JSON record the cache holds: which each may have, which it must have, and their values.

`store/schema.py` names these tables in its one list of entry kinds; the verifier, the importer and
the writer's check read them from there. A field added to a record is refused by `Cache.write`
until it is listed here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import OvdiffError

HEX_ID = re.compile(r"[0-9a-f]{24}")
ARRAY_NAME = re.compile(r"(?:(?:fg|bg)/(?:class|instance|part|instance_src|part_labels)|masks)")
THING_STUFF = ("thing", "stuff")

# --------------------------------------------------------------------------- field checks


@dataclass(frozen=True)
class Field:
    """One field of a JSON record: what its value must be (a predicate and how to say it), and whether it must be there."""

    check: Callable[[object], bool]
    what: str
    required: bool = False


def _whole(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive(v: object) -> bool:
    return _whole(v) and v >= 1


def _count(v: object) -> bool:
    return _whole(v) and v >= 0


def _seed(v: object) -> bool:
    from ..limits import MAX_SEED

    return _whole(v) and 0 <= v <= MAX_SEED


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _text(v: object) -> bool:
    return isinstance(v, str)


def _id(v: object) -> bool:
    return isinstance(v, str) and HEX_ID.fullmatch(v) is not None


def _grid(v: object) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_positive(g) for g in v)


def _object(v: object) -> bool:
    return isinstance(v, dict)


def _or_null(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or check(v)


def _list_of(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _listing(v: object) -> bool:
    """A class record's `arrays`: array name → {"dtype": text, "shape": [counts]}."""
    return isinstance(v, dict) and all(
        isinstance(k, str)
        and isinstance(s, dict)
        and set(s) == {"dtype", "shape"}
        and _text(s["dtype"])
        and _list_of(_count)(s["shape"])
        for k, s in v.items()
    )


TEXT = Field(_text, "text")
ID = Field(_id, "an id of 24 hex digits")
POSITIVE = Field(_positive, "a positive whole number")
COUNT = Field(_count, "a whole number ≥ 0")
OBJECT = Field(_object, "a JSON object")
SEED = Field(_seed, "a seed in 0..2**63-1", required=True)
NAME = Field(_text, "text", required=True)


def _req(f: Field) -> Field:
    return Field(f.check, f.what, required=True)


SAMPLER = {  # SampleConfig.fingerprint_fields(), spread into support-set records
    "prompt_template": TEXT,
    "negative_prompt": TEXT,
    "guidance_scale": Field(_number, "a number"),
    "steps": POSITIVE,
    "size": POSITIVE,
    "attribution_size": POSITIVE,
}

CLASS_FIELDS = {  # engines/vocab._build
    "name": NAME,
    "norm": NAME,
    "seed": SEED,
    "extractor": _req(TEXT),
    "part": TEXT,
    "mask_id": ID,
    "support_id": _req(ID),
    "support_key": ID,
    "mask_proposer": TEXT,
    "mask_features": Field(_or_null(_text), "text or null"),
    "k_parts": POSITIVE,
    "kmeans_iters": POSITIVE,
    "kmeans_max_points": Field(_or_null(_positive), "a positive whole number or null"),
    "feature_size": POSITIVE,
    "feature_grid": Field(_grid, "[height, width]"),
    "mask_grid": Field(_grid, "[height, width]"),
    "n_images": POSITIVE,
    "mask_proposals": COUNT,
    "mask_thresholds": COUNT,
    "otsu_fallbacks": COUNT,  # records of earlier versions
    "kind": Field(lambda v: v in THING_STUFF, "thing or stuff", required=True),
    "kind_source": TEXT,
    "models": OBJECT,
    "generator": Field(_or_null(_object), "a JSON object or null"),
    "sampler": OBJECT,
    "proto_version": POSITIVE,
    "created_at": TEXT,
    "arrays": Field(_listing, "a table of arrays (dtype, shape)", required=True),
}
PHOTO_CLASS_FIELDS = {  # a class from the user's photos: support_id is null when no image is generated
    **CLASS_FIELDS,
    "support_id": Field(_or_null(_id), "an id of 24 hex digits or null"),
    "photos": _req(ID),
    "photo_set": _req(ID),
    "n_photos": _req(POSITIVE),
    "photo_note": _req(ID),
}
OUTSIDE_CLASS_FIELDS = {k: v for k, v in CLASS_FIELDS.items() if k != "support_id"}  # vocab.put_prototypes

SUPPORT_FIELDS = {  # engines/support._new_meta, then Cache.put_support_batch
    "name": NAME,
    "norm": NAME,
    "seed": SEED,
    "prompt": TEXT,
    **SAMPLER,
    "scheduler": TEXT,
    "generator": OBJECT,
    "models": OBJECT,
    "device": TEXT,
    "dtype": TEXT,
    "token_indices": Field(_list_of(_count), "a list of token positions"),
    "created_at": TEXT,
    "updated_at": TEXT,
    "n_images": _req(COUNT),
}
PHOTO_SET_FIELDS = {  # engines/photos.ensure_photo_set
    "name": NAME,
    "norm": NAME,
    "photos": _req(ID),
    "files": _req(Field(_list_of(_text), "a list of file names")),
    "prompt": TEXT,
    **SAMPLER,
    "generator": OBJECT,
    "models": OBJECT,
    "created_at": TEXT,
    "updated_at": TEXT,
    "n_images": _req(COUNT),
}
NOTE_FIELDS = {  # engines/photos.photo_note
    "name": NAME,
    "seed": SEED,
    "photos": _req(ID),
    "photo_set": _req(ID),
    "n_photos": _req(POSITIVE),
    "n_generated": _req(COUNT),
    "note": _req(ID),
    "created_at": _req(TEXT),
}
SCHEMA_FIELDS = {"version": _req(POSITIVE), "created_at": TEXT}


# --------------------------------------------------------------------------- record-wide checks


def _name_problem(record: dict, norm_field: str | None) -> str | None:
    """The name must be a class name and `norm_field` (when the record has it) its normal form."""
    from ..names import validate

    try:
        norm = validate(record["name"])
    except OvdiffError as e:
        return f"name: {e}"
    if norm_field and norm_field in record and record[norm_field] != norm:
        return f"norm {record[norm_field]!r:.60} is not the normal form of its name {record['name']!r:.60}"
    return None


def class_extra(record: dict, ids: dict) -> str | None:
    from ..config import PARTS

    why = _name_problem(record, "norm")
    if why:
        return why
    extractor = record["extractor"]
    parts = ["procedural"] if extractor == "procedural" else extractor.split("+")
    if extractor != "procedural" and (not all(p in PARTS for p in parts) or len(set(parts)) != len(parts)):
        return f"extractor {extractor!r:.40} is not an extractor spec"
    if "part" in record and record["part"] not in parts:
        return f"part {record['part']!r:.40} is not a part of extractor {extractor}"
    if any(not ARRAY_NAME.fullmatch(n) for n in record["arrays"]):
        bad = next(n for n in record["arrays"] if not ARRAY_NAME.fullmatch(n))
        return f"array {bad!r:.40} is not an array a class holds"
    if "n_photos" in record and isinstance(record.get("n_images"), int) and record["n_photos"] > record["n_images"]:
        return f"n_photos {record['n_photos']} exceeds n_images {record['n_images']}"
    return None


def note_extra(record: dict, ids: dict) -> str | None:
    if "id" in ids and record["note"] != ids["id"]:
        return f"note {record['note']!r:.30} is not its key's id {ids['id']}"
    return _name_problem(record, None)


def support_extra(record: dict, ids: dict) -> str | None:
    return _name_problem(record, "norm")
