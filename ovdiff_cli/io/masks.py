"""Mask files `ovdiff segment` writes: palette or 16-bit PNG, npz, or COCO results with compressed RLE.

A label map (H,W) holds 0 = background and k = the k-th class. Up to `MAX_PALETTE_LABELS` classes
it is a palette PNG in the VOC colours (255 stays VOC's "ignore"); with more classes every mask of
the run is a 16-bit grayscale PNG whose value is the label, so any vocabulary up to 65535 classes
can be written. `--format npz` stores the same labels (and, asked, per-class scores) in one
compressed numpy file per image; `--format coco-rle` writes one COCO results-format JSON for the
whole run, one compressed-RLE record per image and class present, as pycocotools reads it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InvalidSetting, OvdiffError
from .images import _atomic, save_json
from .palette import voc_palette

MAX_PALETTE_LABELS = 254  # palette indices 0..254 (255 is VOC's "ignore")
MAX_LABELS = 65535  # 16-bit PNG values
FORMATS = ("png", "npz", "coco-rle")
COCO_RESULTS = "coco_results.json"
COCO_IMAGES = "coco_images.json"


def png_kind(num_classes: int) -> str:
    """'palette' when `num_classes` labels (and background 0) fit a palette PNG, else 'uint16'."""
    if num_classes > MAX_LABELS:
        raise OvdiffError(f"{num_classes} classes: masks hold at most {MAX_LABELS} (16-bit PNG values)")
    return "palette" if num_classes <= MAX_PALETTE_LABELS else "uint16"


def save_png_mask(labels: np.ndarray, path: Path, num_classes: int) -> None:
    """(H,W) integer labels in 0..num_classes → a palette PNG (VOC colours), or 16-bit PNG beyond 254 classes."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(f"labels must be in 0..{num_classes}")
    if png_kind(num_classes) == "palette":
        im = Image.fromarray(labels.astype(np.uint8), mode="P")
        im.putpalette(voc_palette().reshape(-1).tolist())
        _atomic(path, lambda tmp: im.save(tmp, format="PNG", optimize=True))
    else:
        im = Image.fromarray(labels.astype(np.uint16))
        _atomic(path, lambda tmp: im.save(tmp, format="PNG"))


def format_note(fmt: str, num_classes: int) -> str:
    """What the legend says about the mask files of a run, for classes.json."""
    if fmt == "npz":
        return (
            "npz: 'labels' (H,W) uint16 = index below; with --save-scores 'scores' (K+1,h,w) float16, "
            "cosine score per label at the working resolution (-2 = not scored)"
        )
    if fmt == "coco-rle":
        return (
            f"COCO results JSON ({COCO_RESULTS}): compressed RLE per image and class, category_id = index below; "
            f"image ids in {COCO_IMAGES}"
        )
    if png_kind(num_classes) == "palette":
        return "palette PNG: pixel value = index below; colours are the PASCAL VOC palette"
    return "16-bit grayscale PNG (more than 254 classes): pixel value = index below"


# --------------------------------------------------------------------------- COCO compressed RLE


def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a (H,W) binary mask in column-major order, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def encode_counts(counts: list[int]) -> str:
    """The compressed RLE string (pycocotools' rleToString): each count minus the one two before it
    (from the third on), in little-endian 5-bit groups with a continuation bit (0x20), + 48."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5  # arithmetic shift: negative differences keep their sign
            more = x != -1 if ch & 0x10 else x != 0
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def rle_encode(mask: np.ndarray) -> dict:
    """(H,W) binary mask → {"size": [H, W], "counts": str}, COCO's compressed RLE."""
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": encode_counts(rle_counts(mask))}


