"""Paper §3 "Class prototypes", the stage: class names → cached prototypes, building only what is missing.

For each class: sample its support set (sampling stage), extract features of the support images,
propose fg/bg masks, aggregate prototypes, and commit the class in one cache transaction. A class
already cached for the same (name, seed, extractor, models, settings) is loaded with no model
loaded or called, so a vocabulary grows one class at a time and segmenting never regenerates.

Prototypes are stored as float32 (the paper's 0.39 MB per class for CLIP/DINO is 2×65 rows × 768 × 4
bytes). Exported files carry the prototypes and records, not the support images.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import names as naming
from .cache import now_iso
from .errors import CacheError, ClassNotFound, InvalidSetting, MissingClasses, OvdiffError, SupportImagesMissing
from .keys import PROTO_VERSION, class_id, support_key
from .types import PROTO_KINDS, ClassPrototypes

if TYPE_CHECKING:
    import torch

    from .cache import Cache
    from .config import ProtoConfig, SampleConfig
    from .models.presets import ModelSpecs
    from .types import Extractor, MaskProposer, Sample, StageSource

EXPORT_FORMAT = "ovdiff-prototypes"
EXPORT_VERSION = "1"
OnEvent = Callable[[str, str, int, int], None]


# --------------------------------------------------------------------------- settings


def check_proto_config(cfg: ProtoConfig) -> None:
    """Reject settings that cannot build prototypes, naming the option, before any model loads."""
    from .features import parse_spec
    from .masks import PROPOSERS

    if cfg.extractor != "procedural":
        parse_spec(cfg.extractor)
    if cfg.mask_proposer not in PROPOSERS:
        raise InvalidSetting("mask_proposer", f"{cfg.mask_proposer!r} is unknown; choose one of: {', '.join(PROPOSERS)}")
    if cfg.k_parts < 1:
        raise InvalidSetting("k_parts", f"must be at least 1, got {cfg.k_parts}")
    if cfg.feature_size < 8:
        raise InvalidSetting("feature_size", f"must be at least 8 pixels, got {cfg.feature_size}")
    if cfg.batch_size < 1 or cfg.kmeans_iters < 1 or cfg.kmeans_max_points < 1:
        raise OvdiffError("batch_size, kmeans_iters and kmeans_max_points must be at least 1")


# --------------------------------------------------------------------------- reading


def load_class(cache: Cache, pid: str) -> ClassPrototypes:
    """The prototypes of cached class `pid` as float32 arrays, with their support-image sources."""
    rec = cache.class_record(pid)
    if rec is None:
        raise ClassNotFound(pid)
    wanted = [n for n in rec["arrays"] if n.split("/", 1)[-1] in (*PROTO_KINDS, "instance_src")]
    arrays = cache.class_arrays(pid, wanted)
    protos: dict[str, dict[str, np.ndarray]] = {"fg": {}, "bg": {}}
    sources: dict[str, np.ndarray] = {}
    for group in ("fg", "bg"):
        for kind in PROTO_KINDS:
            a = arrays.get(f"{group}/{kind}")
            if a is None:
                continue
            protos[group][kind] = a.astype(np.float32, copy=False)
            src = arrays[f"{group}/instance_src"] if kind == "instance" else np.full(len(a), -1, np.int64)
            sources[f"{group}/{kind}"] = src.astype(np.int64, copy=False)
    return ClassPrototypes(name=rec["name"], kind=rec["kind"], fg=protos["fg"], bg=protos["bg"], pid=pid, sources=sources)


def find_classes(cache: Cache, name: str | None = None) -> list[tuple[str, dict]]:
    """(pid, record) of the cached classes, all or those called `name` (normalised), oldest first."""
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


def class_summary(cache: Cache, pid: str, record: dict) -> dict:
    """What `ovdiff protos list` shows of a cached class, JSON-ready (sizes in bytes, full id)."""
    return {
        "id": pid, "class": record["name"], "seed": record["seed"], "extractor": record["extractor"],
        "prototypes": prototype_counts(record), "kind": record["kind"], "kind_source": record.get("kind_source"),
        "size_bytes": cache.class_size(pid), "mask_proposer": record.get("mask_proposer"),
        "k_parts": record.get("k_parts"), "n_images": record.get("n_images"),
        "preset": record.get("models", {}).get("preset"), "models": record.get("models", {}),
        "created_at": record.get("created_at"),
    }  # fmt: skip


# --------------------------------------------------------------------------- building


class SupportStream:
    """The support set as batches (features, fg, bg), extracted and masked as they are consumed.

    Iterating yields features (B,D,h,w) in the extractor's dtype (size×size images) and fg, bg
    (B,h,w) bool, one extractor batch at a time, so a class build holds one batch of features, not
    N. Afterwards `fallbacks` counts the images that fell back to Otsu thresholding because the
    proposer found nothing, and `grid` is the feature grid (h, w).
    """

    def __init__(self, samples: list[Sample], extractor: Extractor, proposer: MaskProposer, size: int,
                 batch_size: int, on_progress: Callable[[int, int], None] | None = None):  # fmt: skip
        self.samples, self.extractor, self.proposer = samples, extractor, proposer
        self.size, self.batch_size, self.on_progress = size, batch_size, on_progress
        self.fallbacks = 0
        self.grid: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
        from .features import iter_features
        from .masks import fg_bg_masks

        images = [s.image for s in self.samples]
        for first, feats in iter_features(self.extractor, images, self.size, self.batch_size, self.on_progress):
            self.grid = tuple(feats.shape[-2:])
            fg, bg = [], []
            for s, f in zip(self.samples[first : first + len(feats)], feats, strict=True):
                m_fg, m_bg, how = fg_bg_masks(self.proposer.propose(s.image, f), s.attribution, self.grid)
                fg.append(m_fg)
                bg.append(m_bg)
                self.fallbacks += how == "otsu"
            yield feats, np.stack(fg), np.stack(bg)


def _build(
    cache: Cache, stages: StageSource, norm: str, pid: str, seed: int, sample_cfg: SampleConfig, proto_cfg: ProtoConfig,
    kind: str, kind_source: str, on_event: OnEvent | None,
) -> None:  # fmt: skip
    """Sample (what is missing), extract, mask, aggregate, and commit one class in one transaction."""
    from .prototypes import build_prototypes
    from .sampling import ensure_support_set, load_samples

    def progress(stage: str):
        return None if on_event is None else (lambda done, total: on_event(stage, norm, done, total))

    sid, meta = ensure_support_set(cache, stages, norm, seed, sample_cfg, progress("sample"))
    samples = load_samples(cache, sid, sample_cfg.n_images)
    extractor = stages.extractor(proto_cfg.extractor)
    proposer = stages.mask_proposer(proto_cfg.mask_proposer)
    stream = SupportStream(samples, extractor, proposer, proto_cfg.feature_size, proto_cfg.batch_size, progress("extract"))
    try:
        arrays = build_prototypes(
            stream, proto_cfg.k_parts, seed, kind == "stuff", proto_cfg.kmeans_iters, proto_cfg.kmeans_max_points,
            spill_dir=str(cache.root),  # on the cache's disk, not a /tmp that may be RAM
        )
    except OSError as e:  # the part-label spill: a full disk says so as a cache write would
        raise CacheError(cache.write_failure(e)) from e
    record = {
        "name": norm, "norm": norm, "seed": seed, "extractor": proto_cfg.extractor, "support_id": sid,
        "support_key": support_key(norm, seed, sample_cfg), "mask_proposer": proto_cfg.mask_proposer,
        "k_parts": proto_cfg.k_parts, "kmeans_iters": proto_cfg.kmeans_iters,
        "kmeans_max_points": proto_cfg.kmeans_max_points, "feature_size": proto_cfg.feature_size,
        "feature_grid": list(stream.grid), "n_images": len(samples), "otsu_fallbacks": stream.fallbacks,
        "kind": kind, "kind_source": kind_source, "models": stages.specs.identity(), "generator": meta.get("generator"),
        "sampler": sample_cfg.fingerprint_fields(), "proto_version": PROTO_VERSION, "created_at": now_iso(),
    }  # fmt: skip
    cache.put_class(pid, record, arrays)
    if on_event:
        on_event("prototypes", norm, 1, 1)


def put_prototypes(cache: Cache, specs: ModelSpecs, protos: ClassPrototypes, seed: int, sample_cfg: SampleConfig,
                   proto_cfg: ProtoConfig, source: str) -> str:  # fmt: skip
    """Cache prototypes made elsewhere (an experiment, a synthetic bank) as class `protos.name` under the
    id `ensure_classes` looks up for these settings, so they are used as built ones are; returns the id.

    protos.fg / bg: kind → (n, D) arrays; instance rows take their support images from `protos.sources`
    (-1 when unknown). No support images or masks are stored, as for an import; `source` is recorded.
    """
    norm = naming.validate(protos.name)
    pid = class_id(norm, seed, specs, sample_cfg, proto_cfg)
    arrays: dict[str, np.ndarray] = {}
    for group, kinds in (("fg", protos.fg), ("bg", protos.bg)):
        for kind, a in kinds.items():
            arrays[f"{group}/{kind}"] = np.asarray(a, dtype=np.float32)
        if "instance" in kinds:
            src = protos.sources.get(f"{group}/instance")
            arrays[f"{group}/instance_src"] = np.asarray(np.full(len(kinds["instance"]), -1) if src is None else src, np.int64)
    record = {
        "name": norm, "norm": norm, "seed": seed, "extractor": proto_cfg.extractor,
        "support_key": support_key(norm, seed, sample_cfg), "mask_proposer": proto_cfg.mask_proposer,
        "k_parts": proto_cfg.k_parts, "kmeans_iters": proto_cfg.kmeans_iters,
        "kmeans_max_points": proto_cfg.kmeans_max_points, "feature_size": proto_cfg.feature_size,
        "n_images": sample_cfg.n_images, "kind": protos.kind, "kind_source": source, "models": specs.identity(),
        "sampler": sample_cfg.fingerprint_fields(), "proto_version": PROTO_VERSION, "created_at": now_iso(),
    }  # fmt: skip
    cache.put_class(pid, record, arrays)
    return pid


def _make_stuff(cache: Cache, pid: str, rec: dict, kind_source: str) -> None:
    """Thing → stuff needs no model: drop the bg prototypes, keep everything else."""
    arrays = {n: a for n, a in cache.class_arrays(pid).items() if not n.startswith("bg/")}
    rec = {k: v for k, v in rec.items() if k != "arrays"}
    cache.put_class(pid, dict(rec, kind="stuff", kind_source=kind_source, created_at=now_iso()), arrays)


def _check_kinds(kinds: dict[str, str] | None) -> dict[str, str]:
    from .stuff import KINDS

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
) -> list[ClassPrototypes]:
    """The prototypes of every class in `names` (in that order), building those not cached.

    A cached class is read without loading or calling any model. A missing one is built (sampling
    only the support images not yet cached) under a per-class lock, re-checked once the lock is
    held, so concurrent processes build each class once. `kinds` overrides stuff/thing per class
    ("user" in the record); a cached class whose kind differs is converted in place (thing → stuff
    drops bg prototypes; stuff → thing re-extracts from the cached support set). With build=False
    nothing is written and a missing or differently-kinded class is an error naming the command
    that builds it (MissingClasses). on_event(stage, class, done, total), stage in "sample", "extract",
    "prototypes", "cached".
    """
    from .stuff import classify

    check_proto_config(proto_cfg)
    norms = [naming.validate(n) for n in names]
    overrides = _check_kinds(kinds)
    unknown = sorted(set(overrides) - set(norms))
    if unknown:
        raise OvdiffError(f"stuff/thing given for {', '.join(map(repr, unknown))}, which is not among the classes")
    pids = {n: class_id(n, seed, stages.specs, sample_cfg, proto_cfg) for n in norms}

    def stale(n: str, rec: dict | None) -> bool:
        return rec is None or (n in overrides and rec["kind"] != overrides[n])

    if not build:
        todo = [n for n in dict.fromkeys(norms) if stale(n, cache.class_record(pids[n]))]
        if todo:
            raise MissingClasses(todo, seed, stages.specs, sample_cfg, proto_cfg)
    for n in dict.fromkeys(norms):
        pid = pids[n]
        if not stale(n, cache.class_record(pid)):
            if on_event:
                on_event("cached", n, 1, 1)
            continue
        with cache.lock(pid):
            rec = cache.class_record(pid)  # another process may have built it while we waited
            if not stale(n, rec):
                continue
            if rec is not None and overrides[n] == "stuff":
                _make_stuff(cache, pid, rec, "user")
                continue
            kind, source = (overrides[n], "user") if n in overrides else classify(n, stages, cache)
            _build(cache, stages, n, pid, seed, sample_cfg, proto_cfg, kind, source, on_event)
    return [load_class(cache, pids[n]) for n in norms]


def remove_classes(cache: Cache, classes: list[tuple[str, dict]], with_support: bool = False) -> None:
    """Remove classes (pid, record); with_support, also their support images unless another cached class
    that stays uses them."""
    gone = {pid for pid, _ in classes}
    still_used = {rec.get("support_id") for pid, rec in find_classes(cache) if pid not in gone}
    for pid, rec in classes:
        cache.remove_class(pid, with_support=with_support and rec.get("support_id") not in still_used)


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
        return [cache.support_image(rec["support_id"], i) for i in range(len(masks))], masks
    except KeyError:
        raise SupportImagesMissing(rec["name"], rec["seed"], rec.get("models", {}).get("preset")) from None


# --------------------------------------------------------------------------- sharing


def export_classes(cache: Cache, pids: list[str], path: Path | str) -> int:
    """Write classes to one .safetensors file: arrays as "<pid>/<array>", records as JSON metadata.

    Support images are not included: `protos show` and a stuff → thing change need them, and re-sample.
    Returns the number of bytes written.
    """
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    records: dict[str, dict] = {}
    for pid in pids:
        rec = cache.class_record(pid)
        if rec is None:
            raise ClassNotFound(pid)
        records[pid] = {k: v for k, v in rec.items() if k != "arrays"}
        for name, arr in cache.class_arrays(pid).items():
            tensors[f"{pid}/{name}"] = np.ascontiguousarray(arr)
    meta = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "records": json.dumps(records, ensure_ascii=False)}
    path = Path(path)
    try:
        save_file(tensors, str(path), metadata=meta)
    except OSError as e:
        raise OvdiffError(f"cannot write {path}: {e.strerror or e}") from e
    return path.stat().st_size


def import_classes(cache: Cache, path: Path | str) -> list[str]:
    """Read a file written by `export_classes` into the cache (bit-exact); returns the pids, in file order.

    A class already in the cache under the same id is replaced; each class is one transaction.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            if meta.get("format") != EXPORT_FORMAT:
                raise OvdiffError(f"{path} is not an ovdiff prototype export (no '{EXPORT_FORMAT}' metadata)")
            if meta.get("version") != EXPORT_VERSION:
                raise OvdiffError(f"{path} is export version {meta.get('version')}; this ovdiff reads {EXPORT_VERSION}")
            records = json.loads(meta["records"])
            arrays: dict[str, dict[str, np.ndarray]] = {pid: {} for pid in records}
            for k in f.keys():
                pid, _, name = k.partition("/")
                if pid not in arrays:
                    raise OvdiffError(f"{path}: array {k!r} belongs to no class record")
                arrays[pid][name] = f.get_tensor(k)
    except FileNotFoundError as e:
        raise OvdiffError(f"no such file: {path}") from e
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise OvdiffError(f"cannot read {path} as an ovdiff prototype export: {e}") from e
    for pid, rec in records.items():
        cache.put_class(pid, rec, arrays[pid])
    return list(records)


def match_classes(
    cache: Cache, targets: list[str] | None, seed: int | None = None, extractor: str | None = None
) -> list[tuple[str, dict]]:
    """Cached classes matching any target (a class name, or an id or id prefix of 6+ characters), filtered.

    No targets: every class. A target that matches nothing is an error naming `ovdiff protos list`.
    """
    every = find_classes(cache)

    def keep(rec: dict) -> bool:
        return (seed is None or rec.get("seed") == seed) and (extractor is None or rec.get("extractor") == extractor)

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
