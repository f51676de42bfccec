"""A bounds-checked reader of LMDB's data file (`data.mdb`), in pure Python.

LMDB maps the file and trusts it: a page it reaches beyond the end of a truncated file kills the
process with SIGBUS, and a damaged page header can send it anywhere. So before LMDB touches a
cache, `check_meta` compares the file's size with the last page both meta pages name, and
`check_tree` walks every page of the current snapshot (branch, leaf, overflow, free list) with
every offset checked. `salvage` walks what is readable of both snapshots, skipping damaged
subtrees, so `cache verify --repair` can copy every intact entry into a fresh environment.

Layout of LMDB 0.9 on a 64-bit machine (the py-lmdb build): a page starts with a 16-byte header
(pgno u64, pad u16, flags u16, lower u16, upper u16 — or, on an overflow page, the page count u32);
node offsets (u16) follow it. A node is lo u16, hi u16, flags u16, ksize u16, key, data; on a
branch page lo | hi<<16 | flags<<32 is the child page. Pages 0 and 1 are meta pages; the one with
the larger transaction id is current.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
HEADER = 16
NODE = 8
P_BRANCH, P_LEAF, P_OVERFLOW, P_META = 0x01, 0x02, 0x04, 0x08
F_BIGDATA = 0x01
INVALID = (1 << 64) - 1
INTEGERKEY = 0x08
MAX_DEPTH = 64


class Damage(Exception):
    """The file is not a sound LMDB environment; the message says where."""


@dataclass(frozen=True)
class Meta:
    """One meta page: the root of each tree, the last page in use and the transaction id."""

    index: int
    txnid: int
    psize: int
    last_pg: int
    free_root: int
    free_flags: int
    free_depth: int
    main_root: int
    main_depth: int
    main_flags: int


def _parse_meta(buf: bytes, index: int) -> Meta:
    if len(buf) < 152:
        raise Damage(f"meta page {index} is cut off")
    pgno, _, flags = struct.unpack_from("<QHH", buf, 0)
    magic, version = struct.unpack_from("<II", buf, HEADER)
    if not flags & P_META or magic != MAGIC:
        raise Damage(f"meta page {index} is not an LMDB meta page")
    if version != DATA_VERSION:
        raise Damage(f"meta page {index} has LMDB data version {version}, expected {DATA_VERSION}")
    psize, free_flags, free_depth = struct.unpack_from("<IHH", buf, 40)
    free_root = struct.unpack_from("<Q", buf, 40 + 40)[0]
    main_flags, main_depth = struct.unpack_from("<HH", buf, 88 + 4)
    main_root = struct.unpack_from("<Q", buf, 88 + 40)[0]
    last_pg, txnid = struct.unpack_from("<QQ", buf, 136)
    if psize < 512 or psize > 65536 or psize & (psize - 1):
        raise Damage(f"meta page {index} names a page size of {psize} bytes")
    return Meta(index, txnid, psize, last_pg, free_root, free_flags, free_depth, main_root, main_depth, main_flags)


def read_metas(path: Path | str) -> tuple[int, list[Meta | Damage]]:
    """(file size, [meta page 0, meta page 1]), each a Meta or the Damage that makes it unusable."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        first = f.read(4096)
        out: list[Meta | Damage] = []
        try:
            m0 = _parse_meta(first, 0)
            out.append(m0)
            psize = m0.psize
        except Damage as e:
            out.append(e)
            psize = 4096
        f.seek(psize)
        try:
            out.append(_parse_meta(f.read(psize), 1))
        except Damage as e:
            out.append(e)
    return size, out


def check_meta(path: Path | str) -> str | None:
    """Why LMDB must not map `path` at all (empty, shorter than its meta pages, a meta page damaged), or None.

    Both meta pages must be valid and agree on the page size. A file shorter than the last page its
    current meta page names is not damaged by that alone (LMDB counts pages a transaction allocated
    and freed again, which are never written): `is_short` says when `check_tree` must decide.
    """
    size, metas = read_metas(path)
    if size == 0:
        return "data.mdb is empty (0 bytes)"
    for m in metas:
        if isinstance(m, Damage):
            return str(m)
    psize = metas[0].psize
    if metas[1].psize != psize:
        return f"the meta pages disagree on the page size ({metas[0].psize} and {metas[1].psize})"
    if size < 2 * psize:
        return f"data.mdb is {size} bytes, less than its two meta pages (truncated)"
    for m in metas:
        if m.last_pg >= 1 << 48:
            return f"meta page {m.index} names page {m.last_pg}"
    return None


