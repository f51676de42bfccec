"""The one schema of every entry the cache can hold: its key, its encoding, its fields and its value checks.

Every other part of the store reads this table: `Cache.write` refuses a key no kind describes and a
record whose fields its kind does not allow, `audit` (cache verify and repair) checks every entry
by its kind, and export/import check class records and photo notes by theirs. So a new kind of
entry, or a new field of a record, cannot be written before its check exists here.
tests/test_cache_schema.py writes one entry of every kind through the real writers and checks that
each verifies sound and survives export and import. The layout is documented in cache_schema.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import OvdiffError
from .records import (
    CLASS_FIELDS,
    NOTE_FIELDS,
    OUTSIDE_CLASS_FIELDS,
    PHOTO_CLASS_FIELDS,
    PHOTO_SET_FIELDS,
    SCHEMA_FIELDS,
    SUPPORT_FIELDS,
    Field,
    class_extra,
    note_extra,
    support_extra,
)

NORM_TOLERANCE = 1e-3  # float32 rounding of a unit text embedding stays far below this
PROTO_GROUPS = ("fg", "bg")
PROTO_ARRAYS = ("class", "instance", "part")


# --------------------------------------------------------------------------- value checks of binary entries


def array_problem(name: str, a: np.ndarray, record: dict, sources_known: bool = True) -> str | None:
    """What is wrong with class array `name` given its class record (values, not bytes), or None.
    `sources_known`: False for prototypes made elsewhere, whose instance sources may be -1 (unknown)."""
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return "array has non-finite values"
    group, _, kind = name.partition("/")
    n_images = record.get("n_images")
    if group in PROTO_GROUPS and kind in PROTO_ARRAYS:
        if a.ndim != 2 or a.dtype.kind != "f":
            return f"prototypes must be a 2-D float array, got {a.dtype}{list(a.shape)}"
    elif group in PROTO_GROUPS and kind == "instance_src":
        if a.ndim != 1 or a.dtype.kind not in "iu":
            return f"instance sources must be a 1-D integer array, got {a.dtype}{list(a.shape)}"
        low = 0 if sources_known else -1
        if len(a) and (a.min() < low or (isinstance(n_images, int) and a.max() >= n_images)):
            return f"instance sources outside {low}..{n_images}"
    elif name == "masks" or kind == "part_labels":
        if a.ndim != 3 or (isinstance(n_images, int) and a.shape[0] != n_images):
            return f"{name} must be (N, h, w) with N = {n_images}, got {list(a.shape)}"
        grid = record.get("mask_grid" if name == "masks" and "mask_grid" in record else "feature_grid")
        if isinstance(grid, list) and list(a.shape[1:]) != grid:
            which = "mask" if name == "masks" else "feature"
            return f"{name} is on a {list(a.shape[1:])} grid, the record's {which} grid is {grid}"
        if name == "masks" and a.size and (a.max() > 3):
            return "mask values outside 0..3 (bit flags: 1 fg, 2 bg)"
        if kind == "part_labels" and a.size and a.min() < -1:
            return "part labels below -1"
    else:
        return "not an array a class holds"
    return None


def _class_array_check(a: np.ndarray, record: dict, ids: dict) -> str | None:
    spec = record["arrays"].get(ids["array"])
    if spec is None or list(a.shape) != spec["shape"] or a.dtype.str != spec["dtype"]:
        return "array does not match its class record"
    return array_problem(ids["array"], a, record, sources_known=record_kind("class", record).name != "outside-class")


def _image_check(img: np.ndarray, meta: dict, ids: dict) -> str | None:
    size = meta.get("size")
    if size is not None and img.shape[:2] != (size, size):
        return f"image is {img.shape[1]}x{img.shape[0]}, the support set's size is {size}"
    return None


def _attribution_check(a: np.ndarray, meta: dict, ids: dict) -> str | None:
    side = meta.get("attribution_size")
    if side is not None and a.shape != (side, side):
        return f"attribution map of shape {list(a.shape)}, expected [{side}, {side}]"
    if not np.isfinite(a).all() or (a < 0).any():
        return "attribution map has negative or non-finite values"
    return None


def _embedding_check(a: np.ndarray, parent: None, ids: dict) -> str | None:
    if a.ndim != 1 or not np.isfinite(a).all() or abs(float(np.linalg.norm(a.astype(np.float64))) - 1) > NORM_TOLERANCE:
        return "text embedding is not a finite unit vector"
    return None


def _vocab_array_check(a: np.ndarray, parent: None, ids: dict) -> str | None:
    if ids["array"] == "class_text":
        if a.ndim != 2 or a.dtype.kind != "f" or not np.isfinite(a).all():
            return "class-prompt embeddings are not a finite (classes, E) float array"
        if not np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-3):
            return "class-prompt embeddings are not unit vectors"
        return None
    if a.ndim != 1 or a.dtype.kind != "f" or np.isnan(a).any():
        return "vocabulary array is not one number per prototype"
    return None


# --------------------------------------------------------------------------- the kinds


@dataclass(frozen=True)
class Kind:
    """One kind of cache entry.

    `key` is the entry's key pattern (named groups: `id`, `i`, `array`); several kinds of record may
    share a pattern (`entry` names it) and `when` tells them apart. `parent` is the entry kind of the
    record the entry belongs to (a unit is kept or removed whole): `check(value, parent record, key
    groups)` judges the decoded value. JSON records list every field they may have (`fields`) and
    `extra` checks fields against each other.
    """

    name: str
    entry: str
    key: re.Pattern
    encoding: str  # "json", "array" (store/blobs.py) or "png"
    doc: str
    fields: dict[str, Field] | None = None
    when: Callable[[dict], bool] = lambda record: True
    extra: Callable[[dict, dict], str | None] | None = None
    parent: str | None = None
    check: Callable[..., str | None] | None = None
    exported: bool = False  # carried by `protos export` files


_ID = r"(?P<id>[0-9a-f]{24})"
KINDS: tuple[Kind, ...] = (
    Kind("schema", "schema", re.compile(r"!schema"), "json", "the cache's schema version", SCHEMA_FIELDS),
    Kind(
        "photo-set",
        "support-set",
        re.compile(rf"s/{_ID}"),
        "json",
        "a support set of the user's photos",
        PHOTO_SET_FIELDS,
        when=lambda r: "photos" in r,
        extra=support_extra,
    ),
    Kind(
        "support-set",
        "support-set",
        re.compile(rf"s/{_ID}"),
        "json",
        "a generated support set",
        SUPPORT_FIELDS,
        extra=support_extra,
    ),
    Kind(
        "support-image",
        "support-image",
        re.compile(rf"s/{_ID}/img/(?P<i>\d{{5,}})"),
        "png",
        "support image i (RGB)",
        parent="support-set",
        check=_image_check,
    ),
    Kind(
        "attribution",
        "attribution",
        re.compile(rf"s/{_ID}/att/(?P<i>\d{{5,}})"),
        "array",
        "attribution map of support image i",
        parent="support-set",
        check=_attribution_check,
    ),
    Kind(
        "photo-class",
        "class",
        re.compile(rf"p/{_ID}"),
        "json",
        "a class part built from the user's photos",
        PHOTO_CLASS_FIELDS,
        when=lambda r: "photo_note" in r or "photos" in r,
        extra=class_extra,
        exported=True,
    ),
    Kind(
        "class",
        "class",
        re.compile(rf"p/{_ID}"),
        "json",
        "a class part built from generated images",
        CLASS_FIELDS,
        when=lambda r: "support_id" in r,
        extra=class_extra,
        exported=True,
    ),
    Kind(
        "outside-class",
        "class",
        re.compile(rf"p/{_ID}"),
        "json",
        "a class part of prototypes made elsewhere (no support set)",
        OUTSIDE_CLASS_FIELDS,
        extra=class_extra,
        exported=True,
    ),
    Kind(
        "class-array",
        "class-array",
        re.compile(rf"p/{_ID}/a/(?P<array>.+)"),
        "array",
        "one array of a class part",
        parent="class",
        check=_class_array_check,
        exported=True,
    ),
    Kind(
        "text-embedding",
        "text-embedding",
        re.compile(rf"t/{_ID}"),
        "array",
        "a unit text embedding",
        check=_embedding_check,
    ),
    Kind(
        "vocab-array",
        "vocab-array",
        re.compile(rf"v/{_ID}/(?P<array>[a-z_]+)"),
        "array",
        "an array computed once for a vocabulary (stuff scores, class-prompt embeddings), under the vocabulary's id",
        check=_vocab_array_check,
    ),
    Kind(
        "photo-note",
        "photo-note",
        re.compile(rf"u/{_ID}"),
        "json",
        "the note that a name stands for the user's photos",
        NOTE_FIELDS,
        extra=note_extra,
        exported=True,
    ),
)
BY_NAME = {k.name: k for k in KINDS}
JSON_ENTRIES = frozenset(k.entry for k in KINDS if k.encoding == "json")


def entry_of(key: bytes | str) -> tuple[str, dict] | None:
    """(entry kind, key groups) of a key, or None for a key the cache never holds."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    for k in KINDS:
        m = k.key.fullmatch(text)
        if m:
            return k.entry, m.groupdict()
    return None


