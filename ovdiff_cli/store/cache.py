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
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import numpy as np

from ..errors import CacheError
from .blobs import decode_array, decode_png, encode_array, encode_png

SCHEMA_VERSION = 1
SCHEMA_KEY = b"!schema"
ENV_DIRNAME = "ovdiff.lmdb"
DEFAULT_MAP_SIZE = 256 << 20

# A process may open an LMDB environment only once: share it (and whether it is read-only) between Cache objects.
_OPEN_ENVS: dict[str, tuple[lmdb.Environment, bool]] = {}


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


class CacheDamaged(CacheError):
    """The data file itself is damaged (truncated, a page overwritten): LMDB must not map it.

    `problem` says what is wrong; `cache verify --repair` copies what is intact into a fresh file.
    """

    def __init__(self, root: Path, problem: str):
        self.problem = problem
        super().__init__(
            f"cache {root} is damaged ({problem}): run 'ovdiff cache verify --repair' to copy every intact "
            "class into a fresh cache (the damaged file is kept aside)"
        )


def _wait_for_creator(env_dir: Path) -> None:
    """Block while another process initialises this environment (LMDB holds an exclusive lock on
    byte 0 of lock.mdb while it writes the first meta pages), so a new file is not taken for a damaged one.
    Closing the descriptor drops this process's POSIX locks on lock.mdb: only call it before opening."""
    try:
        fd = os.open(env_dir / "lock.mdb", os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH, 1, 0, os.SEEK_SET)
    except OSError:
        pass
    finally:
        os.close(fd)


def _precheck(root: Path, env_dir: Path) -> None:
    """Refuse a data file LMDB would crash on before it is mapped: empty, a meta page damaged, or
    shorter than the pages its tree references (truncated; walked page by page when the file is short)."""
    from . import lmdbfile

    data = env_dir / "data.mdb"
    try:
        problem = lmdbfile.check_meta(data)
        if problem:
            _wait_for_creator(env_dir)
            problem = lmdbfile.check_meta(data)
        if not problem and lmdbfile.is_short(data):
            for _ in range(3):  # unpinned, a writer may reuse pages of the snapshot being walked: look again
                problem = lmdbfile.check_tree(data)
                if problem is None:
                    break
    except FileNotFoundError:
        return
    except OSError as e:
        raise CacheError(f"cannot read cache {root}: {e.strerror}") from e
    if problem:
        raise CacheDamaged(root, problem)


def _check_snapshot(root: Path, env_dir: Path, env: lmdb.Environment) -> None:
    """Walk every page of the current snapshot with bounds checks while a read transaction pins it."""
    from . import lmdbfile

    for _ in range(5):
        with env.begin(write=False) as txn:
            problem = lmdbfile.check_tree(env_dir / "data.mdb", txn.id())
            if problem is not None:
                raise CacheDamaged(root, problem)
            if any(
                isinstance(m, lmdbfile.Meta) and m.txnid == txn.id()
                for m in lmdbfile.read_metas(env_dir / "data.mdb")[1]
            ):
                return
    # five snapshots overtaken by writers while we looked: theirs were checked by their own opens


def close_cache(root: Path | str) -> None:
    """Close this process's LMDB environment of the cache at `root` (to replace its files, unmount its
    filesystem, or read it raw); Cache objects of it must not be used afterwards, a new `Cache(root)` reopens it."""
    entry = _OPEN_ENVS.pop(str((Path(root).expanduser() / ENV_DIRNAME).resolve()), None)
    if entry is not None:
        entry[0].close()


def _writable(path: Path) -> bool:
    """Whether this process may write at `path` (False on a read-only filesystem, even for root)."""
    return os.access(path, os.W_OK)


