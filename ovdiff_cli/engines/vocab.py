"""Paper §3 "Class prototypes", the stage: class names → cached prototypes, building only what is missing.

For each class: sample its support set (sampling stage), propose fg/bg masks once (on DINO keys for
ncut, independent of the extractor spec), then for each part of the spec stream the support
images through its extractor, resize each batch's masks to that part's grid, fold the batch into that
part's own prototypes, and commit the part in one cache transaction. A part already cached for the same (name, seed, masks, part model,
settings) is loaded with no model loaded or called, so a vocabulary grows one class at a time, a
class built for `sd+dino+clip` serves any subset of those parts, and segmenting never regenerates.

Prototypes are stored as float32 (the paper's 0.39 MB per class for CLIP/DINO is 2×65 rows × 768 × 4
bytes), or as float16 with `ProtoConfig.proto_dtype` "fp16" (its own cache key; read back as float32).
Sharing them (export / import) lives in `sharing`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .. import names as naming
from ..config import PROTO_KINDS
from ..errors import CacheError, InvalidSetting, MissingClasses, OvdiffError
from ..store.cache import now_iso
from ..store.keys import PROTO_VERSION, class_ids, mask_id, part_id, photo_set_id, support_key
from ..store.protos import load_class as load_class  # reading lives in store.protos; re-exported here
from ..store.protos import load_head as load_head
from ..store.protos import load_heads, load_parts
from ..types import ClassParts

if TYPE_CHECKING:
    from ..config import ProtoConfig, SampleConfig
    from ..models.presets import ModelSpecs
    from ..store.cache import Cache
    from ..types import StageSource
    from .photos import PhotoSet

OnEvent = Callable[[str, str, int, int], None]
RemoteBuild = Callable[[str, "PhotoSet", dict, "str | None"], None]  # (norm, photos, note, kind): built and imported


STORAGE = {"fp32": np.float32, "fp16": np.float16}  # ProtoConfig.proto_dtype → the prototypes' stored dtype


def stored(arrays: dict[str, np.ndarray], proto_dtype: str) -> dict[str, np.ndarray]:
    """A class part's arrays as the cache keeps them: the prototypes in `proto_dtype` (fp16: half the bytes),
    everything else (masks, part labels, sources) as it is."""
    if proto_dtype == "fp32":
        return arrays
    kinds = {f"{g}/{k}" for g in ("fg", "bg") for k in PROTO_KINDS}
    return {n: a.astype(STORAGE[proto_dtype]) if n in kinds else a for n, a in arrays.items()}


# --------------------------------------------------------------------------- reading


# --------------------------------------------------------------------------- building


def _cached_masks(cache: Cache, candidates: list[str], mid: str) -> tuple[np.ndarray, dict[str, int]] | None:
    """The coded masks (N,g,g) uint8 and proposal/threshold counts stored with any cached part of the same masks."""
    for pid in candidates:
        rec = cache.class_record(pid)
        if rec is not None and rec.get("mask_id") == mid and "masks" in rec["arrays"]:
            counts = {"proposals": int(rec.get("mask_proposals", 0)), "thresholds": int(rec.get("mask_thresholds", 0))}
            return cache.class_arrays(pid, ["masks"])["masks"], counts
    return None


def _build(
    cache: Cache,
    stages: StageSource,
    norm: str,
    todo: dict[str, str],
    siblings: list[str],
    seed: int,
    sample_cfg: SampleConfig,
    proto_cfg: ProtoConfig,
    kind: str,
    kind_source: str,
    on_event: OnEvent | None,
    photo: dict | None = None,
) -> None:
    """Build the parts `todo` (part → pid) of one class, each committed in its own transaction.

    photo: the note of a class built from the user's photos (`photos.photo_class`): its support set is
    those photos, then `sample_cfg.n_images` generated images.

    Support images are sampled only where missing; the masks come from a cached part of the same
    masks (`siblings`, pids to look in) when there is one, else from the proposer. Each part then
    streams the support images through its extractor at feature_size, a batch at a time, resizes
    that batch's masks to its own grid and folds it into its prototypes (`build_prototypes`: K-means
    in its own space on a bounded sample of masked cells), so memory does not grow with N. The part
    the proposer reads (DINO for ncut) is built from the batches that make the masks.
    """
    from ..method.stage2_prototypes.classbuild import part_prototypes
    from .support import ensure_support_set, load_samples

    def progress(stage: str):
        return None if on_event is None else (lambda done, total: on_event(stage, norm, done, total))

    digest = photo["photos"] if photo else None
    mid = mask_id(norm, seed, stages.specs, sample_cfg, proto_cfg, digest)
    samples = load_samples(cache, photo["photo_set"], photo["n_photos"]) if photo else []
    sid, meta = None, {}
    if not photo or sample_cfg.n_images:
        sid, meta = ensure_support_set(cache, stages, norm, seed, sample_cfg, progress("sample"))
        samples += load_samples(cache, sid, sample_cfg.n_images)
    found = _cached_masks(cache, siblings, mid)
    built = part_prototypes(
        samples, stages, proto_cfg, list(todo), seed, kind == "stuff", found, str(cache.root), progress
    )
    try:  # the part-label spill files live on the cache's disk: a full disk says so as a commit does
        for part_name, arrays, counts in built:
            record = {
                "name": norm,
                "norm": norm,
                "seed": seed,
                "extractor": part_name,
                "part": part_name,
                "mask_id": mid,
                "support_id": sid,
                "support_key": support_key(norm, seed, sample_cfg, digest),
                **(
                    {
                        "photos": digest,
                        "photo_set": photo["photo_set"],
                        "n_photos": photo["n_photos"],
                        "photo_note": photo["note"],
                    }
                    if photo
                    else {}
                ),
                "mask_proposer": proto_cfg.mask_proposer,
                "mask_features": proto_cfg.mask_features,
                "k_parts": proto_cfg.k_parts,
                "kmeans_iters": proto_cfg.kmeans_iters,
                "kmeans_max_points": proto_cfg.kmeans_max_points,
                "feature_size": proto_cfg.feature_size,
                "feature_grid": list(arrays["fg/part_labels"].shape[1:]),
                "mask_grid": list(arrays["masks"].shape[1:]),
                "n_images": len(samples),
                "mask_proposals": counts["proposals"],
                "mask_thresholds": counts["thresholds"],
                "kind": kind,
                "kind_source": kind_source,
                "models": stages.specs.identity(),
                "generator": meta.get("generator"),
                "sampler": sample_cfg.fingerprint_fields(),
                "proto_version": PROTO_VERSION,
                "created_at": now_iso(),
            }
            cache.put_class(todo[part_name], record, stored(arrays, proto_cfg.proto_dtype))
    except OSError as e:
        raise CacheError(cache.write_failure(e)) from e
    if on_event:
        on_event("prototypes", norm, 1, 1)


def put_prototypes(
    cache: Cache,
    specs: ModelSpecs,
    protos: ClassParts,
    seed: int,
    sample_cfg: SampleConfig,
    proto_cfg: ProtoConfig,
    source: str,
) -> list[str]:
    """Cache prototypes made elsewhere (an experiment, a synthetic bank) as class `protos.name`, each part
    under the id `ensure_classes` looks up for these settings, so they are used as built ones are;
    returns the ids in spec order.

    protos.parts[p].fg / bg: kind → (n, D) arrays; instance rows take their support images from
    `sources` (-1 when unknown). No support images or masks are stored, as for an import; `source` is recorded.
    """
    norm = naming.validate(protos.name)
    pids = class_ids(norm, seed, specs, sample_cfg, proto_cfg)
    for part, pid in pids.items():
        one = protos.parts[part]
        arrays: dict[str, np.ndarray] = {}
        for group, kinds in (("fg", one.fg), ("bg", one.bg)):
            for kind, a in kinds.items():
                arrays[f"{group}/{kind}"] = np.asarray(a, dtype=STORAGE[proto_cfg.proto_dtype])
            if "instance" in kinds:
                src = one.sources.get(f"{group}/instance")
                arrays[f"{group}/instance_src"] = np.asarray(
                    np.full(len(kinds["instance"]), -1) if src is None else src, np.int64
                )
        record = {
            "name": norm,
            "norm": norm,
            "seed": seed,
            "extractor": part,
            "part": part,
            "mask_id": mask_id(norm, seed, specs, sample_cfg, proto_cfg),
            "support_key": support_key(norm, seed, sample_cfg),
            "mask_proposer": proto_cfg.mask_proposer,
            "k_parts": proto_cfg.k_parts,
            "kmeans_iters": proto_cfg.kmeans_iters,
            "kmeans_max_points": proto_cfg.kmeans_max_points,
            "feature_size": proto_cfg.feature_size,
            "n_images": sample_cfg.n_images,
            "kind": protos.kind,
            "kind_source": source,
            "models": specs.identity(),
            "sampler": sample_cfg.fingerprint_fields(),
            "proto_version": PROTO_VERSION,
            "created_at": now_iso(),
        }
        cache.put_class(pid, record, arrays)
    return list(pids.values())


def _make_stuff(cache: Cache, pid: str, rec: dict, kind_source: str) -> None:
    """Thing → stuff needs no model: drop the bg prototypes, keep everything else."""
    arrays = {n: a for n, a in cache.class_arrays(pid).items() if not n.startswith("bg/")}
    rec = {k: v for k, v in rec.items() if k != "arrays"}
    cache.put_class(pid, dict(rec, kind="stuff", kind_source=kind_source, created_at=now_iso()), arrays)


def _check_kinds(kinds: dict[str, str] | None) -> dict[str, str]:
    from ..method.stage2_prototypes.stuff import KINDS

    out = {}
    for name, kind in (kinds or {}).items():
        if kind not in KINDS:
            raise OvdiffError(f"class {name!r}: kind must be 'stuff' or 'thing', got {kind!r}")
        out[naming.validate(name)] = kind
    return out


def ensure_classes(
    cache: Cache,
    stages: StageSource,
    names: list[str],
    seed: int,
    sample_cfg: SampleConfig,
    proto_cfg: ProtoConfig,
    kinds: dict[str, str] | None = None,
    build: bool = True,
    on_event: OnEvent | None = None,
    photos: dict[str, dict] | None = None,
    arrays: bool = True,
) -> list[ClassParts]:
    """The prototypes of every class in `names` (in that order), in every part of the extractor
    spec, building the parts not cached.

    Each part of a class is its own cache entry, keyed by the class's support masks and that part
    alone, so a class built for `sd+dino+clip` serves `dino` (or `sd+clip`) with no model loaded.
    A cached part is read without loading or calling any model. Missing parts are built (sampling
    only the support images not yet cached, reusing the masks of a cached part) under a per-class
    lock, re-checked once the lock is held, so concurrent processes build each part once. `kinds`
    overrides stuff/thing per class ("user" in the record); a cached part whose kind differs is
    converted in place (thing → stuff drops bg prototypes; stuff → thing re-extracts from the
    cached support set). With build=False nothing is written and a missing or differently-kinded
    class is an error naming the command that builds it (MissingClasses). on_event(stage, class, done, total),
    stage in "sample", "masks", "extract", "prototypes", "cached".

    A class noted as built from the user's photos (`photos.photo_class`, or given in `photos`: name →
    note) has its photos, then the note's number of generated images, as its support set.

    arrays=False returns heads (`load_heads`): no prototype is read, for a segmenter that reads each
    image's kept classes from the cache (memory that does not grow with the vocabulary).
    """
    from ..config import beside_photos
    from .photos import photo_class

    norms = [naming.validate(n) for n in names]
    overrides = _check_kinds(kinds)
    unknown = sorted(set(overrides) - set(norms))
    if unknown:
        raise OvdiffError(f"stuff/thing given for {', '.join(map(repr, unknown))}, which is not among the classes")
    notes = {n: (photos or {}).get(n) or photo_class(cache, n, seed, stages.specs) for n in dict.fromkeys(norms)}
    configs = {n: beside_photos(sample_cfg, note["n_generated"]) if note else sample_cfg for n, note in notes.items()}
    pids = {
        n: class_ids(n, seed, stages.specs, configs[n], proto_cfg, note and note["photos"]) for n, note in notes.items()
    }

    def stale(n: str, rec: dict | None) -> bool:
        return rec is None or (n in overrides and rec["kind"] != overrides[n])

    def todo(n: str) -> dict[str, str]:
        return {p: pid for p, pid in pids[n].items() if stale(n, cache.class_record(pid))}

    if not build:
        missing = [n for n in dict.fromkeys(norms) if todo(n)]
        if missing:
            raise MissingClasses(missing, seed, stages.specs, sample_cfg, proto_cfg)
    if proto_cfg.mask_proposer == "cutler" and any(todo(n) for n in dict.fromkeys(norms)):
        stages.mask_proposer("cutler")  # a missing checkpoint stops the build before any image is drawn
    for n in dict.fromkeys(norms):
        if not todo(n):
            if on_event:
                on_event("cached", n, 1, 1)
            continue
        mid = mask_id(n, seed, stages.specs, configs[n], proto_cfg, notes[n] and notes[n]["photos"])
        with cache.lock(mid):
            parts = todo(n)  # another process may have built them while we waited
            if not parts:
                continue
            for p, pid in list(parts.items()):
                rec = cache.class_record(pid)
                if rec is not None and overrides[n] == "stuff":
                    _make_stuff(cache, pid, rec, "user")
                    del parts[p]
            if not parts:
                continue
            build_class(cache, stages, n, seed, configs[n], proto_cfg, overrides.get(n), on_event, parts, notes[n])
    load = load_parts if arrays else load_heads
    return [load(cache, pids[n]) for n in norms]


def build_class(
    cache: Cache,
    stages: StageSource,
    norm: str,
    seed: int,
    sample_cfg: SampleConfig,
    proto_cfg: ProtoConfig,
    kind: str | None = None,
    on_event: OnEvent | None = None,
    parts: dict[str, str] | None = None,
    photo: dict | None = None,
) -> list[str]:
    """Build one class into `cache`, every part of the extractor spec or only `parts` (part → pid),
    whatever is cached for them; returns the ids of all its parts, in spec order. `photo`: the note of
    a class from the user's photos (`photos.photo_class`), None for a generated class.

    `kind` None: the kind of a cached part of the same masks (any spec), else classified. The step
    `ensure_classes` runs (under the class's lock) for each class with missing parts, and what an
    engine's worker runs.
    """
    from ..config import PARTS
    from ..method.stage2_prototypes.stuff import classify

    digest = photo["photos"] if photo else None
    pids = class_ids(norm, seed, stages.specs, sample_cfg, proto_cfg, digest)
    mid = mask_id(norm, seed, stages.specs, sample_cfg, proto_cfg, digest)
    # every part these masks may already have (any spec), to reuse masks and kind from
    siblings = [part_id(norm, seed, p, mid, stages.specs, proto_cfg) for p in (*PARTS, "procedural")]
    known = [r for r in map(cache.class_record, siblings) if r is not None]
    if kind is not None:
        kind, source = kind, "user"
    elif known:
        kind, source = known[0]["kind"], known[0]["kind_source"]
    else:
        kind, source = classify(norm, stages, cache)
    _build(
        cache,
        stages,
        norm,
        dict(pids) if parts is None else parts,
        siblings,
        seed,
        sample_cfg,
        proto_cfg,
        kind,
        source,
        on_event,
        photo,
    )
    return list(pids.values())


def classes_to_build(
    cache: Cache,
    specs: ModelSpecs,
    names: list[str],
    seed: int,
    sample_cfg: SampleConfig,
    proto_cfg: ProtoConfig,
    kinds: dict[str, str] | None = None,
) -> dict[str, str | None]:
    """The classes of `names` that `ensure_classes` would build with models (named by `specs`, none
    loaded): normalised name → the stuff/thing override (None: classify). A class is listed when any
    part of the spec is missing, or must turn from stuff into a thing; cached parts, and thing →
    stuff changes, need no model."""
    overrides = _check_kinds(kinds)
    todo: dict[str, str | None] = {}
    for n in dict.fromkeys(naming.validate(n) for n in names):
        for pid in class_ids(n, seed, specs, sample_cfg, proto_cfg).values():
            rec = cache.class_record(pid)
            if rec is None or (rec["kind"] != overrides.get(n, rec["kind"]) and overrides[n] == "thing"):
                todo[n] = overrides.get(n)
    return todo


# --------------------------------------------------------------------------- finding (sharing: `sharing`)


def build_from_photos(
    cache: Cache,
    stages: StageSource,
    name: str,
    folder: str,
    seed: int,
    sample_cfg: SampleConfig,
    proto_cfg: ProtoConfig,
    n_generated: int = 0,
    kinds: dict[str, str] | None = None,
    on_event: OnEvent | None = None,
    remote: RemoteBuild | None = None,
) -> ClassParts:
    """`protos add NAME --images DIR` (beyond the paper): the class from the user's photos, plus `n_generated`
    generated images; the photos are read and checked before anything is written, and the note that NAME
    stands for them is written once the class is built (`engines.photos`).

    `remote(norm, photos, note, kind)` builds the class elsewhere (an engine's worker: `raycluster.build_photo_class`)
    and imports it into `cache`; it runs only when the class is not cached already, and no model loads here.
    """
    from .photos import ensure_photo_set, photo_note, put_photo_class, read_photos

    norm = naming.validate(name)
    if n_generated < 0:
        raise InvalidSetting("n_images", f"must be at least 0 beside photos, got {n_generated}")
    photos = read_photos(folder, sample_cfg.size)
    if remote is None:
        sid = ensure_photo_set(cache, stages, norm, photos, sample_cfg)
    else:
        sid = photo_set_id(norm, photos.digest, stages.specs, sample_cfg)
    note = photo_note(norm, seed, stages.specs, sid, photos, n_generated)
    if remote is not None:
        try:
            ensure_classes(cache, stages, [norm], seed, sample_cfg, proto_cfg, kinds, build=False, photos={norm: note})
        except MissingClasses:
            remote(norm, photos, note, _check_kinds(kinds).get(norm))
    built = ensure_classes(
        cache, stages, [norm], seed, sample_cfg, proto_cfg, kinds, on_event=on_event, photos={norm: note}
    )
    put_photo_class(cache, norm, seed, stages.specs, note)
    return built[0]