def record_kind(entry: str, record: dict) -> Kind:
    """Which kind of record `record` is among those stored under keys of `entry` (the first whose `when` holds)."""
    return next(k for k in KINDS if k.entry == entry and k.when(record))


def record_problem(entry: str, record: object, ids: dict | None = None) -> str | None:
    """What is wrong with a JSON record stored under an `entry` key (a missing or unknown field, a value
    of the wrong type or range, fields that disagree), or None. Records carry no checksum of their own,
    so a field name damaged in place shows as an unknown field."""
    if not isinstance(record, dict):
        return f"{entry} record is not a JSON object"
    kind = record_kind(entry, record)
    fields = kind.fields or {}
    unknown = sorted(set(record) - set(fields))
    if unknown:
        return f"{kind.name} record with unknown field(s) {', '.join(map(repr, unknown))} (damaged)"
    for name, f in fields.items():
        if name not in record:
            if f.required:
                return f"{kind.name} record has no {name!r}"
        elif not f.check(record[name]):
            return f"{kind.name} record's {name} is {record[name]!r:.40}, not {f.what}"
    why = kind.extra(record, ids or {}) if kind.extra else None
    return f"{kind.name} record's {why}" if why else None


def class_problem(record: object, arrays: dict[str, np.ndarray]) -> str | None:
    """The first problem of a whole class part as an export carries it (record without its listing, and
    its arrays), or None: the record by its kind, every array, the prototype dimensions agreeing."""
    if not isinstance(record, dict):
        return "class record is not a JSON object"
    listing = {n: {"dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays.items()}
    full = dict(record, arrays=listing)
    why = record_problem("class", full)
    if why:
        return why
    if "fg/class" not in arrays:
        return "class has no fg/class prototype"
    for name, a in arrays.items():
        why = _class_array_check(a, full, {"array": name})
        if why:
            return f"{name}: {why}"
    dims = {a.shape[1] for n, a in arrays.items() if n.partition("/")[2] in PROTO_ARRAYS and a.ndim == 2}
    if len(dims) > 1:
        return f"prototype arrays disagree on the feature dimension ({sorted(dims)})"
    return None


class SchemaViolation(OvdiffError):
    """A write this schema does not describe: a bug in ovdiff (the entry would not verify), never the user's input."""


def check_write(key: bytes, value: bytes | None) -> None:
    """Refuse (SchemaViolation) an entry the schema does not describe, before it reaches the cache.
    JSON records are checked field by field; binary values are checked by `cache verify`."""
    import json

    found = entry_of(key)
    if found is None:
        raise SchemaViolation(f"ovdiff bug: key {key[:60]!r} is no kind of cache entry (store/schema.py)")
    entry, ids = found
    if value is not None and entry in JSON_ENTRIES:
        why = record_problem(entry, json.loads(value), ids)
        if why:
            raise SchemaViolation(f"ovdiff bug: {key.decode(errors='replace')}: {why} (store/schema.py)")
