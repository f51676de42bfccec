"""Sharing a vocabulary: class prototypes and records written to one .safetensors file and read back.

Exported files carry the prototypes and records of class parts (any pids), not the support images,
with a SHA-256 of every array and of the records that import checks. An engine's worker hands the
classes it built back to the driver as these bytes (`export_bytes`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ClassNotFound, OvdiffError

if TYPE_CHECKING:
    from .cache import Cache

EXPORT_FORMAT = "ovdiff-prototypes"
EXPORT_VERSION = "2"  # 2 added the "sha256" checksums
EXPORT_READS = ("1", "2")
EXPORT_RECORDS = "__records__"  # the records' entry among the checksums


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def export_classes(cache: Cache, pids: list[str], path: Path | str) -> int:
    """Write classes to one .safetensors file: arrays as "<pid>/<array>", records as JSON metadata.

    The metadata carries a SHA-256 of every tensor's bytes and of the records, which import checks.
    The file is written beside its destination and renamed into place, so a failed write leaves no
    half file. Support images are not included: `protos show` and a stuff → thing change need them,
    and re-sample. Returns the number of bytes written.
    """
    import os
    import tempfile

    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    from ..io.images import file_mode

    path = Path(path).expanduser()
    if path.is_dir():
        raise OvdiffError(f"{path} is a folder: give the file to write, e.g. {path / 'vocabulary.safetensors'}")
    tensors: dict[str, np.ndarray] = {}
    records: dict[str, dict] = {}
    for pid in pids:
        rec = cache.class_record(pid)
        if rec is None:
            raise ClassNotFound(pid)
        records[pid] = {k: v for k, v in rec.items() if k != "arrays"}
        for name, arr in cache.class_arrays(pid).items():
            tensors[f"{pid}/{name}"] = np.ascontiguousarray(arr)
    records_json = json.dumps(records, ensure_ascii=False)
    sums = {name: _sha256(a.tobytes()) for name, a in tensors.items()}
    sums[EXPORT_RECORDS] = _sha256(records_json.encode("utf-8"))
    meta = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "records": records_json, "sha256": json.dumps(sums)}
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise OvdiffError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}") from e
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


def _read_export(path: Path) -> tuple[dict[str, dict], dict[str, dict[str, np.ndarray]]]:
    """Records and arrays of an export file, every checksum verified, or a one-line error."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            if meta.get("format") != EXPORT_FORMAT:
                raise OvdiffError(f"{path} is not an ovdiff prototype export (no '{EXPORT_FORMAT}' metadata)")
            version = meta.get("version")
            if version not in EXPORT_READS:
                raise OvdiffError(f"{path} is export version {version}; this ovdiff reads {', '.join(EXPORT_READS)}")
            sums = json.loads(meta["sha256"]) if version != "1" else None
            raw = meta["records"]
            if sums is not None and _sha256(raw.encode("utf-8")) != sums.get(EXPORT_RECORDS):
                raise OvdiffError(f"{path} is damaged: its class records do not match their checksum")
            records = json.loads(raw)
            if not isinstance(records, dict):
                raise ValueError("the records are not a JSON object")
            arrays: dict[str, dict[str, np.ndarray]] = {pid: {} for pid in records}
            for k in f.keys():  # noqa: SIM118
                pid, _, name = k.partition("/")
                if pid not in arrays:
                    raise OvdiffError(f"{path}: array {k!r} belongs to no class record")
                a = f.get_tensor(k)
                if sums is not None and sums.get(k) != _sha256(np.ascontiguousarray(a).tobytes()):
                    raise OvdiffError(f"{path} is damaged: array {k} does not match its checksum")
                arrays[pid][name] = a
            if sums is not None and set(sums) - {EXPORT_RECORDS} != set(f.keys()):
                raise OvdiffError(f"{path} is damaged: its arrays are not those its checksums list")
    except FileNotFoundError as e:
        raise OvdiffError(f"no such file: {path}") from e
    except IsADirectoryError as e:
        raise OvdiffError(f"{path} is a folder: give a file written by 'ovdiff protos export'") from e
    except OvdiffError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OvdiffError(f"cannot read {path} as an ovdiff prototype export (damaged or not an export): {e}") from e
    return records, arrays


def import_classes(cache: Cache, path: Path | str) -> list[str]:
    """Read a file written by `export_classes` into the cache (bit-exact); returns the pids, in file order.

    Nothing is written unless the whole file checks out: every checksum, and every class's record and
    values (finite, prototypes within their extractor's norm, masks and labels in range). A class
    already in the cache under the same id is replaced; each class is one transaction.
    """
    from .audit import class_problem

    path = Path(path).expanduser()
    records, arrays = _read_export(path)
    for pid, rec in records.items():
        if not isinstance(rec, dict) or len(pid) != 24 or any(c not in "0123456789abcdef" for c in pid):
            raise OvdiffError(f"{path}: {pid!r} is not a class id of an ovdiff export")
        why = class_problem(rec, arrays[pid])
        if why:
            raise OvdiffError(f"{path}: class {rec.get('name')!r} ({pid[:12]}) is damaged: {why}; nothing was imported")
    for pid, rec in records.items():
        cache.put_class(pid, rec, arrays[pid])
    return list(records)
