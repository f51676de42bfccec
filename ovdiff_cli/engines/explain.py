"""Paper App. A.5, explanations: which prototype won each pixel and where in the support set it came from.

`ovdiff segment --explain` writes these beside the masks (`Explainer`, called by `local.segment_paths`).
The method's part is `Segmenter.source` and `Segmentation.winner`; this module reads the cache and
writes the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..io.images import InputImage
    from ..method.stage4_segment.segmenter import Segmentation, Segmenter


class Explainer:
    """Writes, per image, which prototype won each pixel and where in the support set it came from.

    explain/<name>.json lists the prototypes that won pixels (class, part, fg/bg, kind, row, pixel
    count, bounding box, support image and region); explain/<name>.winner.png is a 16-bit map of the
    winning prototype per pixel (its JSON `index` + 1, 0 where a threshold decided the background:
    no label scored above 0, or without bg prototypes none passed the fg threshold);
    explain/<name>.png shows the `top` largest regions next to their support-image sources.

    Under late fusion a pixel's label is the argmax of the parts' averaged scores; its winner is the
    best prototype of that label in the part where that label scored highest (over all crops), so
    the explanation names one prototype of one feature space.
    """

    def __init__(self, segmenter: Segmenter, cache, top: int = 6):
        self.seg, self.cache, self.top = segmenter, cache, top
        self._arrays: dict[tuple[int, str], dict] = {}

    def _class_data(self, ci: int, part: str) -> dict:
        if (ci, part) not in self._arrays:
            pid = self.seg.classes[ci].parts[part].pid
            rec = self.cache.class_record(pid) if (self.cache is not None and pid) else None
            names = ("masks", "fg/part_labels", "bg/part_labels", "fg/instance_src", "bg/instance_src")
            wanted = [n for n in names if rec and n in rec["arrays"]]
            arrays = self.cache.class_arrays(pid, wanted) if rec else {}
            self._arrays[(ci, part)] = {"support_id": rec.get("support_id") if rec else None, **arrays}
        return self._arrays[(ci, part)]

    def source(self, index: int) -> tuple[int | None, np.ndarray | None, str]:
        """(support image, region on the mask or part grid, description) of prototype `index`."""
        part, p = self.seg.source(index)
        data = self._class_data(p.cls, part)
        code = 1 if p.group == "fg" else 2  # prototypes.encode_masks' bit of the group
        masks = data.get("masks")
        if p.kind == "instance":
            src = self.seg.classes[p.cls].parts[part].sources.get(f"{p.group}/instance")
            src = data.get(f"{p.group}/instance_src") if src is None else src  # heads carry no sources
            img = int(src[p.row]) if src is not None and p.row < len(src) else None
            region = (masks[img] & code) > 0 if (masks is not None and img is not None) else None
            return img, region, f"{p.group} mask of support image {img}"
        if p.kind == "part" and f"{p.group}/part_labels" in data:
            parts = data[f"{p.group}/part_labels"] == p.row
            img = int(parts.reshape(len(parts), -1).sum(1).argmax())
            return (
                img,
                parts[img],
                f"part cluster {p.row} ({int(parts.sum())} cells, {int((parts.any((1, 2))).sum())} images)",
            )
        if masks is not None:
            img = int(((masks & code) > 0).reshape(len(masks), -1).sum(1).argmax())
            return img, (masks[img] & code) > 0, f"mean of all {p.group} masks (largest shown)"
        return None, None, "no support data cached"

    def describe(self, winner: np.ndarray, index: int) -> dict:
        """The JSON entry of prototype `index`: its class, label, part, group, kind, row, and the pixels
        and bounding box it won in `winner` (a `Segmentation.winner` map)."""
        part, p = self.seg.source(index)
        won = winner == index
        ys, xs = np.nonzero(won)
        img, _, how = self.source(index)
        return {
            "index": index,
            "class": self.seg.classes[p.cls].name,
            "label": 0 if p.group == "bg" else p.cls + 1,
            "part": part,
            "group": p.group,
            "kind": p.kind,
            "row": p.row,
            "pixels": int(won.sum()),
            "bbox_xyxy": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None,
            "support_image": img,
            "support_region": how,
        }

    def support(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(support image HxWx3 uint8, its source region of prototype `index`), None when not cached."""
        part, p = self.seg.source(index)
        img, region, _ = self.source(index)
        sid = self._class_data(p.cls, part).get("support_id")
        if img is None or region is None or not sid:
            return None
        return self.cache.support_image(sid, img), region

    @staticmethod
    def caption(entry: dict) -> str:
        """The caption of a prototype's tile in the explanation picture."""
        return (
            f"{entry['class']}\n{entry['part']}: {entry['group']} {entry['kind']} #{entry['row']}\n"
            f"{entry['pixels']} px\n{entry['support_region']}"
        )

    def __call__(self, item: InputImage, image: np.ndarray, seg: Segmentation, out_dir: Path) -> None:
        from ..io.images import explain_picture, save_index_map, save_json, save_picture

        winner = seg.winner
        ids, counts = np.unique(winner, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        entries, regions, supports = [], [], []
        for k in order:
            idx, n = int(ids[k]), int(counts[k])
            if idx < 0:
                entries.append({"index": -1, "prototype": "background threshold", "pixels": n})
                continue
            entry = self.describe(winner, idx)
            entries.append(entry)
            support = self.support(idx) if len(supports) < self.top else None
            if support is not None:
                regions.append(winner == idx)
                supports.append((*support, self.caption(entry)))
        save_json(
            {"image": str(item.path), "size_hw": list(winner.shape), "prototypes": entries},
            out_dir / f"{item.name}.json",
        )
        save_index_map(np.where(winner < 0, 0, winner + 1), out_dir / f"{item.name}.winner.png")
        save_picture(explain_picture(image, regions, supports), out_dir / f"{item.name}.png")
