"""Label Studio's side of `ovdiff label-studio`, without HTTP: the labeling config read as a vocabulary,
a segmentation written as Label Studio results, and which image URLs may be fetched.

A project's `BrushLabels` (masks) and `PolygonLabels` tags name the classes: each `Label`'s `value` is
what Label Studio shows and stores; the text ovdiff segments is the label's `hint` when it has one (a
longer prompt, shown on hover too: `<Label value="car" hint="a red car"/>`), else its value. Brush masks
are encoded with Label Studio's own RLE encoder (label-studio-sdk), polygons are the masks' outer
contours in percent of the image, as Label Studio stores them.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import MissingLibrary, OvdiffError
from ..names import normalise

if TYPE_CHECKING:
    from ..results import SegmentationResult

KINDS = {"brushlabels": "brush", "polygonlabels": "polygon"}  # config tag (lower case) → what we write
SDK = "label-studio-sdk"


@dataclass(frozen=True)
class Control:
    """One BrushLabels/PolygonLabels tag: its name, the Image tag it labels (to_name) and that tag's data
    key (`$image` → "image"), and per label its value and the prompt ovdiff segments for it."""

    name: str
    to_name: str
    kind: str
    data_key: str
    labels: tuple[str, ...]
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class LabelingConfig:
    """The controls of a labeling config that ovdiff can predict for."""

    controls: tuple[Control, ...]

    @property
    def prompts(self) -> list[str]:
        """The vocabulary: every control's prompts, each once, in the config's order."""
        return list(dict.fromkeys(p for c in self.controls for p in c.prompts))

    @property
    def data_keys(self) -> list[str]:
        """The task data fields holding the images, each once."""
        return list(dict.fromkeys(c.data_key for c in self.controls))


def parse_config(xml: str) -> LabelingConfig:
    """A Label Studio labeling config (XML) → its BrushLabels/PolygonLabels controls, or a one-line error
    (not XML, no such tag, a tag without labels or without an Image to label)."""
    if not isinstance(xml, str) or not xml.strip():
        raise OvdiffError("no labeling config: Label Studio sends the project's XML in 'schema' or 'label_config'")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise OvdiffError(f"the labeling config is not XML Label Studio could have sent ({e})") from e
    images = {
        el.get("name"): el.get("value", "")
        for el in root.iter()
        if el.tag.lower() == "image" and el.get("name") and el.get("value", "").startswith("$")
    }
    controls = []
    for el in root.iter():
        kind = KINDS.get(el.tag.lower())
        if kind is None:
            continue
        name, to_name = el.get("name", ""), el.get("toName", "")
        if to_name not in images:
            raise OvdiffError(f"<{el.tag} name={name!r}> labels {to_name!r}, which is no <Image value='$...'> tag")
        labels = [lab for lab in el if lab.tag.lower() == "label" and lab.get("value", "").strip()]
        if not labels:
            raise OvdiffError(f"<{el.tag} name={name!r}> has no <Label value=...>: nothing to segment")
        controls.append(
            Control(
                name,
                to_name,
                kind,
                images[to_name][1:],
                tuple(lab.get("value") for lab in labels),
                tuple(normalise(lab.get("hint") or lab.get("value")) for lab in labels),  # as the vocabulary names it
            )
        )
    if not controls:
        raise OvdiffError("the labeling config has no <BrushLabels> or <PolygonLabels> tag: ovdiff predicts masks")
    return LabelingConfig(tuple(controls))


def model_version(preset: str, seed: int, extractor: str, prompts: list[str]) -> str:
    """`ovdiff-PRESET-ID`: ID names the vocabulary (its prompts, seed and extractor), so a changed label
    set, preset or seed is a new model version in Label Studio."""
    digest = hashlib.sha256(json.dumps([prompts, seed, extractor]).encode()).hexdigest()[:10]
    return f"ovdiff-{preset}-{digest}"


def rle_encoder():
    """Label Studio's brush RLE encoder (label_studio_sdk.converter.brush.mask2rle)."""
    try:
        from label_studio_sdk.converter.brush import mask2rle
    except ImportError as e:
        raise MissingLibrary(SDK, "ovdiff label-studio") from e
    return mask2rle


def brush_value(mask: np.ndarray) -> list[int]:
    """A (H,W) bool mask as Label Studio's brush RLE (RGBA, 255 inside)."""
    return [int(v) for v in rle_encoder()(mask.astype(np.uint8) * 255)]


def polygons(mask: np.ndarray) -> list[list[list[float]]]:
    """The outer contours of a (H,W) bool mask as Label Studio polygons: [[x%, y%], ...] per region of at
    least 3 corners (holes are not drawn: a polygon has none)."""
    import cv2

    h, w = mask.shape
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [
        [[round(100 * float(x) / w, 4), round(100 * float(y) / h, 4)] for x, y in c[:, 0, :]]
        for c in contours
        if len(c) >= 3
    ]


def task_prediction(config: LabelingConfig, results: dict[str, SegmentationResult], version: str) -> dict:
    """One task's prediction from the segmentation of each of its images (data key → result): per control,
    one region per label present (brush: its mask; polygon: one region per outer contour), each with the
    class's mean winning score; `score` is their mean."""
    regions: list[dict] = []
    for control in config.controls:
        result = results[control.data_key]
        h, w = result.labels.shape
        index = {name: k + 1 for k, name in enumerate(result.class_names)}
        for label, prompt in zip(control.labels, control.prompts, strict=True):
            k = index[prompt]
            mask = result.labels == k
            if not mask.any():
                continue
            stat = result.stats.get(k)
            base = {
                "from_name": control.name,
                "to_name": control.to_name,
                "original_width": w,
                "original_height": h,
                "image_rotation": 0,
                **({} if stat is None else {"score": round(float(stat[1]), 6)}),
            }
            if control.kind == "brush":
                value = {"format": "rle", "rle": brush_value(mask), "brushlabels": [label]}
                regions.append({**base, "id": f"r{len(regions)}", "type": "brushlabels", "value": value})
            else:
                for points in polygons(mask):
                    value = {"points": points, "closed": True, "polygonlabels": [label]}
                    regions.append({**base, "id": f"r{len(regions)}", "type": "polygonlabels", "value": value})
    scores = [r["score"] for r in regions if "score" in r]
    out = {"result": regions, "model_version": version}
    if scores:
        out["score"] = round(sum(scores) / len(scores), 6)
    return out


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, the default port filled in."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def image_url(ref: str, server: str | None) -> str:
    """The URL to fetch a task's image from: Label Studio's own (`/data/upload/...`, `/data/local-files/?d=...`,
    or a full URL on the server), else a one-line refusal — ovdiff fetches from nothing but Label Studio."""
    if not isinstance(ref, str) or not ref:
        raise OvdiffError(f"the task's image is {ref!r}, not a URL Label Studio serves")
    if server is None:
        raise OvdiffError(
            f"cannot fetch {ref[:120]!r}: set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) to the Label Studio server"
        )
    if ref.startswith("/") and not ref.startswith("//"):
        return server.rstrip("/") + ref
    if urllib.parse.urlsplit(ref).scheme in ("http", "https") and origin(ref) == origin(server):
        return ref
    raise OvdiffError(f"refused to fetch {ref[:120]!r}: ovdiff label-studio reads images from {server} only")