def coco_records(labels: np.ndarray, stats: dict[int, tuple[int, float]], image_id: int) -> list[dict]:
    """COCO results records of one label map, one per class present (background left out): image_id,
    category_id (the label value), compressed-RLE segmentation, score (the segment's mean winning
    score; 1.0 where a caller has none) and area in pixels."""
    out = []
    for k in (int(v) for v in np.unique(labels) if v > 0):
        mask = labels == k
        score = stats[k][1] if k in stats else 1.0
        out.append(
            {
                "image_id": int(image_id),
                "category_id": k,
                "segmentation": rle_encode(mask),
                "score": round(float(score), 6),
                "area": int(mask.sum()),
            }
        )
    return out


# --------------------------------------------------------------------------- the writer


def check_format(fmt: str, save_scores: bool = False) -> None:
    """InvalidSetting unless masks can be written as `fmt` (with the score maps, when `save_scores`)."""
    if fmt not in FORMATS:
        raise InvalidSetting("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if save_scores and fmt != "npz":
        raise InvalidSetting("save_scores", "needs the npz format, where the scores are stored")


@dataclass
class MaskWriter:
    """Writes one run's masks in `fmt`: per image `write`, then `close` (COCO's JSON is written there).

    num_classes: the vocabulary size (chooses palette or 16-bit PNG); save_scores: also store the
    per-label scores (npz only).
    """

    out_dir: Path
    num_classes: int
    fmt: str = "png"
    save_scores: bool = False
    names: list[str] = field(default_factory=list)
    _records: list[dict] = field(default_factory=list, repr=False)
    _images: list[dict] = field(default_factory=list, repr=False)
    _ids: dict[str, int] = field(default_factory=dict, repr=False)  # coco-rle: image name → its image id

    def __post_init__(self) -> None:
        check_format(self.fmt, self.save_scores)
        png_kind(self.num_classes)  # refuses vocabularies beyond 16 bits up front
        self.out_dir = Path(self.out_dir)

    def path(self, name: str) -> Path:
        """The file image `name` goes to (the COCO file for coco-rle)."""
        if self.fmt == "coco-rle":
            return self.out_dir / COCO_RESULTS
        return self.out_dir / f"{name}.{self.fmt}"

    def write(
        self,
        name: str,
        labels: np.ndarray,
        scores: np.ndarray | None = None,
        file_name: str | None = None,
        stats: dict[int, tuple[int, float]] | None = None,
    ) -> None:
        """labels (H,W) int in 0..num_classes; scores (K+1,h,w) float, needed when `save_scores`; for
        coco-rle, file_name: the image's file (default `name`) and stats: label → (pixels, mean score)."""
        if self.fmt == "png":
            save_png_mask(labels, self.path(name), self.num_classes)
        elif self.fmt == "npz":
            arrays = {"labels": np.asarray(labels, np.uint16)}
            if self.save_scores:
                if scores is None:
                    raise ValueError("save_scores needs the scores of each image")
                arrays["scores"] = np.asarray(scores, np.float16)
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            _atomic(self.path(name), lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
        else:
            image_id = self._ids[name] = len(self._ids) + 1
            h, w = labels.shape
            self._images.append({"id": image_id, "file_name": file_name or name, "height": int(h), "width": int(w)})
            self._records += coco_records(labels, stats or {}, image_id)

    def discard(self, name: str) -> None:
        """Forget image `name`'s COCO records (its other outputs failed: the run counts it as not written)."""
        gone = self._ids.get(name)
        self._images = [i for i in self._images if i["id"] != gone]
        self._records = [r for r in self._records if r["image_id"] != gone]

    def close(self) -> list[Path]:
        """Finish the run; returns the run-wide files written (COCO's two JSON files, else none)."""
        if self.fmt != "coco-rle":
            return []
        results, images = self.out_dir / COCO_RESULTS, self.out_dir / COCO_IMAGES
        _atomic(results, lambda tmp: Path(tmp).write_text(json.dumps(self._records)))
        cats = [{"id": k + 1, "name": n} for k, n in enumerate(self.names)]
        save_json({"images": self._images, "categories": cats}, images)
        return [results, images]
