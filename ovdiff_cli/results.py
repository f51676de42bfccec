"""What the session's calls return: a `Vocabulary` (`Pipeline.vocabulary`) and a `SegmentationResult`
(`Pipeline.segment`): one image's labels, with the scores, stats and ways out (files, overlays, other libraries'
formats)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InvalidSetting, OvdiffError

if TYPE_CHECKING:
    from PIL import Image

    from .types import ClassParts


@dataclass
class SegmentationResult:
    """One image segmented against one vocabulary.

    labels: (H,W) int32 at the image's size, 0 = background, k = class_names[k-1]. scores:
    (K+1,h,w) float32 at the working size (short side `short_side`), row k = the window-averaged
    cosine of label k's best prototype, -2 where label k was not scored (the filter dropped the
    class, or there is no background); the label map is their bilinear upsampling's argmax, every
    score ≤ 0 counted as 0 and ties going to the background (the authors' rule). background:
    whether label 0 is in play (False with segment={"background": False}). kept: the classes the CLIP
    filter kept. timings: seconds per stage.
    stats: label present → (pixels, mean winning score).
    """

    labels: np.ndarray
    class_names: list[str]
    background: bool
    kept: list[str]
    scores: np.ndarray | None
    timings: dict[str, float]
    image: np.ndarray = field(repr=False)
    stats: dict[int, tuple[int, float]] = field(default_factory=dict, repr=False)

    @property
    def segments(self) -> list[dict]:
        """The labels present as Hugging Face's image-segmentation pipeline lists them: per label (background
        too), {"label": name, "score": mean winning score over its pixels, "mask": (H,W) bool}."""
        names = self.names
        out = []
        for k in (int(v) for v in np.unique(self.labels)):
            stat = self.stats.get(k)
            out.append({"label": names[k], "score": None if stat is None else stat[1], "mask": self.labels == k})
        return out

    def to_supervision(self):
        """An `sv.Detections` (pip install supervision): one detection per class present, with its mask,
        box, class_id (label value), confidence (mean winning score) and data["class_name"]."""
        from .io.adapters import to_supervision

        return to_supervision(self.labels, self.names, self.stats)

    def to_fiftyone(self):
        """(`fo.Segmentation`, mask targets) for FiftyOne (pip install fiftyone): `sample["ovdiff"] = seg`,
        `dataset.mask_targets["ovdiff"] = targets`."""
        from .io.adapters import to_fiftyone

        return to_fiftyone(self.labels, self.names)

    def to_coco(self, image_id: int = 1) -> list[dict]:
        """COCO results records (compressed RLE, score, area) of the classes present, as pycocotools'
        `loadRes` reads them; category_id is the label value (class_names[id-1])."""
        from .io.adapters import to_coco

        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise InvalidSetting("image_id", f"takes a whole number (COCO's image id), got {image_id!r:.40}")
        return to_coco(self.labels, self.stats, image_id)

    @property
    def names(self) -> dict[int, str]:
        """Label value → class name (0 → "background")."""
        return {0: "background", **{k + 1: n for k, n in enumerate(self.class_names)}}

    def present(self) -> list[str]:
        """Names of the classes with at least one pixel, in vocabulary order (background left out)."""
        return [self.class_names[v - 1] for v in np.unique(self.labels).tolist() if v > 0]

    def mask(self, name: str) -> np.ndarray:
        """(H,W) bool: the pixels labelled `name`."""
        if name not in self.class_names:
            raise OvdiffError(f"{name!r} is not in this vocabulary: {', '.join(self.class_names)}")
        return self.labels == self.class_names.index(name) + 1

    def save(self, path: str | Path) -> Path:
        """Write the label map as `ovdiff segment` does: .png (palette PNG, 16-bit beyond 254 classes) or
        .npz ('labels' and, when computed, 'scores')."""
        from .io.masks import MaskWriter

        path = Path(path).expanduser()
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in ("png", "npz"):
            raise OvdiffError(f"save to a .png or .npz file, not {path.name}")
        writer = MaskWriter(
            path.parent, len(self.class_names), fmt, save_scores=fmt == "npz" and self.scores is not None
        )
        name = path.name[: -len(path.suffix)]
        try:
            writer.write(name, self.labels, self.scores)
        except OSError as e:
            raise OvdiffError(f"cannot write {path}: {e.strerror or e}") from e
        return writer.path(name)

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The image blended with its coloured labels, with a legend of the classes present (PIL RGB)."""
        from PIL import Image

        from .io.images import overlay_picture
        from .limits import in_range

        in_range("alpha", alpha, " (0 shows the image, 1 the labels)")
        return Image.fromarray(overlay_picture(self.image, self.labels, self.names, alpha))


@dataclass
class Vocabulary:
    """The classes to segment against, with their prototypes (built or read from the cache).

    names: the class names (normalised); label k of a result is names[k-1], 0 is background.
    classes: per class, its prototypes in each part of the extractor spec (`types.ClassParts`).
    """

    names: list[str]
    classes: list[ClassParts] = field(repr=False)
    seed: int
    extractor: str

    def __len__(self) -> int:
        return len(self.names)

    @property
    def ids(self) -> list[dict[str, str]]:
        """Per class, part → cache id of its prototypes there, as `ovdiff protos list` shows them."""
        return [{part: p.pid for part, p in c.parts.items()} for c in self.classes]
