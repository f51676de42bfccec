"""Beyond the paper: support sets from the user's own photos (`ovdiff protos add NAME --images DIR`).

A user with a few photos of an object (no masks) gets prototypes as for a generated class: each photo,
centre-cropped to the sampler's size, gets its attribution map from one noised UNet pass conditioned
on the prompt (`SDGenerator.attribute`; the procedural world's stand-in in the offline world); masks,
Eq. 1, K-means and the cache then run as for generated images, which can be mixed in (--n-images).
The photos' content hash is part of the class's keys, so changing a photo builds a new class; a
note in the cache (`u/<id>`) says that the name is built from these photos, so `segment` and
`protos add` without --images find the class by its name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidSetting
from ..method.stage1_support.sampling import image_seed
from ..store.cache import now_iso
from ..store.keys import photo_class_id, photo_note_key, photo_set_id

if TYPE_CHECKING:
    from ..config import SampleConfig
    from ..models.presets import ModelSpecs
    from ..store.cache import Cache
    from ..types import StageSource

MIN_PHOTO_SIDE = 64  # pixels: smaller photos hold too few feature cells to describe an object
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class PhotoSet:
    """The user's photos of one class: names (in order), square size×size×3 uint8 images, content hash."""

    names: list[str]
    images: list[np.ndarray]
    digest: str


def centre_square(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 → size×size×3: the centred square of the short side, resized (as support images are square)."""
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = np.ascontiguousarray(image[top : top + s, left : left + s])
    return np.asarray(
        Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC if s < size else Image.Resampling.LANCZOS)
    )


def read_photos(folder: str | Path, size: int) -> PhotoSet:
    """Every image file in `folder` (not its subfolders), sorted by name; bad input is one OvdiffError
    naming the file (unreadable, or a side under MIN_PHOTO_SIDE) or the empty folder."""
    from ..io.images import ImageError, load_image

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InvalidSetting("images", f"{root}: not a folder")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    if not files:
        raise InvalidSetting("images", f"{root}: no image files ({', '.join(PHOTO_SUFFIXES)}) in this folder")
    digest, images = hashlib.sha256(), []
    for p in files:
        try:
            image = load_image(p)
        except (ImageError, OSError, ValueError) as e:
            raise InvalidSetting("images", f"photo {p} cannot be read as an image ({e})") from None
        if min(image.shape[:2]) < MIN_PHOTO_SIDE:
            raise InvalidSetting(
                "images",
                f"photo {p} is {image.shape[1]}×{image.shape[0]} px; photos need at least "
                f"{MIN_PHOTO_SIDE} px on each side",
            )
        digest.update(hashlib.sha256(p.read_bytes()).digest())
        images.append(centre_square(image, size))
    return PhotoSet([p.name for p in files], images, digest.hexdigest()[:24])


def ensure_photo_set(cache: Cache, stages: StageSource, norm: str, photos: PhotoSet, config: SampleConfig) -> str:
    """Cache the photos with their attribution maps (one transaction: all or nothing); return the set's id."""
    sid = photo_set_id(norm, photos.digest, stages.specs, config)
    meta = cache.support_meta(sid)
    if meta is not None and meta["n_images"] == len(photos.images):
        return sid
    with cache.lock(sid):
        generator = stages.generator()
        maps: list[np.ndarray] = []
        for i in range(0, len(photos.images), config.batch_size):
            chunk = photos.images[i : i + config.batch_size]
            maps += generator.attribute(norm, chunk, config, [image_seed(norm, 0, j) for j in range(i, i + len(chunk))])
        meta = {
            "name": norm,
            "norm": norm,
            "photos": photos.digest,
            "files": photos.names,
            "prompt": config.prompt_template.format(norm),
            **config.fingerprint_fields(),
            "generator": generator.identity(),
            "models": stages.specs.identity(),
            "created_at": now_iso(),
            "n_images": 0,
        }
        cache.put_support_batch(sid, meta, 0, photos.images, maps)
    return sid


# --------------------------------------------------------------------------- the note: NAME is built from photos


def _note_key(norm: str, seed: int, specs: ModelSpecs) -> bytes:
    return photo_note_key(photo_class_id(norm, seed, specs))


def photo_class(cache: Cache, norm: str, seed: int, specs: ModelSpecs) -> dict | None:
    """The note of a class built from photos (`photos`: content hash, `photo_set`: its support-set id,
    `n_photos`, `n_generated`), or None for a generated class."""
    raw = cache.get(_note_key(norm, seed, specs))
    return None if raw is None else json.loads(raw)


def photo_note(norm: str, seed: int, specs: ModelSpecs, sid: str, photos: PhotoSet, n_generated: int) -> dict:
    """What `put_photo_class` stores (and `ensure_classes` takes in `photos`): the photos, and how many generated
    images join them."""
    return {
        "name": norm,
        "seed": seed,
        "photos": photos.digest,
        "photo_set": sid,
        "n_photos": len(photos.images),
        "n_generated": n_generated,
        "note": photo_class_id(norm, seed, specs),
        "created_at": now_iso(),
    }


def put_photo_class(cache: Cache, norm: str, seed: int, specs: ModelSpecs, note: dict) -> None:
    cache.put_note(photo_class_id(norm, seed, specs), note)
