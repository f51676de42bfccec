"""The persistent LMDB cache of support sets, prototypes and text embeddings.

The byte layout is documented in `cache_schema.md`; keep the two in step. Writes of one unit
(a batch of support images, one class's prototypes) are one LMDB transaction, so a crash never
leaves half a unit visible. The memory map doubles when full.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import io
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb
import numpy as np

from .errors import CacheError

SCHEMA_VERSION = 1
SCHEMA_KEY = b"!schema"
ENV_DIRNAME = "ovdiff.lmdb"
DEFAULT_MAP_SIZE = 256 << 20

ARRAY_MAGIC = b"OVDA"
ARRAY_FORMAT = 1
_ALLOWED_DTYPES = {"<f2", "<f4", "<f8", "|u1", "|b1", "<i2", "<i4", "<i8", "<u2"}

# A process may open an LMDB environment only once: share it between Cache objects.
_OPEN_ENVS: dict[str, lmdb.Environment] = {}


# --------------------------------------------------------------------------- values


def encode_array(a: np.ndarray) -> bytes:
    """Self-describing little-endian array blob: magic, dtype, shape, CRC32, raw C-order bytes."""
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    dt = a.dtype.str.encode("ascii")
    if dt.decode() not in _ALLOWED_DTYPES:
        raise ValueError(f"dtype {a.dtype} cannot be stored in the cache")
    payload = a.tobytes(order="C")
    head = ARRAY_MAGIC + struct.pack("<BB", ARRAY_FORMAT, len(dt)) + dt + struct.pack("<B", a.ndim)
    head += struct.pack(f"<{a.ndim}Q", *a.shape)
    return head + struct.pack("<I", zlib.crc32(payload)) + payload


def decode_array(blob: bytes) -> np.ndarray:
    """Inverse of `encode_array`; raises ValueError on any inconsistency (used by `cache verify`)."""
    if blob[:4] != ARRAY_MAGIC:
        raise ValueError("not an array blob (bad magic)")
    fmt, dlen = struct.unpack_from("<BB", blob, 4)
    if fmt != ARRAY_FORMAT:
        raise ValueError(f"array format {fmt} unknown")
    dt = blob[6 : 6 + dlen].decode("ascii")
    if dt not in _ALLOWED_DTYPES:
        raise ValueError(f"dtype {dt!r} not allowed")
    (ndim,) = struct.unpack_from("<B", blob, 6 + dlen)
    off = 7 + dlen
    shape = struct.unpack_from(f"<{ndim}Q", blob, off)
    off += 8 * ndim
    (crc,) = struct.unpack_from("<I", blob, off)
    payload = blob[off + 4 :]
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
    if len(payload) != expected:
        raise ValueError(f"payload of {len(payload)} bytes, expected {expected} for {dt}{list(shape)}")
    if zlib.crc32(payload) != crc:
        raise ValueError("checksum mismatch")
    return np.frombuffer(payload, dtype=dt).reshape(shape).copy()


def encode_png(image: np.ndarray) -> bytes:
    """HxWx3 uint8 RGB → PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def check_png(blob: bytes) -> None:
    """Raise ValueError unless `blob` is a whole PNG whose every chunk matches its CRC-32."""
    if blob[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG (bad signature)")
    off = 8
    while off + 12 <= len(blob):
        (n,) = struct.unpack_from(">I", blob, off)
        kind = blob[off + 4 : off + 8]
        if off + 12 + n > len(blob):
            break
        (crc,) = struct.unpack_from(">I", blob, off + 8 + n)
        if zlib.crc32(blob[off + 4 : off + 8 + n]) != crc:
            raise ValueError(f"PNG chunk {kind.decode(errors='replace')} at byte {off}: checksum mismatch")
        if kind == b"IEND":
            return
        off += 12 + n
    raise ValueError("PNG is truncated (no IEND chunk)")


def decode_png(blob: bytes) -> np.ndarray:
    """PNG bytes → HxWx3 uint8 RGB; every chunk's CRC is checked first."""
    from PIL import Image

    check_png(blob)

    with Image.open(io.BytesIO(blob)) as im:
        return np.asarray(im.convert("RGB"))


def _json(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def short_hash(*parts: object) -> str:
    """24 hex characters of SHA-256 over the JSON of `parts`: fixed length whatever the class name."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:24]


# --------------------------------------------------------------------------- keys


def support_key(sid: str) -> bytes:
    return f"s/{sid}".encode()


def image_key(sid: str, i: int) -> bytes:
    return f"s/{sid}/img/{i:05d}".encode()


def attribution_key(sid: str, i: int) -> bytes:
    return f"s/{sid}/att/{i:05d}".encode()


def class_key(pid: str) -> bytes:
    return f"p/{pid}".encode()


def class_array_key(pid: str, name: str) -> bytes:
    return f"p/{pid}/a/{name}".encode()


def text_key(model_fp: str, prompt: str) -> bytes:
    return f"t/{short_hash(model_fp, prompt)}".encode()


# --------------------------------------------------------------------------- cache


@dataclass
class Problem:
    """One finding of `Cache.verify`: the key and what is wrong with it."""

    key: str
    reason: str


def default_cache_dir() -> Path:
    """`$OVDIFF_CACHE`, else the platform's user cache directory."""
    env = os.environ.get("OVDIFF_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ovdiff"))


def _env_map_size() -> int:
    """`$OVDIFF_CACHE_MAP_SIZE` (bytes) if set, else DEFAULT_MAP_SIZE: the initial map of a new environment."""
    raw = os.environ.get("OVDIFF_CACHE_MAP_SIZE")
    if not raw:
        return DEFAULT_MAP_SIZE
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 4096:
        raise CacheError(f"OVDIFF_CACHE_MAP_SIZE must be a number of bytes of at least 4096, got {raw!r}")
    return size


def _corrupt(key: bytes, error: Exception) -> CacheError:
    return CacheError(
        f"cache entry {key.decode(errors='replace')} is corrupt ({error}): "
        "run 'ovdiff cache verify --repair', then re-run to rebuild it"
    )


class Cache:
    """One cache directory: an LMDB environment plus lock files for classes being built."""

    def __init__(self, root: Path | str, map_size: int | None = None, create: bool = True):
        self.root = Path(root).expanduser()
        if map_size is None:
            map_size = _env_map_size()
        path = self.root / ENV_DIRNAME
        if not path.exists() and not create:
            raise CacheError(f"no cache at {self.root}: build one with 'ovdiff protos add NAME'")
        try:
            path.mkdir(parents=True, exist_ok=True)
            (self.root / "locks").mkdir(exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create cache directory {self.root}: {e.strerror}") from e
        real = str(path.resolve())
        env = _OPEN_ENVS.get(real)
        if env is None:
            try:
                env = lmdb.open(real, map_size=map_size, subdir=True, lock=True, readahead=False, meminit=False)
            except lmdb.Error as e:
                raise CacheError(f"cannot open cache {self.root}: {e}") from e
            _OPEN_ENVS[real] = env
        self.env = env
        self._check_schema()

    # -- low level ---------------------------------------------------------------

    def _check_schema(self) -> None:
        raw = self.get(SCHEMA_KEY)
        if raw is None:
            self.write({SCHEMA_KEY: _json({"version": SCHEMA_VERSION, "created_at": now_iso()})})
            return
        try:
            version = json.loads(raw)["version"]
        except (ValueError, KeyError) as e:
            raise CacheError(f"cache {self.root} has an unreadable schema record; move it aside and rebuild") from e
        if version != SCHEMA_VERSION:
            hint = "upgrade ovdiff" if version > SCHEMA_VERSION else "rebuild it or use another --cache"
            raise CacheError(
                f"cache {self.root} has schema version {version}, this ovdiff reads version {SCHEMA_VERSION}: {hint}"
            )

    @contextlib.contextmanager
    def _read(self) -> Iterator[lmdb.Transaction]:
        while True:
            try:
                txn = self.env.begin(write=False)
                break
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)  # another process grew the map: adopt its size
        try:
            yield txn
        finally:
            txn.abort()

    def get(self, key: bytes) -> bytes | None:
        with self._read() as txn:
            val = txn.get(key)
            return None if val is None else bytes(val)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        with self._read() as txn:
            return [None if (v := txn.get(k)) is None else bytes(v) for k in keys]

    def scan(self, prefix: bytes, values: bool = True) -> Iterator[tuple[bytes, bytes | None]]:
        """Items whose key starts with `prefix`, read in one snapshot (values None when not wanted)."""
        with self._read() as txn:
            cur = txn.cursor()
            items = []
            if cur.set_range(prefix):
                for k in cur.iternext(keys=True, values=False):
                    if not k.startswith(prefix):
                        break
                    items.append((bytes(k), bytes(cur.value()) if values else None))
        yield from items

    def write(self, items: dict[bytes, bytes | None]) -> None:
        """Put (or, for None, delete) all items in one transaction, growing the map when full."""

        def apply(txn: lmdb.Transaction) -> None:
            for k, v in items.items():
                if v is None:
                    txn.delete(k)
                else:
                    txn.put(k, v)

        self.transact(apply)

    def transact(self, fn: Callable[[lmdb.Transaction], None]) -> None:
        """Run `fn` in one write transaction; on a full map, double it and run `fn` again."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    fn(txn)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
            except lmdb.Error as e:
                raise CacheError(self.write_failure(e)) from e

    def write_failure(self, error: Exception) -> str:
        """Say why a write to the cache's disk failed (a commit, or a class build's spill file); a full
        disk is the usual cause and shows as EIO/ENOSPC/EFBIG."""
        try:
            free = shutil.disk_usage(self.root).free
        except OSError:
            free = -1
        where = f"cannot write the cache at {self.root} ({error})"
        if 0 <= free < 64 << 20:
            return f"{where}: the disk is full ({free >> 20} MiB free); free space or use another --cache — classes committed before are intact"
        return f"{where}: check free space, file-size limits and permissions; classes committed before are intact"

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Exclusive advisory lock across processes (released by the OS if the holder dies)."""
        path = self.root / "locks" / f"{name}.lock"
        with open(path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def info(self) -> dict:
        """Location, sizes and counts, for `ovdiff cache info`."""
        st = self.env.stat()
        nfo = self.env.info()
        n_support = sum(1 for k, _ in self.scan(b"s/", values=False) if k.count(b"/") == 1)
        return {
            "path": str(self.root),
            "schema_version": SCHEMA_VERSION,
            "map_size": nfo["map_size"],
            "used_bytes": (nfo["last_pgno"] + 1) * st["psize"],
            "entries": st["entries"],
            "classes": len(self.classes()),
            "support_entries": n_support,
            "text_embeddings": sum(1 for _ in self.scan(b"t/", values=False)),
        }

    # -- arrays ------------------------------------------------------------------

    def get_array(self, key: bytes) -> np.ndarray | None:
        raw = self.get(key)
        return None if raw is None else self._decode(key, raw, decode_array)

    @staticmethod
    def _decode(key: bytes, raw: bytes, decode: Callable):
        """decode(raw), or a one-line CacheError naming the entry and the repair command."""
        try:
            return decode(raw)
        except (ValueError, KeyError, TypeError, OSError, SyntaxError, EOFError, struct.error) as e:
            raise _corrupt(key, e) from e

    # -- support sets ------------------------------------------------------------

    def support_meta(self, sid: str) -> dict | None:
        raw = self.get(support_key(sid))
        return None if raw is None else self._decode(support_key(sid), raw, json.loads)

    def put_support_batch(
        self, sid: str, meta: dict, start: int, images: list[np.ndarray], attributions: list[np.ndarray]
    ) -> None:
        """Commit images start.. and their attribution maps with the updated count, atomically."""
        items: dict[bytes, bytes | None] = {}
        for j, (img, att) in enumerate(zip(images, attributions, strict=True)):
            items[image_key(sid, start + j)] = encode_png(img)
            items[attribution_key(sid, start + j)] = encode_array(np.asarray(att, dtype=np.float32))
        meta = dict(meta, n_images=start + len(images), updated_at=now_iso())
        items[support_key(sid)] = _json(meta)
        self.write(items)

    def support_image(self, sid: str, i: int) -> np.ndarray:
        raw = self.get(image_key(sid, i))
        if raw is None:
            raise KeyError(f"support image {i} of {sid} missing")
        return self._decode(image_key(sid, i), raw, decode_png)

    def attribution(self, sid: str, i: int) -> np.ndarray:
        arr = self.get_array(attribution_key(sid, i))
        if arr is None:
            raise KeyError(f"attribution map {i} of {sid} missing")
        return arr

    # -- classes (prototype sets) -----------------------------------------------

    def class_record(self, pid: str) -> dict | None:
        raw = self.get(class_key(pid))
        return None if raw is None else self._decode(class_key(pid), raw, json.loads)

    def put_class(self, pid: str, record: dict, arrays: dict[str, np.ndarray]) -> None:
        """Commit one class's prototypes and its record in one transaction; the record lists the arrays."""
        items: dict[bytes, bytes | None] = {}
        listing = {}
        for name, arr in arrays.items():
            blob = encode_array(arr)
            items[class_array_key(pid, name)] = blob
            listing[name] = {"dtype": np.asarray(arr).dtype.str, "shape": list(np.shape(arr))}
        old = [k for k, _ in self.scan(class_array_key(pid, ""), values=False) if k not in items]
        items.update({k: None for k in old})
        items[class_key(pid)] = _json(dict(record, arrays=listing, created_at=record.get("created_at", now_iso())))
        self.write(items)

    def class_arrays(self, pid: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
        rec = self.class_record(pid)
        if rec is None:
            raise KeyError(pid)
        wanted = names if names is not None else list(rec["arrays"])
        blobs = self.get_many([class_array_key(pid, n) for n in wanted])
        out = {}
        for n, b in zip(wanted, blobs, strict=True):
            if b is not None:
                out[n] = self._decode(class_array_key(pid, n), b, decode_array)
        return out

    def classes(self) -> list[tuple[str, dict]]:
        """(pid, record) of every complete class, in key order; arrays are not read."""
        pids = [k.decode().split("/")[1] for k, _ in self.scan(b"p/", values=False) if k.count(b"/") == 1]
        records = self.get_many([class_key(pid) for pid in pids])
        return [(pid, self._decode(class_key(pid), raw, json.loads))
                for pid, raw in zip(pids, records, strict=True) if raw is not None]  # fmt: skip

    def class_size(self, pid: str) -> int:
        return sum(len(k) + len(v) for k, v in self.scan(class_key(pid)))

    def remove_class(self, pid: str, with_support: bool = False) -> None:
        rec = self.class_record(pid)
        keys = [k for k, _ in self.scan(class_key(pid) + b"/", values=False)] + [class_key(pid)]
        if with_support and rec and rec.get("support_id"):
            sid = rec["support_id"]
            keys += [k for k, _ in self.scan(support_key(sid) + b"/", values=False)] + [support_key(sid)]
        self.write({k: None for k in keys})

    # -- text embeddings ----------------------------------------------------------

    def text_embeddings(self, model_fp: str, prompts: list[str]) -> list[np.ndarray | None]:
        keys = [text_key(model_fp, p) for p in prompts]
        return [None if b is None else self._decode(k, b, decode_array) for k, b in zip(keys, self.get_many(keys), strict=True)]

    def put_text_embeddings(self, model_fp: str, embeddings: dict[str, np.ndarray]) -> None:
        self.write({text_key(model_fp, p): encode_array(e) for p, e in embeddings.items()})

    # -- verify -------------------------------------------------------------------

    def verify(self, repair: bool = False) -> list[Problem]:
        """Decode every entry and cross-check records; with `repair`, delete what is broken.

        Checks: JSON records parse; array blobs decode with their checksums, shapes and dtypes as
        their class record lists, float values finite (attribution maps also >= 0); support images
        decode at the support set's size; every image and array a record lists exists.
        Repair keeps units whole: a broken array removes its whole class (rebuilt by the next
        `protos add`), a broken support image truncates its support set to the images before it
        (sampling resumes from there) and removes the classes built from the lost images.
        """
        problems: list[Problem] = []
        keys = [k for k, _ in self.scan(b"", values=False)]  # values are read one at a time: memory stays flat
        keyset = set(keys)
        records: dict[str, dict] = {}
        supports: dict[str, dict] = {}
        truncate: dict[str, int] = {}
        drop: set[bytes] = set()

        def bad(k: bytes, why: str) -> None:
            problems.append(Problem(k.decode(errors="replace"), why))
            drop.add(k)

        def cut(sid: str, i: int) -> None:
            truncate[sid] = min(truncate.get(sid, i), i)

        for k in keys:  # key order: a record sorts before its entries
            v = self.get(k)
            if v is None:  # deleted by another process since the key scan
                continue
            parts = k.decode(errors="replace").split("/")
            try:
                if k == SCHEMA_KEY:
                    json.loads(v)
                elif parts[0] == "s" and len(parts) == 2:
                    meta = json.loads(v)
                    n = int(meta["n_images"])
                    supports[parts[1]] = meta
                    for i in range(n):
                        if image_key(parts[1], i) not in keyset or attribution_key(parts[1], i) not in keyset:
                            bad(k, f"support set lists {n} images but image {i} is missing")
                            cut(parts[1], i)
                            drop.discard(k)
                            break
                elif parts[0] == "s" and len(parts) == 4 and parts[2] in ("img", "att"):
                    meta = supports.get(parts[1], {})
                    if parts[2] == "img":
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
                    records[parts[1]] = json.loads(v)
                    for name in records[parts[1]]["arrays"]:
                        if class_array_key(parts[1], name) not in keyset:
                            bad(k, f"class {records[parts[1]].get('name')!r}: array {name} missing")
                            break
                elif parts[0] == "p" and len(parts) >= 4 and parts[2] == "a":
                    a = decode_array(v)
                    if a.dtype.kind == "f" and not np.isfinite(a).all():
                        raise ValueError("array has non-finite values")
                    rec = records.get(parts[1])
                    spec = None if rec is None else rec["arrays"].get("/".join(parts[3:]))
                    if rec is None:
                        bad(k, "prototype array without a class record (orphan)")
                    elif spec is None or list(a.shape) != spec["shape"] or a.dtype.str != spec["dtype"]:
                        bad(k, "array does not match its class record")
                elif parts[0] == "t" and len(parts) == 2:
                    decode_array(v)
                else:
                    bad(k, "unknown key")
            except Exception as e:  # any decode failure is a finding, not a crash
                bad(k, f"{type(e).__name__}: {e}")
                if parts[0] == "s" and len(parts) == 4 and parts[3].isdigit():
                    drop.discard(k)
                    cut(parts[1], int(parts[3]))
                elif parts[0] == "s" and len(parts) == 2:
                    cut(parts[1], 0)  # an unreadable support record: the whole set is resampled
        # Classes built from support images that are broken: their masks point at lost images.
        for pid, rec in records.items():
            sid = rec.get("support_id")
            if sid in truncate and truncate[sid] < int(rec.get("n_images") or 0) and class_key(pid) not in drop:
                bad(class_key(pid), f"class {rec.get('name')!r} was built from support image {truncate[sid]} of {sid}, which is broken")
        if repair and (drop or truncate):
            for k in list(drop):
                parts = k.decode(errors="replace").split("/")
                if parts[0] == "p":
                    drop.add(class_key(parts[1]))
                    drop.update(kk for kk in keys if kk.startswith(class_key(parts[1]) + b"/"))
            updates: dict[bytes, bytes | None] = {k: None for k in drop}
            for sid, n in truncate.items():
                meta = supports.get(sid)
                if meta is not None:
                    updates[support_key(sid)] = _json(dict(meta, n_images=min(n, int(meta["n_images"]))))
                for kk in keys:
                    tail = kk.decode(errors="replace").rsplit("/", 1)[-1]
                    if kk.startswith(support_key(sid) + b"/") and (not tail.isdigit() or int(tail) >= n):
                        updates[kk] = None
            self.write(updates)
        return problems


def close_cache(root: Path | str) -> None:
    """Close this process's LMDB environment of the cache at `root` (to unmount its filesystem, or to
    read it raw); Cache objects of it must not be used afterwards, and a new `Cache(root)` reopens it."""
    env = _OPEN_ENVS.pop(str((Path(root).expanduser() / ENV_DIRNAME).resolve()), None)
    if env is not None:
        env.close()