def is_short(path: Path | str) -> bool:
    """Whether the file ends before the last page its meta pages name (truncated, or only unwritten free pages)."""
    size, metas = read_metas(path)
    return any(isinstance(m, Meta) and (m.last_pg + 1) * m.psize > size for m in metas)


def current(metas: list[Meta | Damage]) -> Meta | None:
    """The meta page LMDB reads from: the valid one with the larger transaction id."""
    valid = [m for m in metas if isinstance(m, Meta)]
    return max(valid, key=lambda m: m.txnid) if valid else None


@dataclass
class Walk:
    """Result of walking one tree: entries (key → (offset, length) of the value in the file), damage found."""

    entries: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    damage: list[str] = field(default_factory=list)


class PageFile:
    """Random access to the pages of one data file, every read checked against the file's end."""

    def __init__(self, path: Path | str, psize: int):
        self.f = open(path, "rb")  # noqa: SIM115
        self.size = os.fstat(self.f.fileno()).st_size
        self.psize = psize
        self.npages = self.size // psize

    def close(self) -> None:
        self.f.close()

    def page(self, pgno: int, limit: int) -> bytes:
        if pgno >= self.npages and 2 <= pgno <= limit:
            raise Damage(f"page {pgno} lies beyond the end of the file ({self.size} bytes: truncated)")
        if pgno < 2 or pgno > limit:
            raise Damage(f"page {pgno} is outside the database (last page {limit})")
        self.f.seek(pgno * self.psize)
        buf = self.f.read(self.psize)
        if struct.unpack_from("<Q", buf, 0)[0] != pgno:
            raise Damage(f"page {pgno} has a damaged header")
        return buf

    def read(self, offset: int, length: int) -> bytes:
        if offset + length > self.size:
            raise Damage(f"value at byte {offset} runs past the end of the file")
        self.f.seek(offset)
        return self.f.read(length)

    def walk(self, root: int, depth: int, last_pg: int, tolerant: bool, integer_keys: bool = False) -> Walk:
        """Every leaf entry under `root`, keys checked to ascend; raise Damage at the first fault unless `tolerant`."""
        out = Walk()
        if root == INVALID:
            return out
        if not 1 <= depth <= MAX_DEPTH:
            raise Damage(f"a tree of depth {depth}")
        seen: set[int] = set()
        last_key: list[bytes | None] = [None]

        def fault(msg: str) -> None:
            if not tolerant:
                raise Damage(msg)
            out.damage.append(msg)

        def visit(pgno: int, level: int, lo: bytes | None, hi: bytes | None) -> None:
            """Keys under `pgno` must lie in [lo, hi): a branch node's key is the least key of its child."""
            try:
                if pgno in seen:
                    raise Damage(f"page {pgno} is reached twice")
                seen.add(pgno)
                buf = self.page(pgno, last_pg)
                flags, lower, upper = struct.unpack_from("<HHH", buf, 10)
                want = P_LEAF if level == depth else P_BRANCH
                if flags & (P_BRANCH | P_LEAF | P_OVERFLOW | P_META) != want or flags & 0x60:
                    raise Damage(
                        f"page {pgno} should be a {'leaf' if want == P_LEAF else 'branch'} page (flags {flags:#x})"
                    )
                if not HEADER <= lower <= upper <= self.psize or (lower - HEADER) % 2 or lower == HEADER:
                    raise Damage(f"page {pgno} has damaged bounds ({lower}, {upper})")
                ptrs = struct.unpack_from(f"<{(lower - HEADER) // 2}H", buf, HEADER)
                children = []
                for i, ptr in enumerate(ptrs):
                    if not upper <= ptr <= self.psize - NODE:
                        raise Damage(f"page {pgno} node {i} at offset {ptr} is out of bounds")
                    dlo, dhi, nflags, ksize = struct.unpack_from("<HHHH", buf, ptr)
                    kend = ptr + NODE + ksize
                    if kend > self.psize:
                        raise Damage(f"page {pgno} node {i}: key runs past the page")
                    key = buf[ptr + NODE : kend]
                    if want == P_BRANCH:
                        if i and not integer_keys and children[-1][1] is not None and key <= children[-1][1]:
                            raise Damage(f"page {pgno} node {i}: branch keys out of order")
                        children.append((dlo | dhi << 16 | nflags << 32, key if i else lo))
                        continue
                    dsize = dlo | dhi << 16
                    if nflags & ~F_BIGDATA:
                        raise Damage(f"page {pgno} node {i} has flags {nflags:#x}")
                    if nflags & F_BIGDATA:
                        if kend + 8 > self.psize:
                            raise Damage(f"page {pgno} node {i}: overflow page number runs past the page")
                        loc = (self._overflow(struct.unpack_from("<Q", buf, kend)[0], dsize, last_pg), dsize)
                    else:
                        if kend + dsize > self.psize:
                            raise Damage(f"page {pgno} node {i}: value runs past the page")
                        loc = (pgno * self.psize + kend, dsize)
                    if integer_keys and ksize != 8:
                        raise Damage(f"page {pgno} node {i}: free-list key of {ksize} bytes")
                    if not integer_keys:
                        if (
                            (last_key[0] is not None and key <= last_key[0])
                            or (lo is not None and key < lo)
                            or (hi is not None and key >= hi)
                        ):
                            raise Damage(f"page {pgno} node {i}: keys out of order")
                        last_key[0] = key
                    out.entries[key] = loc
            except Damage as e:
                fault(str(e))
                return
            for j, (child, low) in enumerate(children):
                visit(child, level + 1, low, children[j + 1][1] if j + 1 < len(children) else hi)

        visit(root, 1, None, None)
        return out

    def _overflow(self, pgno: int, dsize: int, last_pg: int) -> int:
        """Offset of a big value's bytes, after checking its overflow pages lie within the file."""
        if pgno < 2 or pgno > last_pg:
            raise Damage(f"overflow page {pgno} is outside the database (last page {last_pg})")
        if pgno >= self.npages:
            raise Damage(f"overflow page {pgno} lies beyond the end of the file ({self.size} bytes: truncated)")
        self.f.seek(pgno * self.psize)
        head = self.f.read(HEADER)
        got, _, flags, pages = struct.unpack_from("<QHHI", head, 0)
        if got != pgno or not flags & P_OVERFLOW:
            raise Damage(f"overflow page {pgno} has a damaged header")
        if pages * self.psize < HEADER + dsize or pgno + pages - 1 > last_pg:
            raise Damage(f"overflow page {pgno}: {pages} pages cannot hold {dsize} bytes within the database")
        if pgno + pages > self.npages:
            raise Damage(
                f"overflow pages {pgno}..{pgno + pages - 1} run past the end of the file ({self.size} bytes: truncated)"
            )
        return pgno * self.psize + HEADER


