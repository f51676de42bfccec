"""The procedural world: a toy universe with known truth, plugged in through the real interfaces.

Random weights draw noise, so checking that the *method* works needs a world whose answers are
known. Here each class name has a look (colour, texture, shape) and things have a typical context
(a kite flies in the sky, a boat floats on water); the generator draws a class on its context and
returns the object's own soft mask as the attribution map, a hand-made extractor describes 8×8
cells by colour and texture, and a world-aware scorer plays CLIP for the category pre-filter.
Held-out scenes (`render_scene`, `write_voc`) come from the same world, so segmenting them must
score high, and lower when background prototypes are switched off (paper Table A.1).

Class names are real words that the stuff/thing table classifies as COCO-Stuff does. Any other
name gets a look derived from a hash of the name, so every command works on any vocabulary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .types import Sample

EXTRACTOR_NAME = "procedural"
WORLD_VERSION = 1
ATTRIBUTION_VERSION = 2  # the support sets' attribution model (in the generator identity: a change re-samples)


@dataclass(frozen=True)
class Look:
    """How one class is drawn. Things have a shape and the stuff they are usually found on."""

    name: str
    kind: str  # "thing" or "stuff"
    colour: tuple[int, int, int]
    texture: str  # "smooth", "blades", "waves", "speckle", "stripes", "checker"
    shape: str = ""  # things: "diamond", "disc", "boat", "car"
    context: str = ""  # things: the stuff class drawn behind them
    accent: tuple[int, int, int] = (0, 0, 0)  # second colour of two-part shapes (sail, wheels)


WORLD: dict[str, Look] = {
    lk.name: lk
    for lk in (
        Look("sky", "stuff", (125, 175, 232), "smooth"),
        Look("grass", "stuff", (72, 142, 52), "blades"),
        Look("water", "stuff", (38, 88, 152), "waves"),
        Look("road", "stuff", (104, 104, 110), "speckle"),
        Look("kite", "thing", (222, 48, 60), "stripes", "diamond", "sky"),
        Look("ball", "thing", (242, 196, 40), "smooth", "disc", "grass"),
        Look("boat", "thing", (150, 88, 40), "smooth", "boat", "water", accent=(250, 250, 250)),
        Look("car", "thing", (176, 44, 168), "checker", "car", "road", accent=(30, 30, 34)),
    )
}
GROUNDS = ("grass", "water", "road")  # stuff below the horizon; the sky is always above it
# The classes labelled in held-out scenes, in label order (label k = LABELLED[k-1], 0 = background).
# Water and road stay unlabelled, as VOC leaves most stuff to "background": they are what the
# background prototypes of boats and cars must catch.
LABELLED = ("kite", "ball", "boat", "car", "sky", "grass")

_TEXTURES = ("smooth", "stripes", "checker", "speckle")
_SHAPES = ("diamond", "disc", "boat", "car")


def look_of(name: str) -> Look:
    """The look of `name`: designed for the world's classes, derived from a hash for any other name."""
    if name in WORLD:
        return WORLD[name]
    rng = np.random.default_rng(_digest(name))
    colour = tuple(int(c) for c in rng.integers(30, 226, 3))
    return Look(
        name,
        "thing",
        colour,
        _TEXTURES[rng.integers(len(_TEXTURES))],
        _SHAPES[rng.integers(len(_SHAPES))],
        GROUNDS[rng.integers(len(GROUNDS))] if rng.random() < 0.75 else "sky",
        accent=tuple(int(c) for c in rng.integers(20, 236, 3)),
    )


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode("utf-8")).digest()[:8], "little")


# --------------------------------------------------------------------------- drawing


def _texture(rng: np.random.Generator, look: Look, h: int, w: int) -> np.ndarray:
    """(h,w,3) float32 in [0,255]: the look's colour (jittered per instance) with its texture."""
    colour = np.asarray(look.colour, np.float32) * rng.uniform(0.92, 1.08)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    if look.texture == "blades":
        pattern = 22 * np.sin(xx * 1.9 + phase + 0.6 * np.sin(yy * 0.3))
    elif look.texture == "waves":
        pattern = 20 * np.sin(yy * 1.2 + phase + 0.8 * np.sin(xx * 0.15))
    elif look.texture == "speckle":
        pattern = rng.normal(0, 16, (h, w)).astype(np.float32)
    elif look.texture == "stripes":
        pattern = 30 * np.sign(np.sin((xx + yy) * 0.55 + phase))
    elif look.texture == "checker":
        pattern = 24 * np.sign(np.sin(xx * 0.7 + phase) * np.sin(yy * 0.7))
    else:  # smooth: a gentle vertical shading
        pattern = 14 * (yy / max(h - 1, 1) - 0.5)
    noise = rng.normal(0, 3, (h, w)).astype(np.float32)
    return np.clip(colour[None, None, :] + (pattern + noise)[..., None], 0, 255)


