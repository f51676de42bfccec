"""`cache verify`: decode every entry, check it by its kind in `store/schema.py`, and decide what a repair keeps.

`audit` is a pure function over keys and a getter, so the same unit rules judge a sound LMDB
environment (repaired in place) and the entries salvaged from a damaged data file (copied into a
fresh environment by `rebuild`). A unit is kept whole or not at all: a class part with its record
and every array; a support set truncated to the images before its first broken one; a photo note.
A class part does not depend on its support images (an imported class has none): its prototypes
are kept when its own record and arrays are intact, and lost support images are drawn again,
bit for bit, when a command needs them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import lmdbfile, schema
from .blobs import decode_array, decode_png
from .cache import (
    ENV_DIRNAME,
    SCHEMA_KEY,
    SCHEMA_VERSION,
    Cache,
    CacheError,
    _json,
    class_key,
    now_iso,
    support_key,
)

DECODERS: dict[str, Callable[[bytes], object]] = {"json": json.loads, "array": decode_array, "png": decode_png}
LISTED = {"support-set": ("img", "att")}  # a support-set record lists images 0..n_images-1 of each


@dataclass
class Problem:
    """One finding of `cache verify`: the key and what is wrong with it."""

    key: str
    reason: str


@dataclass
class Audit:
    """Findings, and what a repair does: keys to drop (a class key drops its whole part), support sets
    to cut to their first n images; the records that decoded (id → record), by entry kind; the names
    whose photo notes are dropped (their photos must be given again)."""

    problems: list[Problem] = field(default_factory=list)
    drop: set[bytes] = field(default_factory=set)
    truncate: dict[str, int] = field(default_factory=dict)
    supports: dict[str, dict] = field(default_factory=dict)
    records: dict[str, dict] = field(default_factory=dict)
    notes: dict[str, dict] = field(default_factory=dict)
    lost_photos: list[str] = field(default_factory=list)
    broken: set[str] = field(default_factory=set)  # ids of support sets and classes whose record is broken

    def kept_classes(self) -> list[tuple[str, dict]]:
        """(pid, record) of the class parts a repair keeps."""
        gone = {k.split(b"/")[1].decode() for k in self.drop if k.startswith(b"p/")}  # a broken array takes its part
        return [(pid, r) for pid, r in self.records.items() if pid not in gone]


def audit(keys: list[bytes], get: Callable[[bytes], bytes | None]) -> Audit:
    """Decode every entry and check it by its kind (`schema.KINDS`); say what a repair removes.

    Records are checked field by field; array blobs decode with their checksums, and class arrays
    match the shapes and dtypes their record lists; values are sane (`schema`'s checks); every image
    and array a record lists exists. A broken array removes its class part; a broken support image
    truncates its support set to the images before it; a photo note whose photos are lost, with no
    class part left that they built, is removed.
    """
    out = Audit()
    keyset = set(keys)
    parents = {"support-set": out.supports, "class": out.records}

    def bad(k: bytes, why: str) -> None:
        out.problems.append(Problem(k.decode(errors="replace"), why))
        out.drop.add(k)

    def cut(sid: str, i: int) -> None:
        out.truncate[sid] = min(out.truncate.get(sid, i), i)

    for k in keys:  # key order: a record sorts before its entries
        v = get(k)
        if v is None:  # deleted by another process since the key scan
            continue
        found = schema.entry_of(k)
        if found is None:
            bad(k, "unknown key")
            continue
        entry, ids = found
        kind = schema.record_kind(entry, {}) if entry not in schema.JSON_ENTRIES else None
        try:
            value = DECODERS[kind.encoding if kind else "json"](v)
        except Exception as e:  # any decode failure is a finding, not a crash
            _unreadable(out, k, entry, ids, f"{type(e).__name__}: {e}", bad, cut)
            continue
        if kind is None:  # a JSON record
            _record(out, k, entry, ids, value, keyset, bad, cut)
            continue
        parent = None
        if kind.parent:
            parent = parents[kind.parent].get(ids["id"])
            if parent is None:  # its record was lost or is broken: the entry goes with its unit
                if ids["id"] not in out.broken:
                    bad(k, f"{entry} without its {kind.parent} record (orphan)")
                else:
                    out.drop.add(k)
                continue
        why = kind.check(value, parent, ids) if kind.check else None
        if why:
            _unreadable(out, k, entry, ids, why, bad, cut)
    _notes(out, bad)
    return out


def _record(out: Audit, k: bytes, entry: str, ids: dict, value: object, keyset: set[bytes], bad, cut) -> None:
    """Check one JSON record by its kind, note it for its entries' checks, and check what it lists exists."""
    why = schema.record_problem(entry, value, ids)
    if why:
        _unreadable(out, k, entry, ids, why, bad, cut)
        if entry == "photo-note" and isinstance(value, dict) and isinstance(value.get("name"), str):
            out.lost_photos.append(value["name"])
        return
    if entry == "support-set":
        out.supports[ids["id"]] = value
        for i in range(value["n_images"]):
            if any(f"s/{ids['id']}/{what}/{i:05d}".encode() not in keyset for what in LISTED[entry]):
                bad(k, f"support set lists {value['n_images']} images but image {i} is missing")
                cut(ids["id"], i)
                out.drop.discard(k)  # the record stays, with the images before the first missing one
                break
    elif entry == "class":
        out.records[ids["id"]] = value
        missing = [n for n in value["arrays"] if f"p/{ids['id']}/a/{n}".encode() not in keyset]
        if missing:
            bad(k, f"class {value['name']!r}: array {missing[0]} missing")
    elif entry == "photo-note":
        out.notes[ids["id"]] = value


def _unreadable(out: Audit, k: bytes, entry: str, ids: dict, why: str, bad, cut) -> None:
    """A broken entry: a support image cuts its set there; a broken record takes its unit's entries with it."""
    bad(k, why)
    if entry in ("support-image", "attribution"):
        out.drop.discard(k)
        cut(ids["id"], int(ids["i"]))
    elif entry == "support-set":
        cut(ids["id"], 0)  # an unreadable support record: the whole set is drawn again
        out.broken.add(ids["id"])
    elif entry == "class":
        out.broken.add(ids["id"])


def _notes(out: Audit, bad) -> None:
    """A photo note stays while its photos are whole or a class part they built is kept (the name still
    finds it); otherwise the name no longer stands for any photos and the note goes."""
    used = {r.get("photo_note") for _, r in out.kept_classes()}
    for uid, note in out.notes.items():
        n, meta = note["n_photos"], out.supports.get(note["photo_set"])
        whole = meta is not None and meta["n_images"] >= n and out.truncate.get(note["photo_set"], n) >= n
        if not whole and uid not in used:
            bad(
                f"u/{uid}".encode(),
                f"photo note of {note['name']!r}: its photos are lost and no class built from them is left",
            )
            out.lost_photos.append(note["name"])


def check(cache: Cache, repair: bool = False) -> Audit:
    """`audit` over every entry of `cache`; with `repair`, delete what is broken (whole units) in one transaction."""
    keys = [k for k, _ in cache.scan(b"", values=False)]  # values are read one at a time: memory stays flat
    found = audit(keys, cache.get)
    if repair and (found.drop or found.truncate):
        cache.write(repairs(found, keys))
    return found


def verify(cache: Cache, repair: bool = False) -> list[Problem]:
    """The problems `check` finds ([] when sound); with `repair`, broken units are deleted."""
    return check(cache, repair).problems


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
    lost_photos: list[str]


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
    return Rebuilt(problems, classes, original, result.lost_photos)


def _put(env, items: dict[bytes, bytes]) -> None:
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v)
