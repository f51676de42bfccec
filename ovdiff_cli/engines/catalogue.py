"""The catalogue of cached classes: find, summarise, remove, show and export them (`ovdiff protos list|rm|show|
export`, `Pipeline.catalogue`). Building classes is `vocab`'s; sharing files is `store.sharing`'s."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import names as naming
from ..config import PROTO_KINDS
from ..errors import ClassNotFound, InvalidSetting, OvdiffError, SupportImagesMissing
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


@dataclass
class CachedClass:
    """One cached class part: its id, its record (name, seed, extractor, kind, models, …) and, where a
    listing measured it, its size on disk in bytes."""

    id: str
    record: dict
    size_bytes: int | None = None

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def prototypes(self) -> dict[str, int]:
        """Prototype rows per group ("fg", "bg")."""
        return prototype_counts(self.record)

    def summary(self) -> dict:
        """What `ovdiff protos list --json` shows of it: JSON-ready, full id, size in bytes."""
        rec = self.record
        return {
            "id": self.id,
            "class": rec["name"],
            "seed": rec["seed"],
            "extractor": rec["extractor"],
            "prototypes": self.prototypes,
            "kind": rec["kind"],
            "kind_source": rec.get("kind_source"),
            "size_bytes": self.size_bytes,
            "mask_proposer": rec.get("mask_proposer"),
            "k_parts": rec.get("k_parts"),
            "n_images": rec.get("n_images"),
            "preset": rec.get("models", {}).get("preset"),
            "models": rec.get("models", {}),
            "created_at": rec.get("created_at"),
        }


@dataclass
class CacheCheck:
    """What `Catalogue.verify` found. problems: (key, reason) of each broken entry ([] when sound);
    repaired: whether broken entries were removed; counts: the cache's entry counts (None for a data
    file LMDB cannot map); damage: what is wrong with such a file; kept/original: after its repair,
    the intact classes copied into a fresh cache and where the damaged file now lies; classes: the
    classes of a mappable cache."""

    path: Path
    problems: list
    repaired: bool
    counts: dict | None = None
    damage: str | None = None
    kept: int | None = None
    original: Path | None = None
    classes: list[CachedClass] = field(default_factory=list)
    lost_photos: list[str] = field(default_factory=list)  # names whose photos a repair lost (give them again)

    @property
    def sound(self) -> bool:
        return not self.problems

    def document(self) -> dict:
        """`ovdiff cache verify --json`: the same keys for a sound, broken or unmappable cache."""
        counts = self.counts or {}
        doc = {
            "path": str(self.path),
            "sound": self.sound,
            "repaired": self.repaired,
            "entries": counts.get("entries"),
            "classes": counts.get("classes", self.kept),
            "support_entries": counts.get("support_entries"),
            "text_embeddings": counts.get("text_embeddings"),
            "problems": [{"key": p.key, "reason": p.reason} for p in self.problems],
            "lost_photos": self.lost_photos,
        }
        return doc | ({"original": str(self.original)} if self.original is not None else {})


class Catalogue:
    """The classes of a prototype cache: list, remove, show, export and import them; the cache's info,
    verify and repair. Opens only the cache (no preset, no model), as `ovdiff protos …`/`ovdiff cache …`.

    cache: the folder (default: $OVDIFF_CACHE, else the user cache dir); create=False: a folder that holds
    no cache is an error (every call but `import_file` only reads or removes)."""

    def __init__(self, cache: str | Path | None = None, create: bool = False):
        from ..store.cache import default_cache_dir

        if cache is not None and not isinstance(cache, (str, Path)):
            raise InvalidSetting("cache", f"takes a folder path, not {type(cache).__name__} {cache!r:.40}")
        self.path = Path(cache).expanduser() if cache else default_cache_dir()
        self.create = create
        self._cache: Cache | None = None

    def __repr__(self) -> str:
        return f"Catalogue({str(self.path)!r})"

    @property
    def cache(self) -> Cache:
        """The opened cache (store.cache.Cache)."""
        if self._cache is None:
            from ..store.cache import Cache

            self._cache = Cache(self.path, create=self.create)
        return self._cache

    def list(
        self,
        targets: list[str] | None = None,
        seed: int | None = None,
        extractor: str | None = None,
        sizes: bool = True,
    ) -> list[CachedClass]:
        """The cached classes matching `targets` (names, or ids of 6+ characters; None: all), of `seed` and
        of the parts of `extractor` when given, oldest first, with their sizes unless `sizes=False`. A
        target that matches nothing is ClassNotFound."""
        seed = _seed(seed)  # a bad filter is refused before the cache is opened
        found = match_classes(self.cache, targets, seed, extractor)
        return [CachedClass(pid, rec, self.cache.class_size(pid) if sizes else None) for pid, rec in found]

    def remove(
        self,
        targets: list[str],
        seed: int | None = None,
        extractor: str | None = None,
        with_support: bool = False,
    ) -> list[CachedClass]:
        """Remove the classes matching `targets` (as `list`); with_support, their support images too unless
        another cached class uses them. Returns what went."""
        if not targets:
            raise OvdiffError("name the classes to remove (names or ids from 'ovdiff protos list')")
        seed = _seed(seed)
        return [CachedClass(p, r) for p, r in remove_classes(self.cache, targets, seed, extractor, with_support)]

    def show(
        self, target: str, out: str | Path, seed: int | None = None, extractor: str | None = None
    ) -> tuple[CachedClass, int]:
        """Draw the newest class matching `target` (its support images, fg masks red, bg blue) to the
        PNG/JPEG file `out`; (the class, how many images)."""
        seed = _seed(seed)
        pid, rec, count = write_class_sheet(self.cache, target, seed, extractor, Path(out).expanduser())
        return CachedClass(pid, rec), count

    def export_file(
        self, path: str | Path, targets: list[str] | None = None, seed: int | None = None, extractor: str | None = None
    ) -> tuple[list[CachedClass], int]:
        """Write the classes matching `targets` (all when None) to one .safetensors file (prototypes,
        masks and records; no support images); (the classes, bytes written)."""
        seed = _seed(seed)
        found, size = export_matching(self.cache, targets, seed, extractor, Path(path).expanduser())
        return [CachedClass(p, r) for p, r in found], size

    def import_file(self, path: str | Path) -> list[CachedClass]:
        """Load the classes of a file written by `export_file` into this cache, bit for bit (creating it)."""
        from ..store.cache import Cache
        from ..store.sharing import import_classes

        cache = self._cache or Cache(self.path, create=True)
        return [CachedClass(p, cache.class_record(p)) for p in import_classes(cache, Path(path).expanduser())]

    def info(self) -> dict:
        """Where the cache is, its schema version, sizes and entry counts."""
        return self.cache.info()

    def verify(self, repair: bool = False) -> CacheCheck:
        """Decode every entry, check shapes, metadata and checksums. repair: delete broken entries (whole
        classes; support sets cut) so the next run rebuilds them; a data file LMDB cannot map is copied,
        what is intact of it, into a fresh cache (the original kept aside)."""
        from ..store.audit import Problem, check, rebuild
        from ..store.cache import CacheDamaged

        try:
            cache = self.cache
        except CacheDamaged as e:
            if not repair:
                return CacheCheck(self.path, [Problem("data.mdb", e.problem)], False, damage=e.problem)
            done = rebuild(self.path, e.problem)
            return CacheCheck(
                self.path, done.problems, True, None, e.problem, done.classes, done.original, [], done.lost_photos
            )
        found = check(cache, repair=repair)
        classes = [CachedClass(pid, rec) for pid, rec in found.kept_classes()]  # no record decoded twice
        problems = found.problems
        return CacheCheck(
            self.path, problems, repair and bool(problems), cache.info(), classes=classes, lost_photos=found.lost_photos
        )

    def repair(self) -> CacheCheck:
        """`verify(repair=True)`."""
        return self.verify(repair=True)

    @staticmethod
    def count(classes: list[CachedClass]) -> str:
        """How many classes these entries hold, as the commands say it ("2 class(es) (6 entries, …)")."""
        return count_classes([(c.id, c.record) for c in classes])


def _seed(seed: int | None) -> int | None:
    """A seed filter has the range of a seed."""
    from ..limits import check_seed

    if seed is not None:
        check_seed(seed)
    return seed
