"""`cache verify`: decode every entry, check values for sanity, and decide what a repair keeps.

`audit` is a pure function over keys and a getter, so the same unit rules judge a sound LMDB
environment (repaired in place) and the entries salvaged from a damaged data file (copied into a
fresh environment by `rebuild`). A unit is kept whole or not at all: a class with its record and
every array; a support set truncated to the images before its first broken one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import OvdiffError
from . import lmdbfile
from .blobs import decode_array, decode_png
from .cache import (
    ENV_DIRNAME,
    SCHEMA_KEY,
    SCHEMA_VERSION,
    Cache,
    CacheError,
    _json,
    attribution_key,
    class_array_key,
    class_key,
    image_key,
    now_iso,
    support_key,
)

NORM_TOLERANCE = 1e-3  # float32 rounding of a unit text embedding stays far below this
PROTO_GROUPS = ("fg", "bg")
PROTO_ARRAYS = ("class", "instance", "part")


@dataclass
class Problem:
    """One finding of `cache verify`: the key and what is wrong with it."""

    key: str
    reason: str


@dataclass
class Audit:
    """Findings, and what a repair does: keys to drop, support sets to cut to their first n images."""

    problems: list[Problem] = field(default_factory=list)
    drop: set[bytes] = field(default_factory=set)
    truncate: dict[str, int] = field(default_factory=dict)
    supports: dict[str, dict] = field(default_factory=dict)
    records: dict[str, dict] = field(default_factory=dict)


def array_problem(name: str, a: np.ndarray, record: dict) -> str | None:
    """What is wrong with class array `name` given its class record (values, not bytes), or None."""
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
        if len(a) and (a.min() < 0 or (isinstance(n_images, int) and a.max() >= n_images)):
            return f"instance sources outside 0..{n_images}"
    elif name == "masks" or kind == "part_labels":
        if a.ndim != 3 or (isinstance(n_images, int) and a.shape[0] != n_images):
            return f"{name} must be (N, h, w) with N = {n_images}, got {list(a.shape)}"
        grid = record.get("mask_grid" if name == "masks" and "mask_grid" in record else "feature_grid")
        if isinstance(grid, list) and list(a.shape[1:]) != grid:
            return f"{name} is on a {list(a.shape[1:])} grid, the record's {'mask' if name == 'masks' else 'feature'} grid is {grid}"
        if name == "masks" and a.size and (a.max() > 3):
            return "mask values outside 0..3 (bit flags: 1 fg, 2 bg)"
        if kind == "part_labels" and a.size and a.min() < -1:
            return "part labels below -1"
    return None


# every key a class record may have (vocab._build, vocab.put_prototypes, older versions' otsu_fallbacks):
# records carry no checksum of their own, so a key damaged in place shows as an unknown one
RECORD_KEYS = frozenset(
    {
        "name",
        "norm",
        "seed",
        "extractor",
        "part",
        "mask_id",
        "support_id",
        "support_key",
        "mask_proposer",
        "mask_features",
        "k_parts",
        "kmeans_iters",
        "kmeans_max_points",
        "feature_size",
        "feature_grid",
        "mask_grid",
        "n_images",
        "mask_proposals",
        "mask_thresholds",
        "otsu_fallbacks",
        "kind",
        "kind_source",
        "models",
        "generator",
        "sampler",
        "proto_version",
        "created_at",
        "arrays",
    }
)


KINDS = ("thing", "stuff")


def _positive_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def record_problem(record: object, required: tuple[str, ...] = ()) -> str | None:
    """What is wrong with the values of a class record's fields (checksums cannot see a record written
    with a bad value, e.g. `kind: "bogus"`), or None. Fields are checked where present; `required`
    ones must be."""
    from ..config import PARTS
    from ..limits import MAX_SEED
    from ..names import validate

    if not isinstance(record, dict):
        return "class record is not a JSON object"
    for key in required:
        if key not in record:
            return f"class record has no {key!r}"
    name, norm = record.get("name"), record.get("norm", record.get("name"))
    try:
        if "name" in record and (not isinstance(name, str) or validate(name) != norm):
            return f"class record's norm {norm!r:.60} is not the normal form of its name {name!r:.60}"
    except OvdiffError as e:
        return f"class record's name: {e}"
    if "kind" in record and record["kind"] not in KINDS:
        return f"class record's kind is {record['kind']!r:.40}, not thing or stuff"
    seed = record.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        return f"class record's seed {seed!r:.40} is not in 0..{MAX_SEED}"
    extractor = record.get("extractor", "procedural")
    parts = extractor.split("+") if isinstance(extractor, str) else [None]
    if extractor != "procedural" and (not all(p in PARTS for p in parts) or len(set(parts)) != len(parts)):
        return f"class record's extractor {extractor!r:.40} is not an extractor spec"
    if (
        "part" in record
        and "extractor" in record
        and record["part"] not in (parts if extractor != "procedural" else ["procedural"])
    ):
        return f"class record's part {record['part']!r:.40} is not a part of extractor {extractor}"
    for key in ("n_images", "k_parts", "feature_size", "kmeans_iters", "kmeans_max_points"):
        if (
            key in record
            and not _positive_int(record[key])
            and not (key == "kmeans_max_points" and record[key] is None)
        ):
            return f"class record's {key} is {record[key]!r:.40}, not a positive whole number"
    for key in ("feature_grid", "mask_grid"):
        grid = record.get(key, [1, 1])
        if not isinstance(grid, list) or len(grid) != 2 or not all(_positive_int(g) for g in grid):
            return f"class record's {key} is {grid!r:.40}, not [height, width]"
    for key in ("name", "kind_source", "mask_proposer", "created_at", "support_id", "mask_id", "support_key"):
        if key in record and not isinstance(record[key], str):
            return f"class record's {key} is {record[key]!r:.40}, not text"
    if "arrays" in record and not isinstance(record["arrays"], dict):
        return "class record's arrays is not a table of arrays"
    return None


def class_problem(record: dict, arrays: dict[str, np.ndarray]) -> str | None:
    """The first problem of a whole class (record fields and their values, every array, rows agreeing), or None."""
    why = record_problem(record, required=("name", "norm", "kind", "seed", "extractor"))
    if why:
        return why
    if "fg/class" not in arrays:
        return "class has no fg/class prototype"
    for name, a in arrays.items():
        why = array_problem(name, a, record)
        if why:
            return f"{name}: {why}"
    dims = {a.shape[1] for n, a in arrays.items() if n.partition("/")[2] in PROTO_ARRAYS and a.ndim == 2}
    if len(dims) > 1:
        return f"prototype arrays disagree on the feature dimension ({sorted(dims)})"
    return None


def audit(keys: list[bytes], get: Callable[[bytes], bytes | None]) -> Audit:
    """Decode every entry and cross-check records; say what a repair removes.

    Checks: JSON records parse; array blobs decode with their checksums, shapes and dtypes as their
    class record lists; values are sane (finite; prototypes within the norm their extractor allows;
    masks, labels and sources in range; text embeddings unit vectors; attribution maps >= 0);
    support images decode at the support set's size; every image and array a record lists exists.
    A broken array removes its whole class; a broken support image truncates its support set to
    the images before it and removes the classes built from the lost images.
    """
    out = Audit()
    keyset = set(keys)

    def bad(k: bytes, why: str) -> None:
        out.problems.append(Problem(k.decode(errors="replace"), why))
        out.drop.add(k)

    def cut(sid: str, i: int) -> None:
        out.truncate[sid] = min(out.truncate.get(sid, i), i)

    for k in keys:  # key order: a record sorts before its entries
        v = get(k)
        if v is None:  # deleted by another process since the key scan
            continue
        parts = k.decode(errors="replace").split("/")
        try:
            if k == SCHEMA_KEY:
                json.loads(v)
            elif parts[0] == "s" and len(parts) == 2:
                meta = json.loads(v)
                n = int(meta["n_images"])
                out.supports[parts[1]] = meta
                for i in range(n):
                    if image_key(parts[1], i) not in keyset or attribution_key(parts[1], i) not in keyset:
                        bad(k, f"support set lists {n} images but image {i} is missing")
                        cut(parts[1], i)
                        out.drop.discard(k)
                        break
            elif parts[0] == "s" and len(parts) == 4 and parts[2] in ("img", "att"):
                meta = out.supports.get(parts[1])
                if meta is None:  # its record was lost (never the case in a sound cache): the set is resampled
                    bad(k, "support image without a support-set record (orphan)")
                elif parts[2] == "img":
                    img = decode_png(v)
                    size = meta.get("size")
                    if size is not None and img.shape[:2] != (size, size):
                        raise ValueError(f"image is {img.shape[1]}x{img.shape[0]}, the support set's size is {size}")
                else:
                    a = decode_array(v)
                    side = meta.get("attribution_size")
                    if side is not None and a.shape != (side, side):
                        raise ValueError(f"attribution map of shape {list(a.shape)}, expected [{side}, {side}]")
                    if not np.isfinite(a).all() or (a < 0).any():
                        raise ValueError("attribution map has negative or non-finite values")
            elif parts[0] == "p" and len(parts) == 2:
                out.records[parts[1]] = json.loads(v)
                unknown = sorted(set(out.records[parts[1]]) - RECORD_KEYS)
                if unknown:
                    bad(k, f"class record with unknown field(s) {', '.join(map(repr, unknown))} (damaged)")
                elif why := record_problem(out.records[parts[1]]):
                    bad(k, why)
                for name in out.records[parts[1]]["arrays"]:
                    if class_array_key(parts[1], name) not in keyset:
                        bad(k, f"class {out.records[parts[1]].get('name')!r}: array {name} missing")
                        break
            elif parts[0] == "p" and len(parts) >= 4 and parts[2] == "a":
                a = decode_array(v)
                rec = out.records.get(parts[1])
                name = "/".join(parts[3:])
                spec = None if rec is None else rec["arrays"].get(name)
                if rec is None:
                    bad(k, "prototype array without a class record (orphan)")
                elif spec is None or list(a.shape) != spec["shape"] or a.dtype.str != spec["dtype"]:
                    bad(k, "array does not match its class record")
                elif why := array_problem(name, a, rec):
                    bad(k, why)
            elif parts[0] == "t" and len(parts) == 2:
                a = decode_array(v)
                if (
                    a.ndim != 1
                    or not np.isfinite(a).all()
                    or abs(float(np.linalg.norm(a.astype(np.float64))) - 1) > NORM_TOLERANCE
                ):
                    raise ValueError("text embedding is not a finite unit vector")
            elif parts[0] == "v" and len(parts) == 3:  # per-vocabulary arrays (stuff scores): one number a row
                a = decode_array(v)
                if a.ndim != 1 or np.isnan(a).any():
                    raise ValueError("vocabulary array is not one finite number per prototype")
            else:
                bad(k, "unknown key")
        except Exception as e:  # any decode failure is a finding, not a crash
            bad(k, f"{type(e).__name__}: {e}")
            if parts[0] == "s" and len(parts) == 4 and parts[3].isdigit():
                out.drop.discard(k)
                cut(parts[1], int(parts[3]))
            elif parts[0] == "s" and len(parts) == 2:
                cut(parts[1], 0)  # an unreadable support record: the whole set is resampled
    # Classes built from support images that are broken: their masks point at lost images.
    for pid, rec in out.records.items():
        sid = rec.get("support_id")
        if sid in out.truncate and out.truncate[sid] < int(rec.get("n_images") or 0) and class_key(pid) not in out.drop:
            bad(
                class_key(pid),
                f"class {rec.get('name')!r} was built from support image {out.truncate[sid]} of {sid}, which is broken",
            )
    return out


def verify(cache: Cache, repair: bool = False) -> list[Problem]:
    """`audit` over every entry of `cache` ([] when sound); with `repair`, delete what is broken (whole units)."""
    keys = [k for k, _ in cache.scan(b"", values=False)]  # values are read one at a time: memory stays flat
    found = audit(keys, cache.get)
    if repair and (found.drop or found.truncate):
        cache.write(repairs(found, keys))
    return found.problems


def repairs(found: Audit, keys: list[bytes]) -> dict[bytes, bytes | None]:
    """The writes (None = delete) that leave only whole units: broken classes entirely, support sets cut."""
    drop = set(found.drop)
    for k in list(drop):
        parts = k.decode(errors="replace").split("/")
        if parts[0] == "p":
            drop.add(class_key(parts[1]))
            drop.update(kk for kk in keys if kk.startswith(class_key(parts[1]) + b"/"))
    updates: dict[bytes, bytes | None] = dict.fromkeys(drop)
    for sid, n in found.truncate.items():
        meta = found.supports.get(sid)
        if meta is not None:
            updates[support_key(sid)] = _json(dict(meta, n_images=min(n, int(meta["n_images"]))))
        for kk in keys:
            tail = kk.decode(errors="replace").rsplit("/", 1)[-1]
            if kk.startswith(support_key(sid) + b"/") and (not tail.isdigit() or int(tail) >= n):
                updates[kk] = None
    return updates


@dataclass
class Rebuilt:
    """What `rebuild` did: findings, classes kept, and where the damaged original now lies."""

    problems: list[Problem]
    classes: int
    original: Path


def rebuild(root: Path, damage: str) -> Rebuilt:
    """Copy every intact unit of a damaged cache into a fresh environment, then swap it in.

    The original data file is only read (with bounds checks, never mapped). The new environment is
    written beside it and synced; only then is the original renamed to `ovdiff.lmdb.damaged-<time>`
    (kept for the user to delete) and the new one renamed into its place.
    """
    import lmdb

    from .cache import close_cache

    env_dir = root / ENV_DIRNAME
    found = lmdbfile.salvage(env_dir / "data.mdb")
    try:
        keys = found.keys()
        raw_schema = found.get(SCHEMA_KEY)
        if raw_schema is not None:
            try:
                version = json.loads(raw_schema)["version"]
            except (ValueError, KeyError, TypeError):
                version = SCHEMA_VERSION
            if version != SCHEMA_VERSION:
                raise CacheError(
                    f"cache {root} has schema version {version}; this ovdiff repairs version {SCHEMA_VERSION} only"
                )
        result = audit(keys, found.get)
        problems = [Problem("data.mdb", damage)] + [Problem("data.mdb", d) for d in found.damage[:20]] + result.problems
        updates = repairs(result, keys)
        fresh = root / f"{ENV_DIRNAME}.repair"
        shutil.rmtree(fresh, ignore_errors=True)
        size = sum(length for _, length in found.entries.values())
        env = lmdb.open(str(fresh), map_size=max(2 * size + (16 << 20), 1 << 24), subdir=True, lock=True)
        try:
            batch: dict[bytes, bytes] = {}
            if raw_schema is None or SCHEMA_KEY in updates:
                batch[SCHEMA_KEY] = _json({"version": SCHEMA_VERSION, "created_at": now_iso()})
            for k in keys:
                v = updates[k] if k in updates else found.get(k)
                if v is None:
                    continue
                batch[k] = v
                if sum(map(len, batch.values())) > 64 << 20:
                    _put(env, batch)
                    batch = {}
            _put(env, batch)
            env.sync(True)
            with env.begin() as txn:
                classes = sum(
                    1 for k in txn.cursor().iternext(values=False) if k.startswith(b"p/") and k.count(b"/") == 1
                )
        finally:
            env.close()
    except (OSError, lmdb.Error) as e:
        raise CacheError(
            f"cannot write the repaired cache beside {env_dir}: {getattr(e, 'strerror', None) or e}; the original is untouched"
        ) from e
    finally:
        found.pages.close()
    close_cache(root)
    original = root / f"{ENV_DIRNAME}.damaged-{now_iso().replace(':', '')}"
    os.rename(env_dir, original)
    os.rename(fresh, env_dir)
    return Rebuilt(problems, classes, original)


def _put(env, items: dict[bytes, bytes]) -> None:
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v)