def _soft(d: np.ndarray) -> np.ndarray:
    """Signed distance (px, negative inside) → anti-aliased coverage in [0,1]."""
    return np.clip(0.5 - d, 0.0, 1.0).astype(np.float32)


def _shape(look: Look, h: int, w: int, cy: float, cx: float, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Coverage of the whole object and of its accent part, both (h,w) float32 in [0,1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    r = size / 2
    accent = np.zeros((h, w), np.float32)
    if look.shape == "disc":
        body = _soft(np.hypot(dy, dx) - r)
    elif look.shape == "diamond":
        body = _soft((np.abs(dx) / (0.75 * r) + np.abs(dy) / r - 1) * 0.6 * r)
    elif look.shape == "boat":  # a hull (trapezoid) under a sail (triangle)
        top = 0.15 * r
        hull_d = np.maximum.reduce([dy - 0.45 * r - top, top - dy, np.abs(dx) - (r - 0.5 * (dy - top))])
        hull = _soft(hull_d)
        sail_d = np.maximum.reduce(
            [dy - top + 1, -0.95 * r - dy + top, dx - 0.1 * r, -dx - 0.1 * r - 0.75 * (dy - top + 0.95 * r)]
        )
        accent = _soft(sail_d) * (1 - hull)
        body = np.maximum(hull, accent)
    else:  # car: a body with two wheels
        body_d = np.maximum(np.abs(dx) - r, np.abs(dy + 0.1 * r) - 0.35 * r)
        wheels_d = np.minimum(np.hypot(dy - 0.3 * r, dx - 0.55 * r), np.hypot(dy - 0.3 * r, dx + 0.55 * r)) - 0.24 * r
        accent = _soft(wheels_d)
        body = np.maximum(_soft(body_d), accent)
    return body, accent


def _paint(canvas: np.ndarray, rng: np.random.Generator, look: Look, cover: np.ndarray, accent: np.ndarray) -> None:
    """Composite an object onto `canvas` (h,w,3 float) in place."""
    h, w = cover.shape
    fill = _texture(rng, look, h, w)
    if accent.any():
        acc = np.asarray(look.accent, np.float32) + rng.normal(0, 3, (h, w, 1)).astype(np.float32)
        fill = fill * (1 - accent[..., None]) + acc * accent[..., None]
    canvas *= 1 - cover[..., None]
    canvas += fill * cover[..., None]


def _landscape(rng: np.random.Generator, h: int, w: int, horizon: int, ground: str) -> np.ndarray:
    """(h,w,3) float32 RGB: sky above row `horizon`, `ground` below."""
    canvas = _texture(rng, WORLD["sky"], h, w)
    canvas[horizon:] = _texture(rng, look_of(ground), h - horizon, w)
    return canvas


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(a.astype(np.float32), (0, 0), sigma)


def support_sample(name: str, seed: int, size: int, attribution_size: int) -> Sample:
    """One support image of `name`: a thing on its context, or a landscape where the stuff dominates.

    The attribution is the region's coverage at `attribution_size`², lightly blurred and with a
    little noise, as coarse and imperfect as a diffusion model's cross-attention (always ≥ 0).
    (Version 2: no longer squared, half the blur — the peaked map left thin shapes only a small
    core above the authors' upper mask threshold.)
    """
    look = look_of(name)
    rng = np.random.default_rng(_digest("support", WORLD_VERSION, name, seed))
    if look.kind == "stuff":
        if name == "sky":
            horizon = int(size * rng.uniform(0.6, 0.85))
            canvas = _landscape(rng, size, size, horizon, GROUNDS[rng.integers(len(GROUNDS))])
            region = np.zeros((size, size), np.float32)
            region[:horizon] = 1
        else:
            horizon = int(size * rng.uniform(0.15, 0.4))
            canvas = _landscape(rng, size, size, horizon, name)
            region = np.zeros((size, size), np.float32)
            region[horizon:] = 1
    else:
        canvas = _texture(rng, look_of(look.context), size, size)
        obj = size * rng.uniform(0.35, 0.6)
        cy, cx = size * rng.uniform(0.4, 0.6), size * rng.uniform(0.35, 0.65)
        region, accent = _shape(look, size, size, cy, cx, obj)
        _paint(canvas, rng, look, region, accent)
    att = np.asarray(Image.fromarray(region).resize((attribution_size, attribution_size), Image.Resampling.BILINEAR))
    att = _blur(att, attribution_size / 48) + rng.uniform(0, 0.06, att.shape).astype(np.float32)
    return Sample(canvas.round().astype(np.uint8), np.maximum(att, 0).astype(np.float32))


def render_scene(
    rng: np.random.Generator, classes: list[str] | tuple[str, ...] = LABELLED, size: tuple[int, int] = (128, 192)
) -> tuple[np.ndarray, np.ndarray]:
    """A held-out scene and its truth: image (H,W,3) uint8 RGB, label (H,W) uint8.

    Sky above a random horizon, one ground stuff below, one to three things on their contexts
    (a kite in the sky, a ball on grass, a boat on water, a car on the road). Label k marks
    `classes[k-1]`, 0 everything not in `classes`, 255 a band about 5 px wide on every boundary
    (as VOC's "void" outlines).
    """
    import cv2

    h, w = size
    horizon = int(h * rng.uniform(0.3, 0.55))
    ground = GROUNDS[rng.integers(len(GROUNDS))]
    canvas = _landscape(rng, h, w, horizon, ground)
    world = list(WORLD)
    truth = np.full((h, w), world.index("sky"), dtype=np.int64)  # world class index per pixel
    truth[horizon:] = world.index(ground)
    on_ground = [n for n, lk in WORLD.items() if lk.context == ground]
    placed: list[tuple[str, float, float, float]] = []
    if rng.random() < 0.6:
        s = h * rng.uniform(0.18, 0.3)
        placed.append(("kite", rng.uniform(s / 2, max(horizon - s / 2, s / 2 + 1)), rng.uniform(s, w - s), s))
    for _ in range(int(rng.integers(1, 3)) if on_ground else 0):
        s = h * rng.uniform(0.22, 0.38)
        cy = rng.uniform(horizon + 0.3 * s, h - 0.35 * s)
        placed.append((on_ground[0], cy, rng.uniform(s * 0.6, w - s * 0.6), s))
    for thing, cy, cx, s in placed:
        cover, accent = _shape(WORLD[thing], h, w, cy, cx, s)
        _paint(canvas, rng, WORLD[thing], cover, accent)
        truth[cover >= 0.5] = world.index(thing)
    index = {n: k + 1 for k, n in enumerate(classes)}
    label = np.array([index.get(n, 0) for n in world], dtype=np.uint8)[truth]
    edge = np.zeros((h, w), bool)
    edge[1:] |= label[1:] != label[:-1]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge = cv2.dilate(edge.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # ~5 px, as VOC's
    label[edge] = 255
    return canvas.round().astype(np.uint8), label


def write_voc(root: Path | str, n_images: int, seed: int = 0) -> list[str]:
    """Write `n_images` held-out scenes in the VOC layout under `root`; return their ids.

    root/VOC2012/JPEGImages/<id>.jpg (quality 95, no chroma subsampling), SegmentationClass/<id>.png
    (VOC palette, 255 = boundary), ImageSets/Segmentation/val.txt, and root/classes.txt with the
    labelled class names in label order (label k is line k; 0 is background), ready for
    `ovdiff segment --classes-file`.
    """
    from .io.palette import voc_palette

    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    base = Path(root) / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(_digest("scenes", WORLD_VERSION, seed))
    palette = voc_palette().reshape(-1).tolist()
    ids = []
    for i in range(n_images):
        image, label = render_scene(rng)
        sid = f"world_{i:05d}"
        Image.fromarray(image).save(base / "JPEGImages" / f"{sid}.jpg", quality=95, subsampling=0)
        mask = Image.fromarray(label, mode="P")
        mask.putpalette(palette)
        mask.save(base / "SegmentationClass" / f"{sid}.png")
        ids.append(sid)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{i}\n" for i in ids))
    Path(root, "classes.txt").write_text("".join(f"{c}\n" for c in LABELLED))
    return ids


# --------------------------------------------------------------------------- the three models


class ProceduralGenerator:
    """types.Generator for the world: draws support images with their attribution maps."""

    def identity(self) -> dict:
        return {"generator": "procedural", "world_version": WORLD_VERSION, "attribution_version": ATTRIBUTION_VERSION}

    def generate(self, class_name: str, seeds: list[int], config) -> list:
        return [support_sample(class_name, s, config.size, config.attribution_size) for s in seeds]

    def attribute(self, class_name: str, images: list[np.ndarray], config, seeds: list[int]) -> list[np.ndarray]:
        """Attribution maps of photos (`protos add --images`), as the world's stand-in for SD's cross-attention."""
        return [photo_attribution(class_name, im, config.attribution_size) for im in images]


def photo_attribution(name: str, image: np.ndarray, attribution_size: int) -> np.ndarray:
    """How much each place of a photo looks like `name`: closeness of the smoothed colour to the class's
    colours (its accent too), at `attribution_size`², blurred as `support_sample`'s maps (always ≥ 0)."""
    import cv2

    look = look_of(name)
    colours = [look.colour, look.accent] if look.shape in ("boat", "car") else [look.colour]
    smooth = cv2.blur(image.astype(np.float32), (5, 5))
    dist = np.min([np.linalg.norm(smooth - np.asarray(c, np.float32), axis=-1) for c in colours], axis=0) / 255
    near = np.clip(1 - dist / 0.25, 0, 1).astype(np.float32)
    att = cv2.resize(near, (attribution_size, attribution_size), interpolation=cv2.INTER_AREA)
    return np.maximum(_blur(att, attribution_size / 48), 0).astype(np.float32)


class ProceduralExtractor:
    """types.Extractor: per 8×8 cell, colour mean and spread plus oriented-gradient energy.

    The colour is centred on mid-grey, colour and texture are weighted to count alike, and a
    3×3-cell average adds a little context. Like real features, regions that look alike stay
    fairly similar (sky and water ≈ 0.3, road and grass ≈ 0.8), so a fixed similarity threshold
    separates classes poorly while nearest prototypes do well.
    """

    name = EXTRACTOR_NAME
    stride = 8

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) float RGB in [0,1], H and W multiples of 8 → (B,20,H/8,W/8) float32 unit vectors."""
        x = images.float()
        mean = F.avg_pool2d(x, 8)
        std = (F.avg_pool2d(x * x, 8) - mean**2).clamp_min(0).sqrt()
        lum = x.mean(1, keepdim=True)
        pad = F.pad(lum, (1, 1, 1, 1), mode="replicate")
        c = pad[..., 1:-1, 1:-1]
        grads = torch.cat(
            [
                (pad[..., 1:-1, 2:] - c).abs(),
                (pad[..., 2:, 1:-1] - c).abs(),
                (pad[..., 2:, 2:] - c).abs(),
                (pad[..., 2:, :-2] - c).abs(),
            ],
            1,
        )
        energy = F.avg_pool2d(grads, 8)
        cell = torch.cat([mean - 0.45, 2.5 * std, 3.0 * energy], 1)
        context = F.avg_pool2d(cell, 3, stride=1, padding=1, count_include_pad=False)
        return F.normalize(torch.cat([cell, 0.25 * context], 1), dim=1)


SCORER_DIM = 64
_PRESENCE_SCALE = 0.003  # a class covering 0.3% of the image is detected with strength 0.63


class ProceduralScorer:
    """types.ImageTextScorer: a world-aware stand-in for CLIP.

    Images embed as how strongly each world class is present (pixels whose smoothed colour is near
    the class's colours, away from edges, saturating like a detector's confidence); a prompt
    "a kite and a boat" embeds as the normalised
    sum of its named classes' directions. World classes own one axis each; other names get a
    hashed direction, so they never match an image.
    """

    def __init__(self):
        self.names = list(WORLD)
        anchors, owners = [], []
        for i, lk in enumerate(WORLD.values()):
            for col in (lk.colour, lk.accent) if lk.shape in ("boat", "car") else (lk.colour,):
                anchors.append(col)
                owners.append(i)
        self.anchors = torch.tensor(anchors, dtype=torch.float32) / 255
        self.owners = torch.tensor(owners)

    def identity(self) -> str:
        return f"procedural-scorer/v{WORLD_VERSION}"

    def _direction(self, name: str) -> torch.Tensor:
        if name in WORLD:
            return F.one_hot(torch.tensor(self.names.index(name)), SCORER_DIM).float()
        g = torch.Generator().manual_seed(_digest("text", name) % (2**63))
        return F.normalize(torch.randn(SCORER_DIM, generator=g), dim=0)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) float RGB in [0,1] → (B,64) unit vectors."""
        smooth = F.avg_pool2d(images.float().cpu(), 5, stride=1, padding=2, count_include_pad=False)  # textures out
        x = smooth.permute(0, 2, 3, 1).reshape(images.shape[0], -1, 3)
        dist = torch.cdist(x, self.anchors[None].expand(x.shape[0], -1, -1))  # (B,N,A)
        near, which = dist.min(-1)
        owner = self.owners[which].view(images.shape[0], 1, *images.shape[-2:])
        close = (near < 0.25).view_as(owner)
        out = torch.zeros(images.shape[0], SCORER_DIM)
        for i in range(len(self.names)):
            hit = ((owner == i) & close).float()
            solid = -F.max_pool2d(-hit, 5, stride=1, padding=2)  # eroded: blended edge colours do not count
            out[:, i] = 1 - torch.exp(-solid.mean((1, 2, 3)) / _PRESENCE_SCALE)
        return F.normalize(out + 1e-6, dim=1)

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        """Prompts like "a kite and a boat" → (T,64) unit vectors."""
        out = []
        for p in prompts:
            names = [_strip_article(part) for part in p.split(" and ")]
            out.append(F.normalize(sum(self._direction(n) for n in names), dim=0))
        return torch.stack(out)


def _strip_article(text: str) -> str:
    text = text.strip()
    for art in ("a ", "an ", "A ", "An "):
        if text.startswith(art):
            return text[len(art) :].strip()
    return text
