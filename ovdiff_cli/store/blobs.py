"""Self-checking value encodings of the cache: array blobs with a CRC-32, PNGs with every chunk's CRC checked.

The byte layout is documented in `cache_schema.md` ("Array blob").
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

ARRAY_MAGIC = b"OVDA"
ARRAY_FORMAT = 1
_ALLOWED_DTYPES = {"<f2", "<f4", "<f8", "|u1", "|b1", "<i2", "<i4", "<i8", "<u2"}


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


def decode_array(blob: bytes | memoryview) -> np.ndarray:
    """Inverse of `encode_array`; raises ValueError on any inconsistency (used by `cache verify`).
    A memoryview (of LMDB's map) is copied once, into the returned array."""
    if bytes(blob[:4]) != ARRAY_MAGIC:
        raise ValueError("not an array blob (bad magic)")
    fmt, dlen = struct.unpack_from("<BB", blob, 4)
    if fmt != ARRAY_FORMAT:
        raise ValueError(f"array format {fmt} unknown")
    dt = bytes(blob[6 : 6 + dlen]).decode("ascii")
    if dt not in _ALLOWED_DTYPES:
        raise ValueError(f"dtype {dt!r} not allowed")
    (ndim,) = struct.unpack_from("<B", blob, 6 + dlen)
    off = 7 + dlen
    shape = struct.unpack_from(f"<{ndim}Q", blob, off)
    off += 8 * ndim
    (crc,) = struct.unpack_from("<I", blob, off)
    payload = memoryview(blob)[off + 4 :]  # a view: slicing bytes would copy the payload once more
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
