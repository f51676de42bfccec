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
# A class that takes this share of a picture with a mean winning score below LOW_SCORE gets a note: on the
# procedural world the classes present score 0.93-1.0 and absent ones that took a large area 0.23-0.84.
# Not calibrated with real weights, whose cosines sit elsewhere.
LOW_SCORE, LARGE_SHARE = 0.9, 0.2
HIGHLIGHT = (230, 25, 75)  # the explained pixels and their source region


@dataclass
class Shown:
    """A segmented picture kept for clicks: the image, its labels, the winning prototype per pixel."""

    image: np.ndarray
    seg: Segmentation
    explainer: Explainer
    names: list[str]  # the class list, label k = names[k-1]


def png_data_url(rgb: np.ndarray) -> str:
    """HxWx3 uint8 → a PNG `data:` URL the page shows as is."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def label_colours(names: list[str]) -> np.ndarray:
    """(K+1,3) uint8: black for the background (label 0), then each class's own colour (`name_colour`),
    the same for a name whatever its place in the list."""
    from ..io.palette import name_colour

    return np.array([(0, 0, 0), *(name_colour(n) for n in names)], np.uint8)


def tinted(image: np.ndarray, region: np.ndarray, colour=HIGHLIGHT) -> np.ndarray:
    """`image` with `region` (a bool mask on any grid, resized to the image) tinted in `colour`."""
    from PIL import Image

    h, w = image.shape[:2]
    mask = np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
    out = image.astype(np.float32)
    out[mask] = 0.45 * out[mask] + 0.55 * np.asarray(colour, np.float32)
    return out.round().astype(np.uint8)


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
        self._progress: dict[str, dict] = {}  # job → its latest event, while its request runs

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

    def _vocabulary(self, names: list[str], on_event=None) -> tuple[Vocabulary, Segmenter, Explainer]:
        from ..engines.explain import Explainer

        key = tuple(names)
        if key not in self._vocabs:
            vocab = self.pipeline.vocabulary(names, build=self.build, on_event=on_event)
            segmenter = self.pipeline.segmenter(vocab)
            self._vocabs[key] = (vocab, segmenter, Explainer(segmenter, self.pipeline.cache))
            while len(self._vocabs) > self.keep:
                self._vocabs.popitem(last=False)
        self._vocabs.move_to_end(key)
        return self._vocabs[key]

    def progress(self, job: str) -> dict:
        """The latest progress of request `job` while it runs: {stage, name, done, total, class_index,
        classes}; stage "queued" while another request holds the models, "unknown" before or after."""
        return dict(self._progress.get(job) or {"stage": "unknown"})

    def segment(self, data: bytes, classes: str, job: str | None = None) -> dict:
        """Segment an uploaded picture against comma-separated class names.

        Returns id (for `explain` and the downloads), width, height, overlay (PNG data URL, the picture
        blended with its labels in each class's own colour), legend ([{label, name, color, pixels, share, score}]
        of the labels present, largest first; score: mean winning score), kept (the classes the category
        filter kept) and notes (a line per class that took much of the picture with a low score).
        job: a token the page polls `progress` with while the classes are built.
        """
        names = self.class_names(classes)
        image = self.read_image(data)
        count = len(names)

        def report(stage: str, name: str = "", done: int = 0, total: int = 0) -> None:
            if job is not None:
                index = names.index(name) + 1 if name in names else 0
                self._progress[job] = dict(
                    stage=stage, name=name, done=done, total=total, class_index=index, classes=count
                )

        report("queued")
        try:
            with self._lock:
                vocab, segmenter, explainer = self._vocabulary(names, report)
                report("segment")
                seg = segmenter.predict(image, explain=True)
                token, shown = uuid.uuid4().hex, Shown(image, seg, explainer, list(vocab.names))
                self._shown[token] = shown
                while len(self._shown) > self.keep:
                    self._shown.popitem(last=False)
        finally:
            self._progress.pop(job, None)
        return {"id": token, **self.describe(shown)}

    def describe(self, shown: Shown) -> dict:
        """What `segment` answers about a kept result, less its id."""
        seg, h, w = shown.seg, *shown.seg.labels.shape
        colours = label_colours(shown.names)
        overlay = (0.5 * shown.image[:h, :w].astype(np.float32) + 0.5 * colours[seg.labels]).round().astype(np.uint8)
        label_names = ["background", *shown.names]
        values, counts = np.unique(seg.labels, return_counts=True)
        legend, notes = [], []
        for v, c in sorted(zip(values.tolist(), counts.tolist()), key=lambda vc: -vc[1]):  # noqa: B905
            share, score = round(c / (h * w), 4), seg.stats.get(v, (c, None))[1]
            legend.append(
                {
                    "label": v,
                    "name": label_names[v],
                    "color": colours[v].tolist(),
                    "pixels": c,
                    "share": share,
                    "score": score,
                }
            )
            if v > 0 and score is not None and share >= LARGE_SHARE and score < LOW_SCORE:
                notes.append(
                    f"{label_names[v]} covers {share:.0%} of the picture with a low mean score ({score:.2f}): "
                    f"the picture likely holds no {label_names[v]}, and what is there has no class in the list "
                    "(add one for it)"
                )
        return {
            "width": w,
            "height": h,
            "overlay": png_data_url(overlay),
            "legend": legend,
            "kept": [shown.names[i] for i in seg.selected],
            "notes": notes,
        }

    def _kept(self, token: str) -> Shown:
        with self._lock:
            shown = self._shown.get(token)
        if shown is None:
            raise OvdiffError("this result is no longer kept on the server: segment the picture again")
        return shown

    def mask_png(self, token: str) -> bytes:
        """Result `token`'s label map as a palette PNG: pixel value = label (0 background, k = class k),
        its palette the page's colours, so the file looks as the page does and reads back exactly."""
        from PIL import Image

        shown = self._kept(token)
        im = Image.fromarray(shown.seg.labels.astype(np.uint8), mode="P")
        palette = np.zeros((256, 3), np.uint8)
        palette[: len(shown.names) + 1] = label_colours(shown.names)
        im.putpalette(palette.tobytes())
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    def results(self, token: str, fmt: str) -> dict | list:
        """Result `token` as JSON: "json" → classes (label k = classes[k-1]), kept, and per label present
        its name, colour, pixels, share and mean score; "coco" → COCO results records (compressed RLE),
        category_id = label, as `ovdiff segment --format coco-rle` writes them."""
        from ..io.adapters import to_coco

        shown = self._kept(token)
        if fmt == "coco":
            return to_coco(shown.seg.labels, shown.seg.stats, 1)
        if fmt != "json":
            raise OvdiffError(f"no results format {fmt!r}: ask for json or coco")
        h, w = shown.seg.labels.shape
        described = self.describe(shown)
        return {
            "width": w,
            "height": h,
            "classes": shown.names,
            "kept": described["kept"],
            "labels": described["legend"],
            "notes": described["notes"],
        }

    def explain(self, token: str, x: int, y: int) -> dict:
        """Why pixel (x, y) of result `token` got its label (App. A.5): the prototype that won it and the
        support-image region that prototype came from.

        Returns x, y, label, name, prototype (`Explainer.describe`'s entry; None where the background
        threshold decided), won (PNG data URL: the picture with the pixels this prototype won tinted) and
        support (PNG data URL: its support image at full size, the source region tinted alike; None
        without cached support images).
        """
        shown = self._kept(token)
        h, w = shown.seg.labels.shape
        if not (0 <= x < w and 0 <= y < h):
            raise OvdiffError(f"pixel ({x}, {y}) is outside the {w}x{h} picture")
        label = int(shown.seg.labels[y, x])
        names = ["background", *shown.names]
        out = {"x": x, "y": y, "label": label, "name": names[label], "prototype": None, "won": None, "support": None}
        index = int(shown.seg.winner[y, x])
        if index < 0:
            return out
        with self._lock:
            out["prototype"] = shown.explainer.describe(shown.seg.winner, index)
            support = shown.explainer.support(index)
        out["won"] = png_data_url(tinted(shown.image[:h, :w], shown.seg.winner == index))
        if support is not None:
            out["support"] = png_data_url(tinted(*support))
        return out
