"""The catalogue of cached classes: find, summarise, remove, show and export them (`ovdiff protos list|rm|show|
export`, `Pipeline.catalogue`). Building classes is `vocab`'s; sharing files is `store.sharing`'s."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import names as naming
from ..config import PROTO_KINDS
from ..errors import ClassNotFound, OvdiffError, SupportImagesMissing
from ..store.keys import photo_note_key

if TYPE_CHECKING:
    from ..store.cache import Cache


def find_classes(cache: Cache, name: str | None = None) -> list[tuple[str, dict]]:
    """(pid, record) of the cached class parts, all or those called `name` (normalised), oldest first."""
    norm = naming.validate(name) if name is not None else None
    found = [(pid, rec) for pid, rec in cache.classes() if norm is None or rec.get("norm") == norm]
    return sorted(found, key=lambda pr: (pr[1].get("created_at", ""), pr[0]))


def prototype_counts(record: dict) -> dict[str, int]:
    """Rows per group ("fg", "bg") from a record's array listing."""
    counts = {"fg": 0, "bg": 0}
    for name, spec in record.get("arrays", {}).items():
        group, _, kind = name.partition("/")
        if group in counts and kind in PROTO_KINDS:
            counts[group] += spec["shape"][0]
    return counts


def count_classes(found: list[tuple[str, dict]]) -> str:
    """How many classes the cache entries (pid, record) hold, as commands say it: a class built for
    sd+dino+clip is one class stored as three part entries, which share its mask id."""
    classes = len({rec.get("mask_id") or pid for pid, rec in found})
    entries = "" if classes == len(found) else f" ({len(found)} entries, one per extractor part)"
    return f"{classes} class(es){entries}"


def class_summary(cache: Cache, pid: str, record: dict) -> dict:
    """What `ovdiff protos list` shows of a cached class, JSON-ready (sizes in bytes, full id)."""
    return {
        "id": pid,
        "class": record["name"],
        "seed": record["seed"],
        "extractor": record["extractor"],
        "prototypes": prototype_counts(record),
        "kind": record["kind"],
        "kind_source": record.get("kind_source"),
        "size_bytes": cache.class_size(pid),
        "mask_proposer": record.get("mask_proposer"),
        "k_parts": record.get("k_parts"),
        "n_images": record.get("n_images"),
        "preset": record.get("models", {}).get("preset"),
        "models": record.get("models", {}),
        "created_at": record.get("created_at"),
    }


def remove_classes(
    cache: Cache, targets: list[str], seed: int | None = None, extractor: str | None = None, with_support: bool = False
) -> list[tuple[str, dict]]:
    """`ovdiff protos rm`: remove the cached classes matching `targets` (as `match_classes`); with_support,
    also their support images unless another cached class that stays uses them. Returns what went."""
    classes = match_classes(cache, targets, seed, extractor)
    gone = {pid for pid, _ in classes}
    still_used = {rec.get("support_id") for pid, rec in find_classes(cache) if pid not in gone}
    for pid, rec in classes:
        cache.remove_class(pid, with_support=with_support and rec.get("support_id") not in still_used)
        if rec.get("photo_note"):  # the name no longer stands for these photos
            cache.write({photo_note_key(rec["photo_note"]): None})
    return classes


def class_support(cache: Cache, pid: str) -> tuple[list[np.ndarray], np.ndarray]:
    """A cached class's support images (HxWx3 uint8) and their fg/bg masks ((N,h,w) uint8: 1 fg, 2 bg).

    SupportImagesMissing when the class came without them (an import).
    """
    rec = cache.class_record(pid)
    if rec is None:
        raise ClassNotFound(pid)
    masks = cache.class_arrays(pid, ["masks"]).get("masks")
    try:
        if masks is None:
            raise KeyError("masks")
        n_photos = rec.get("n_photos", 0)  # a class from photos: the photos first, then its generated images
        images = [cache.support_image(rec["photo_set"], i) for i in range(n_photos)]
        return images + [cache.support_image(rec["support_id"], i) for i in range(len(masks) - n_photos)], masks
    except KeyError:
        raise SupportImagesMissing(rec["name"], rec["seed"], rec.get("models", {}).get("preset")) from None


def match_classes(
    cache: Cache, targets: list[str] | None, seed: int | None = None, extractor: str | None = None
) -> list[tuple[str, dict]]:
    """Cached class parts matching any target (a class name, or an id or id prefix of 6+ characters),
    filtered by seed and by extractor (the parts of that spec).

    No targets: every class. A target that matches nothing is an error naming `ovdiff protos list`.
    """
    every = find_classes(cache)

    from ..config import spec_parts

    parts = None if extractor is None else spec_parts(extractor)

    def keep(rec: dict) -> bool:
        return (seed is None or rec.get("seed") == seed) and (parts is None or rec.get("extractor") in parts)

    if not targets:
        return [(p, r) for p, r in every if keep(r)]
    out: dict[str, dict] = {}
    for t in targets:
        norm = naming.validate(t)
        hits = [(p, r) for p, r in every if keep(r) and (r.get("norm") == norm or (len(t) >= 6 and p.startswith(t)))]
        if not hits:
            raise ClassNotFound(t, seed, extractor)
        out.update(hits)
    return list(out.items())


def write_class_sheet(
    cache: Cache, target: str, seed: int | None, extractor: str | None, out: Path
) -> tuple[str, dict, int]:
    """`ovdiff protos show`: the newest cached class matching `target` (name or id; `seed`, `extractor` narrow
    it), its support images with their fg (red) and bg (blue) masks drawn to `out`; (id, record, images)."""
    from ..io.outdir import check_not_in_cache
    from ..io.sheets import mask_sheet, save_sheet

    check_not_in_cache(out, cache.root)
    pid, rec = match_classes(cache, [target], seed, extractor)[-1]
    images, masks = class_support(cache, pid)
    title = (
        f"{rec['name']} ({rec['kind']})  |  seed {rec['seed']}  |  {rec['extractor']}, {rec['mask_proposer']}  |  "
        "fg red, bg blue"
    )
    save_sheet(mask_sheet(images, masks, title), Path(out))
    return pid, rec, len(images)


def export_matching(
    cache: Cache, targets: list[str] | None, seed: int | None, extractor: str | None, path: Path
) -> tuple[list[tuple[str, dict]], int]:
    """`ovdiff protos export`: the cached classes matching `targets` (every class when None) written to one
    .safetensors file at `path` (never inside the cache); (the classes, bytes written)."""
    from ..io.outdir import check_not_in_cache
    from ..store.sharing import export_classes

    check_not_in_cache(path, cache.root, None)
    found = match_classes(cache, targets, seed, extractor)
    if not found:
        raise OvdiffError(f"nothing to export: no classes cached in {cache.root}")
    return found, export_classes(cache, [pid for pid, _ in found], path)