def _check_free_list(pf: PageFile, walk: Walk, last_pg: int) -> None:
    """Free-list values are page lists (count, then that many page numbers) LMDB reuses: check them."""
    for offset, length in walk.entries.values():
        raw = pf.read(offset, length)
        if length < 8 or length % 8:
            raise Damage("a free-list entry is damaged")
        count = struct.unpack_from("<Q", raw, 0)[0]
        if (count + 1) * 8 != length or any(p < 2 or p > last_pg for p in struct.unpack_from(f"<{count}Q", raw, 8)):
            raise Damage("a free-list entry is damaged")


def check_tree(path: Path | str, txnid: int | None = None) -> str | None:
    """Why LMDB must not read the snapshot `txnid` (default: the current one) of `path`, or None.

    Walks the main tree and the free list with every offset checked (pages, nodes, overflow runs,
    key order). Run it while holding a read transaction of that snapshot, so no writer reuses its pages.
    """
    problem = check_meta(path)
    if problem:
        return problem
    _, metas = read_metas(path)
    meta = (
        current(metas) if txnid is None else next((m for m in metas if isinstance(m, Meta) and m.txnid == txnid), None)
    )
    if meta is None:
        return None  # a writer committed twice since the snapshot began: its pages are pinned, the caller retries
    pf = PageFile(path, meta.psize)
    try:
        if meta.main_flags != 0 or meta.free_flags != INTEGERKEY:
            raise Damage(f"meta page {meta.index} has damaged database flags")
        free = pf.walk(meta.free_root, meta.free_depth, meta.last_pg, False, integer_keys=True)
        _check_free_list(pf, free, meta.last_pg)
        pf.walk(meta.main_root, meta.main_depth, meta.last_pg, False)
    except Damage as e:
        return str(e)
    finally:
        pf.close()
    return None


