"""Sharing a vocabulary: class prototypes and records written to one .safetensors file and read back.

Exported files carry the prototypes and records of class parts (any pids), not the support images.
An engine's worker hands the classes it built back to the driver as these bytes (`export_bytes`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ClassNotFound, OvdiffError

if TYPE_CHECKING:
    from .cache import Cache

EXPORT_FORMAT = "ovdiff-prototypes"
EXPORT_VERSION = "1"


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


def export_bytes(cache: Cache, pids: list[str]) -> bytes:
    """The bytes `export_classes` writes for these classes (how an engine's worker hands classes back)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ovdiff-export-") as tmp:
        path = Path(tmp) / "classes.safetensors"
        export_classes(cache, pids, path)
        return path.read_bytes()


def import_bytes(cache: Cache, data: bytes) -> list[str]:
    """`import_classes` of bytes written by `export_bytes`; returns the pids, in file order."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ovdiff-import-") as tmp:
        path = Path(tmp) / "classes.safetensors"
        path.write_bytes(data)
        return import_classes(cache, path)


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