class Cache:
    """One cache directory: an LMDB environment plus lock files for classes being built.

    A cache this process may not write (a read-only filesystem or folder, such as a team's shared
    vocabulary) is opened read-only: reading works, text embeddings are not stored, and any other
    write is a one-line error. `create=False` refuses a folder that holds no cache.
    """

    def __init__(self, root: Path | str, map_size: int | None = None, create: bool = True):
        self.root = Path(root).expanduser()
        if map_size is None:
            map_size = _env_map_size()
        path = self.root / ENV_DIRNAME
        if not (path / "data.mdb").exists() and not create:
            raise CacheError(f"no cache at {self.root}: build one with 'ovdiff protos add NAME'")
        if not path.exists():
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CacheError(f"cannot create cache directory {self.root}: {e.strerror}") from e
        real = str(path.resolve())
        entry = _OPEN_ENVS.get(real)
        if entry is None:
            _precheck(self.root, path)
            readonly = not (_writable(path) and (not (path / "data.mdb").exists() or _writable(path / "data.mdb")))
            env = self._open(real, map_size, readonly)
            try:
                _check_snapshot(self.root, path, env)
            except BaseException:
                env.close()
                raise
            entry = _OPEN_ENVS[real] = (env, readonly)
        self.env, self.readonly = entry
        if not self.readonly:
            try:
                (self.root / "locks").mkdir(exist_ok=True)
            except OSError as e:
                raise CacheError(f"cannot create cache directory {self.root / 'locks'}: {e.strerror}") from e
        self._check_schema()

    def _open(self, real: str, map_size: int, readonly: bool) -> lmdb.Environment:
        opts = dict(map_size=map_size, subdir=True, readahead=False, meminit=False, readonly=readonly)
        try:
            return lmdb.open(real, lock=True, **opts)
        except lmdb.Error as e:
            if readonly:  # a lock file we may not write: read without LMDB's reader table
                try:
                    return lmdb.open(real, lock=False, **opts)
                except lmdb.Error:
                    pass
            raise CacheError(f"cannot open cache {self.root}: {e}") from e

    # -- low level ---------------------------------------------------------------

    def _check_schema(self) -> None:
        raw = self.get(SCHEMA_KEY)
        if raw is None:
            if self.readonly:
                return
            self.write({SCHEMA_KEY: _json({"version": SCHEMA_VERSION, "created_at": now_iso()})})
            return
        try:
            version = json.loads(raw)["version"]
        except (ValueError, KeyError) as e:
            raise CacheError(f"cache {self.root} has an unreadable schema record; move it aside and rebuild") from e
        if version != SCHEMA_VERSION:
            hint = "upgrade ovdiff" if version > SCHEMA_VERSION else "rebuild it or use another cache folder"
            raise CacheError(
                f"cache {self.root} has schema version {version}, this ovdiff reads version {SCHEMA_VERSION}: {hint}"
            )

    @contextlib.contextmanager
    def _read(self, buffers: bool = False) -> Iterator[lmdb.Transaction]:
        while True:
            try:
                txn = self.env.begin(write=False, buffers=buffers)
                break
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)  # another process grew the map: adopt its size
        try:
            yield txn
        except lmdb.Error as e:  # a page LMDB finds inconsistent: the file changed under a sound check
            raise CacheDamaged(self.root, str(e)) from e
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
        """Put (or, for None, delete) all items in one transaction, growing the map when full. The raw
        writer: the typed ones (`put_class`, `put_support_batch`, `put_note`) check their entries first."""

        def apply(txn: lmdb.Transaction) -> None:
            for k, v in items.items():
                if v is None:
                    txn.delete(k)
                else:
                    txn.put(k, v)

        self.transact(apply)

    def transact(self, fn: Callable[[lmdb.Transaction], None]) -> None:
        """Run `fn` in one write transaction; on a full map, double it and run `fn` again."""
        if self.readonly:
            raise CacheError(
                f"cache {self.root} is read-only for this user: use another cache folder to build or change classes"
            )
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
            return f"{where}: the disk is full ({free >> 20} MiB free); free space or use another cache folder — classes committed before are intact"
        return f"{where}: check free space, file-size limits and permissions; classes committed before are intact"

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Exclusive advisory lock across processes (released by the OS if the holder dies)."""
        if self.readonly:
            raise CacheError(
                f"cache {self.root} is read-only for this user: use another cache folder to build or change classes"
            )
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
        n_classes = sum(1 for k, _ in self.scan(b"p/", values=False) if k.count(b"/") == 1)  # no record decoded
        return {
            "path": str(self.root),
            "schema_version": SCHEMA_VERSION,
            "map_size": nfo["map_size"],
            "used_bytes": (nfo["last_pgno"] + 1) * st["psize"],
            "entries": st["entries"],
            "classes": n_classes,
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
        self._checked(items)

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
        items.update(dict.fromkeys(old))
        items[class_key(pid)] = _json(dict(record, arrays=listing, created_at=record.get("created_at", now_iso())))
        self._checked(items)

    def put_note(self, uid: str, note: dict) -> None:
        """Store the photo note `u/<uid>` (the class name stands for the user's photos)."""
        self._checked({f"u/{uid}".encode(): _json(note)})

    def _checked(self, items: dict[bytes, bytes | None]) -> None:
        """`write`, once every key and record is of a kind `store/schema.py` describes (else
        SchemaViolation: a writer produced an entry no check knows, a bug)."""
        from .schema import check_write

        for k, v in items.items():
            check_write(k, v)
        self.write(items)

    def class_arrays(self, pid: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
        rec = self.class_record(pid)
        if rec is None:
            raise KeyError(pid)
        wanted = names if names is not None else list(rec["arrays"])
        out = {}
        with self._read(buffers=True) as txn:  # decoded straight from LMDB's map: one copy of each array
            for n in wanted:
                if (b := txn.get(class_array_key(pid, n))) is not None:
                    out[n] = self._decode(class_array_key(pid, n), b, decode_array)
        return out

    def classes(self) -> list[tuple[str, dict]]:
        """(pid, record) of every complete class, in key order; arrays are not read."""
        pids = [k.decode().split("/")[1] for k, _ in self.scan(b"p/", values=False) if k.count(b"/") == 1]
        records = self.get_many([class_key(pid) for pid in pids])
        return [
            (pid, self._decode(class_key(pid), raw, json.loads))
            for pid, raw in zip(pids, records, strict=True)
            if raw is not None
        ]

    def class_size(self, pid: str) -> int:
        return sum(len(k) + len(v) for k, v in self.scan(class_key(pid)))

    def remove_class(self, pid: str, with_support: bool = False) -> None:
        rec = self.class_record(pid)
        keys = [k for k, _ in self.scan(class_key(pid) + b"/", values=False)] + [class_key(pid)]
        if with_support and rec and rec.get("support_id"):
            sid = rec["support_id"]
            keys += [k for k, _ in self.scan(support_key(sid) + b"/", values=False)] + [support_key(sid)]
        self.write(dict.fromkeys(keys))

    # -- text embeddings ----------------------------------------------------------

    def text_embeddings(self, model_fp: str, prompts: list[str]) -> list[np.ndarray | None]:
        keys = [text_key(model_fp, p) for p in prompts]
        return [
            None if b is None else self._decode(k, b, decode_array)
            for k, b in zip(keys, self.get_many(keys), strict=True)
        ]

    def put_text_embeddings(self, model_fp: str, embeddings: dict[str, np.ndarray]) -> None:
        """Store text embeddings; skipped on a read-only cache (they are recomputed next time)."""
        if self.readonly:
            return
        self.write({text_key(model_fp, p): encode_array(e) for p, e in embeddings.items()})
