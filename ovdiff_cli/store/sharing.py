"""Sharing a vocabulary: class prototypes and records written to one .safetensors file and read back.

Exported files carry the prototypes and records of class parts (any pids), not the support images,
with a SHA-256 of every array and of the records that import checks, and the photo notes of the
classes built from the user's photos (so the importing cache finds them by name, as `protos add
--images` did). Records and notes are checked by their kinds in `store/schema.py`. An engine's worker hands the
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
EXPORT_VERSION = "3"  # 2 added the "sha256" checksums, 3 the photo notes
EXPORT_READS = ("1", "2", "3")
EXPORT_RECORDS = "__records__"  # the records' entry among the checksums
EXPORT_NOTES = "__notes__"  # the photo notes' entry among the checksums


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
    notes: dict[str, dict] = {}
    for pid in pids:
        rec = cache.class_record(pid)
        if rec is None:
            raise ClassNotFound(pid)
        records[pid] = {k: v for k, v in rec.items() if k != "arrays"}
        for name, arr in cache.class_arrays(pid).items():
            tensors[f"{pid}/{name}"] = np.ascontiguousarray(arr)
        note = _note_of(cache, rec)
        if note is not None:
            notes[rec["photo_note"]] = note
    records_json = json.dumps(records, ensure_ascii=False)
    notes_json = json.dumps(notes, ensure_ascii=False)
    sums = {name: _sha256(a.tobytes()) for name, a in tensors.items()}
    sums[EXPORT_RECORDS] = _sha256(records_json.encode("utf-8"))
    sums[EXPORT_NOTES] = _sha256(notes_json.encode("utf-8"))
    meta = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "records": records_json,
        "notes": notes_json,
        "sha256": json.dumps(sums),
    }
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


def _note_of(cache: Cache, record: dict) -> dict | None:
    """The photo note that makes this class part's name stand for its photos, if it still does."""
    from .keys import photo_note_key

    uid = record.get("photo_note")
    raw = None if uid is None else cache.get(photo_note_key(uid))
    note = None if raw is None else cache._decode(photo_note_key(uid), raw, json.loads)
    return note if note is not None and note.get("photos") == record.get("photos") else None


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


def _read_export(path: Path) -> tuple[dict[str, dict], dict[str, dict[str, np.ndarray]], dict[str, dict]]:
    """Records, arrays and photo notes of an export file, every checksum verified, or a one-line error."""
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
            raw_notes = meta.get("notes", "{}") if version == "3" else "{}"
            if sums is not None and version == "3" and _sha256(raw_notes.encode("utf-8")) != sums.get(EXPORT_NOTES):
                raise OvdiffError(f"{path} is damaged: its photo notes do not match their checksum")
            notes = json.loads(raw_notes)
            if not isinstance(notes, dict):
                raise ValueError("the photo notes are not a JSON object")
            arrays: dict[str, dict[str, np.ndarray]] = {pid: {} for pid in records}
            for k in f.keys():  # noqa: SIM118
                pid, _, name = k.partition("/")
                if pid not in arrays:
                    raise OvdiffError(f"{path}: array {k!r} belongs to no class record")
                a = f.get_tensor(k)
                if sums is not None and sums.get(k) != _sha256(np.ascontiguousarray(a).tobytes()):
                    raise OvdiffError(f"{path} is damaged: array {k} does not match its checksum")
                arrays[pid][name] = a
            if sums is not None and set(sums) - {EXPORT_RECORDS, EXPORT_NOTES} != set(f.keys()):
                raise OvdiffError(f"{path} is damaged: its arrays are not those its checksums list")
    except FileNotFoundError as e:
        raise OvdiffError(f"no such file: {path}") from e
    except IsADirectoryError as e:
        raise OvdiffError(f"{path} is a folder: give a file written by 'ovdiff protos export'") from e
    except OvdiffError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OvdiffError(f"cannot read {path} as an ovdiff prototype export (damaged or not an export): {e}") from e
    return records, arrays, notes


def import_classes(cache: Cache, path: Path | str) -> list[str]:
    """Read a file written by `export_classes` into the cache (bit-exact); returns the pids, in file order.

    Nothing is written unless the whole file checks out: every checksum, and every class's record and
    values and every photo note, by their kinds in `store/schema.py` (finite prototypes, masks and
    labels in range, known fields). A class already in the cache under the same id is replaced; each
    class is one transaction; the photo notes follow them, so a photo class is found by its name.
    """
    from .records import HEX_ID
    from .schema import class_problem, record_problem

    path = Path(path).expanduser()
    records, arrays, notes = _read_export(path)
    for pid, rec in records.items():
        if not isinstance(rec, dict) or not HEX_ID.fullmatch(pid):
            raise OvdiffError(f"{path}: {pid!r} is not a class id of an ovdiff export")
        why = class_problem(rec, arrays[pid])
        if why:
            raise OvdiffError(f"{path}: class {rec.get('name')!r} ({pid[:12]}) is damaged: {why}; nothing was imported")
    for uid, note in notes.items():
        why = record_problem("photo-note", note, {"id": uid}) if HEX_ID.fullmatch(uid) else "its id is not one"
        if why:
            raise OvdiffError(f"{path}: photo note {uid[:12]!r} is damaged: {why}; nothing was imported")
    for pid, rec in records.items():
        cache.put_class(pid, rec, arrays[pid])
    if notes:
        for uid, note in notes.items():
            cache.put_note(uid, note)
    return list(records)