@dataclass
class Salvage:
    """What `salvage` could read: values by key, read lazily from the file, and the damage skipped."""

    pages: PageFile
    entries: dict[bytes, tuple[int, int]]
    damage: list[str]

    def keys(self) -> list[bytes]:
        return sorted(self.entries)

    def get(self, key: bytes) -> bytes | None:
        loc = self.entries.get(key)
        if loc is None:
            return None
        try:
            return self.pages.read(*loc)
        except Damage:
            return None


def salvage(path: Path | str) -> Salvage:
    """Every entry readable from the current snapshot, completed from the previous one where damage hid keys.

    The previous snapshot's pages are intact in a sound file (LMDB reuses a page only two commits after
    freeing it), so entries under a damaged subtree of the current tree are usually found there.
    """
    _, metas = read_metas(path)
    valid = sorted((m for m in metas if isinstance(m, Meta)), key=lambda m: -m.txnid)
    damage = [str(m) for m in metas if isinstance(m, Damage)]
    if not valid:
        return Salvage(PageFile(path, 4096), {}, damage or ["no meta page is readable"])
    pf = PageFile(path, valid[0].psize)
    entries: dict[bytes, tuple[int, int]] = {}
    for k, meta in enumerate(valid):
        if meta.psize != pf.psize:
            continue
        w = pf.walk(meta.main_root, meta.main_depth, meta.last_pg, tolerant=True)
        damage += w.damage
        for key, loc in w.entries.items():
            entries.setdefault(key, loc)
        if k == 0 and not w.damage:
            return Salvage(
                pf, entries, damage
            )  # the current snapshot is whole: the previous one would only bring back deleted entries
    last_pg = max(m.last_pg for m in valid if m.psize == pf.psize)
    for key, loc in scan_leaves(pf, last_pg).items():  # what a lost branch page hid: every intact leaf page
        entries.setdefault(key, loc)
    return Salvage(pf, entries, damage)


def _text_key(key: bytes) -> bool:
    """Keys of the main tree are text (the free list's are 8-byte transaction ids)."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text) and text.isprintable()


def scan_leaves(pf: PageFile, last_pg: int) -> dict[bytes, tuple[int, int]]:
    """Entries of every intact leaf page of the file, found by reading each page in turn, not by the
    tree: when damage (a truncated file loses the root, which LMDB writes last) cuts the path from the
    root, the leaves and overflow runs that remain are still whole. A page counts when its header,
    bounds and every node check out; a key found on several pages keeps the one of the higher page
    (LMDB appends new pages while it has no free ones). Freed pages may bring back entries deleted
    since: `audit` keeps only units whose records and arrays agree."""
    found: dict[bytes, tuple[int, int]] = {}
    pgno = 2
    while pgno < min(pf.npages, last_pg + 1):
        pf.f.seek(pgno * pf.psize)
        buf = pf.f.read(pf.psize)
        head, _, flags, lower, upper = struct.unpack_from("<QHHHH", buf, 0)
        if head == pgno and flags & P_OVERFLOW and not flags & (P_LEAF | P_BRANCH | P_META):
            pgno += max(1, struct.unpack_from("<I", buf, 12)[0])  # a big value's pages: skip them
            continue
        pgno += 1
        if head != pgno - 1 or flags != P_LEAF or not HEADER < lower <= upper <= pf.psize or (lower - HEADER) % 2:
            continue
        page: dict[bytes, tuple[int, int]] = {}
        try:
            for ptr in struct.unpack_from(f"<{(lower - HEADER) // 2}H", buf, HEADER):
                if not upper <= ptr <= pf.psize - NODE:
                    raise Damage("node out of bounds")
                dlo, dhi, nflags, ksize = struct.unpack_from("<HHHH", buf, ptr)
                kend, dsize = ptr + NODE + ksize, dlo | dhi << 16
                key = buf[ptr + NODE : kend]
                if kend > pf.psize or nflags & ~F_BIGDATA or not _text_key(key):
                    raise Damage("not a main-tree node")
                if nflags & F_BIGDATA:
                    if kend + 8 > pf.psize:
                        raise Damage("overflow number past the page")
                    try:  # a value whose overflow pages are lost (cut off) is skipped alone
                        page[key] = (pf._overflow(struct.unpack_from("<Q", buf, kend)[0], dsize, last_pg), dsize)
                    except Damage:
                        continue
                elif kend + dsize > pf.psize:
                    raise Damage("value past the page")
                else:
                    page[key] = ((pgno - 1) * pf.psize + kend, dsize)
        except Damage:
            continue
        found.update(page)
    return found
