"""Reading a cached class part: its prototypes as float32 arrays (`load_class`), or its head (`load_head`: name,
kind and row counts, no array) for a segmenter that reads each image's kept classes itself."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

from ..config import PROTO_KINDS
from ..errors import ClassNotFound
from ..types import ClassParts, ClassPrototypes
from .blobs import encode_array

if TYPE_CHECKING:
    from .cache import Cache


def load_class(cache: Cache, pid: str) -> ClassPrototypes:
    """The prototypes of cached class part `pid` as float32 arrays (fp16 storage widened), with their
    support-image sources."""
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
    return ClassPrototypes(
        name=rec["name"], kind=rec["kind"], fg=protos["fg"], bg=protos["bg"], pid=pid, sources=sources
    )


def load_parts(cache: Cache, pids: dict[str, str]) -> ClassParts:
    """One class from its part records (part → pid)."""
    parts = {p: load_class(cache, pid) for p, pid in pids.items()}
    first = next(iter(parts.values()))
    return ClassParts(first.name, first.kind, parts)


def load_head(cache: Cache, pid: str) -> ClassPrototypes:
    """Cached class part `pid` without its arrays: name, kind and the rows of each prototype array (from
    its record), for a segmenter that reads the arrays of the classes an image keeps (`load_class`)."""
    rec = cache.class_record(pid)
    if rec is None:
        raise ClassNotFound(pid)
    # the array names and kinds are the same few strings in every class: interned, 10,000 heads share them
    rows = {sys.intern(n): int(a["shape"][0]) for n, a in rec["arrays"].items() if n.split("/", 1)[-1] in PROTO_KINDS}
    stamp = str(rec.get("created_at", ""))
    kind = sys.intern(rec["kind"])
    return ClassPrototypes(name=rec["name"], kind=kind, fg={}, bg={}, pid=pid, rows=rows, stamp=stamp)


def load_heads(cache: Cache, pids: dict[str, str]) -> ClassParts:
    """One class's heads (`load_head`) in every part (part → pid): no array is read."""
    parts = {p: load_head(cache, pid) for p, pid in pids.items()}
    first = next(iter(parts.values()))
    return ClassParts(first.name, first.kind, parts)


class VocabArrays:
    """`types.VocabMemo` in a cache: arrays computed once for a vocabulary (its bg prototypes' stuff scores),
    kept under `v/<vocabulary id>/<name>` (skipped on a read-only cache: recomputed next time)."""

    def __init__(self, cache: Cache):
        self.cache = cache

    def vocab_array(self, vocab_id: str, name: str) -> np.ndarray | None:
        return self.cache.get_array(f"v/{vocab_id}/{name}".encode())

    def put_vocab_array(self, vocab_id: str, name: str, array: np.ndarray) -> None:
        if not self.cache.readonly:
            self.cache.write({f"v/{vocab_id}/{name}".encode(): encode_array(np.asarray(array))})
