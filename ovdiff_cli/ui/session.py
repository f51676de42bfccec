"""The web demo's work, without HTTP: segment an uploaded picture, explain a clicked pixel (App. A.5).

One `api.Pipeline` (the session object of the CLI and the API) does the work; this keeps the few
latest results so a click can be explained, and refuses oversized requests with one clear line.
"""

from __future__ import annotations

import base64
import io
import threading
import uuid
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import OvdiffError

if TYPE_CHECKING:
    from ..engines.explain import Explainer
    from ..method.stage4_segment.segmenter import Segmentation, Segmenter
    from ..results import Vocabulary

MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # an encoded picture; its pixels are bounded separately
DEFAULT_MAX_PIXELS = 16_000_000
DEFAULT_MAX_CLASSES = 32


@dataclass
class Shown:
    """A segmented picture kept for clicks: the image, its labels, the winning prototype per pixel."""

    image: np.ndarray
    seg: Segmentation
    explainer: Explainer


def png_data_url(rgb: np.ndarray) -> str:
    """HxWx3 uint8 → a PNG `data:` URL the page shows as is."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class DemoSession:
    """The demo's state: a pipeline, its vocabularies by class list, the `keep` latest results.

    max_pixels/max_classes bound one request; build=False refuses classes missing from the cache
    (the error names the command that builds them). Calls are serialised: the models are shared.
    """

    def __init__(
        self,
        pipeline: Any,  # an api.Pipeline (which sits above this module)
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_classes: int = DEFAULT_MAX_CLASSES,
        build: bool = True,
        keep: int = 16,
    ):
        self.pipeline, self.max_pixels, self.max_classes, self.build, self.keep = (
            pipeline,
            max_pixels,
            max_classes,
            build,
            keep,
        )
        self.max_bytes = MAX_UPLOAD_BYTES
        self._lock = threading.Lock()
        self._vocabs: OrderedDict[tuple[str, ...], tuple[Vocabulary, Segmenter, Explainer]] = OrderedDict()
        self._shown: OrderedDict[str, Shown] = OrderedDict()

    def read_image(self, data: bytes) -> np.ndarray:
        """An uploaded file → HxWx3 uint8 RGB, or an OvdiffError (not a picture, too many pixels)."""
        from PIL import Image, UnidentifiedImageError

        from ..inputs import as_rgb

        if not data:
            raise OvdiffError("no image: choose or drop a picture file")
        if len(data) > self.max_bytes:
            raise OvdiffError(f"the file is {len(data):,} bytes, above this server's limit of {self.max_bytes:,}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:
                    w, h = im.size
                    if w * h > self.max_pixels:
                        raise OvdiffError(
                            f"the picture is {w}x{h} = {w * h:,} pixels, above this server's limit of "
                            f"{self.max_pixels:,} (ovdiff serve --max-pixels): downscale it first"
                        )
                    im.seek(0)
                    return as_rgb(im)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise OvdiffError(f"not a picture Pillow can read ({type(e).__name__}): upload a PNG, JPEG or WebP") from e

    def class_names(self, text: str) -> list[str]:
        """Comma-separated class names, read as `ovdiff segment --classes` reads them, at most max_classes."""
        from ..names import parse_class_list

        names = parse_class_list(text)
        if len(names) > self.max_classes:
            raise OvdiffError(
                f"{len(names)} classes, above this server's limit of {self.max_classes} "
                f"(ovdiff serve --max-classes N raises it)"
            )
        return names

    def _vocabulary(self, names: list[str]) -> tuple[Vocabulary, Segmenter, Explainer]:
        from ..engines.explain import Explainer

        key = tuple(names)
        if key not in self._vocabs:
            vocab = self.pipeline.vocabulary(names, build=self.build)
            segmenter = self.pipeline.segmenter(vocab)
            self._vocabs[key] = (vocab, segmenter, Explainer(segmenter, self.pipeline.cache))
            while len(self._vocabs) > self.keep:
                self._vocabs.popitem(last=False)
        self._vocabs.move_to_end(key)
        return self._vocabs[key]

    def segment(self, data: bytes, classes: str) -> dict:
        """Segment an uploaded picture against comma-separated class names.

        Returns id (for `explain`), width, height, overlay (PNG data URL, the picture blended with its
        labels), legend ([{label, name, color, share}] of the labels present, largest first) and kept
        (the classes the category filter kept).
        """
        from ..io.images import overlay_picture
        from ..io.legend import legend

        names = self.class_names(classes)
        image = self.read_image(data)
        with self._lock:
            vocab, segmenter, explainer = self._vocabulary(names)
            seg = segmenter.predict(image, explain=True)
            token = uuid.uuid4().hex
            self._shown[token] = Shown(image, seg, explainer)
            while len(self._shown) > self.keep:
                self._shown.popitem(last=False)
        h, w = seg.labels.shape
        label_names = {0: "background", **{k + 1: n for k, n in enumerate(vocab.names)}}
        overlay = overlay_picture(image, seg.labels, label_names)[:h, :w]
        colours = {e["index"]: e["color"] for e in legend(vocab.names, True)["labels"]}
        values, counts = np.unique(seg.labels, return_counts=True)
        present = [
            {
                "label": int(v),
                "name": label_names[int(v)],
                "color": colours[int(v)],
                "share": round(float(c) / (h * w), 4),
            }
            for v, c in sorted(zip(values, counts), key=lambda vc: -vc[1])  # noqa: B905
        ]
        return {
            "id": token,
            "width": w,
            "height": h,
            "overlay": png_data_url(overlay),
            "legend": present,
            "kept": [vocab.names[i] for i in seg.selected],
        }

    def explain(self, token: str, x: int, y: int) -> dict:
        """Why pixel (x, y) of result `token` got its label (App. A.5): the prototype that won it and the
        support-image region that prototype came from.

        Returns x, y, label, name, prototype (`Explainer.describe`'s entry; None where the background
        threshold decided) and picture (PNG data URL: the pixels this prototype won, tinted, beside its
        support image with the source region tinted alike; None without cached support images).
        """
        from ..io.images import explain_picture

        with self._lock:
            shown = self._shown.get(token)
        if shown is None:
            raise OvdiffError("this result is no longer kept on the server: segment the picture again")
        h, w = shown.seg.labels.shape
        if not (0 <= x < w and 0 <= y < h):
            raise OvdiffError(f"pixel ({x}, {y}) is outside the {w}x{h} picture")
        label = int(shown.seg.labels[y, x])
        names = ["background", *(c.name for c in shown.explainer.seg.classes)]
        out = {"x": x, "y": y, "label": label, "name": names[label], "prototype": None, "picture": None}
        index = int(shown.seg.winner[y, x])
        if index < 0:
            return out
        with self._lock:
            out["prototype"] = entry = shown.explainer.describe(shown.seg.winner, index)
            support = shown.explainer.support(index)
        if support is not None:
            picture = explain_picture(
                shown.image, [shown.seg.winner == index], [(*support, shown.explainer.caption(entry))]
            )
            out["picture"] = png_data_url(picture)
        return out
