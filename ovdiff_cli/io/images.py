"""Images in and out of `ovdiff segment`: finding inputs, loading any picture robustly, writing pictures.

Loading turns whatever Pillow reads into HxWx3 uint8 RGB the way a viewer shows it: EXIF
orientation applied, the first frame of an animation, grayscale / palette / 16-bit / float
scaled to 8 bits, transparency composited on white. Pictures beyond `MAX_PIXELS` are refused
before decoding, so one huge file cannot exhaust memory. Outputs are written atomically
(temporary file, then rename), so an interrupted run never leaves a truncated mask behind.
"""

from __future__ import annotations

import contextlib
import contextvars
import glob
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..errors import NoImagesFound, OvdiffError, RemoteInput
from ..limits import MAX_PIXELS  # Pillow's own decompression-bomb limit: refused above it
from .palette import colorize, voc_palette


class ImageError(OvdiffError):
    """One input image cannot be read; the job reports it and goes on with the others."""


def readable_suffixes() -> set[str]:
    """File suffixes (lower case) of every format this Pillow can open."""
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


@dataclass(frozen=True)
class InputImage:
    """An image to segment and the name of its outputs (relative to --out, without suffix)."""

    path: Path
    name: str


URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # scheme://…: never a local path ovdiff could read


def discover(inputs: list[str], recursive: bool = False, exclude: Path | None = None) -> list[InputImage]:
    """Files, folders (their images; all levels with `recursive`) and glob patterns, in order.

    Outputs mirror a folder's layout; a file or glob match is named by its stem. Two inputs that
    would share an output name (a.jpg and a.png) keep their suffix in it (a_jpg, a_png). Walking a
    folder that holds `exclude` (the output folder) below it skips that folder: a run never segments
    its own masks.
    """
    suffixes = readable_suffixes()
    out = None if exclude is None else Path(exclude).expanduser().resolve()

    def keep(f: Path, skip: Path | None = None) -> bool:
        return f.is_file() and f.suffix.lower() in suffixes and (skip is None or not f.resolve().is_relative_to(skip))

    found: list[InputImage] = []
    for spec in inputs:
        p = Path(spec).expanduser()
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            inside = (
                out is not None and out != p.resolve() and out.is_relative_to(p.resolve())
            )  # --out below this folder
            files = sorted(f for f in p.glob(pattern) if keep(f, out if inside else None))
            found += [InputImage(f, f.relative_to(p).with_suffix("").as_posix()) for f in files]
        elif p.is_file():
            found.append(InputImage(p, p.stem))
        elif URL.match(spec):
            raise RemoteInput(spec)
        elif glob.has_magic(spec):
            files = sorted(Path(f) for f in glob.glob(os.path.expanduser(spec), recursive=recursive))
            found += [InputImage(f, f.stem) for f in files if keep(f)]
        else:
            raise OvdiffError(f"input {spec} not found: give image files, folders or glob patterns")
    unique = list({i.path.resolve(): i for i in reversed(found)}.values())[::-1]  # first mention wins
    if not unique:
        raise NoImagesFound(list(inputs), recursive)
    names: dict[str, int] = {}
    for i in unique:
        names[i.name] = names.get(i.name, 0) + 1
    return [
        InputImage(i.path, f"{i.name}_{i.path.suffix.lstrip('.').lower()}") if names[i.name] > 1 else i for i in unique
    ]


MIN_SIDE = 16  # pixels: a picture narrower than one patch of the extractors holds nothing to segment


def check_segmentable(image: np.ndarray, what: object) -> np.ndarray:
    """`image` (HxWx3), or an ImageError when a side is under MIN_SIDE: resized to the extractors' input,
    a few pixels become flat colour that some class always matches best (a 1×1 picture was called "car")."""
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{what}: {w}x{h} is too small to segment; give a picture of at least {MIN_SIDE} px a side")
    return image


def check_size(width: int, height: int, what: object, max_pixels: int = MAX_PIXELS) -> None:
    """An ImageError unless a picture of width x height can be segmented: not empty, at most `max_pixels`
    (the rule for files, PIL images and arrays alike)."""
    if width < 1 or height < 1:
        raise ImageError(f"{what}: {width}x{height} is an empty picture: nothing to segment")
    if width * height > max_pixels:
        raise ImageError(
            f"{what}: {width}x{height} is {width * height / 1e6:.0f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.0f}: downscale it first"
        )


def load_image(path: Path | str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 RGB as a viewer shows the picture at `path`, or an ImageError saying why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                check_size(*im.size, path, max_pixels)
                im.seek(0)  # animations: the first frame
                return to_rgb(ImageOps.exif_transpose(im))
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from e


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode → HxWx3 uint8: high bit depths scaled, transparency composited on white."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im).astype(np.float64)
        top = 1.0 if im.mode == "F" and a.max(initial=0) <= 1 else 255.0 if a.max(initial=0) <= 255 else 65535.0
        if a.max(initial=0) > 65535:
            top = float(a.max())
        gray = np.clip(a / top * 255, 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


# --------------------------------------------------------------------------- outputs


def file_mode() -> int:
    """The mode a plain new file gets under this process's umask (mkstemp's own 0600 ignores it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_STAGED: contextvars.ContextVar[list[tuple[str, Path]] | None] = contextvars.ContextVar("staged", default=None)


def _atomic(path: Path, write) -> None:
    """Write `path` through a temporary file renamed into place when complete; inside `staged()` the
    rename waits until every file of the group is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        group = _STAGED.get()
        if group is None:
            os.replace(tmp, path)
        else:
            group.append((tmp, path))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged():
    """The files written inside appear together or not at all: each is complete under a temporary name
    first, and all are renamed into place when the block ends without an error (one image's mask,
    overlay and explanations; a full disk leaves none of them)."""
    group: list[tuple[str, Path]] = []
    token = _STAGED.set(group)
    try:
        yield
    except BaseException:
        for tmp, _ in group:
            Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _STAGED.reset(token)
    for i, (tmp, path) in enumerate(group):
        try:
            os.replace(tmp, path)
        except BaseException:
            for t, _ in group[i:]:
                Path(t).unlink(missing_ok=True)
            raise


def save_picture(rgb: np.ndarray, path: Path) -> None:
    """HxWx3 uint8 → JPEG (quality 90) or PNG, by the suffix of `path`."""
    im = Image.fromarray(rgb)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    _atomic(path, lambda tmp: im.save(tmp, format=fmt, **({"quality": 90} if fmt == "JPEG" else {})))


def save_json(obj: object, path: Path) -> None:
    """UTF-8 JSON; the undecodable bytes of non-UTF-8 file names it mentions are written as U+FFFD."""
    text = json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    _atomic(path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def legend_panel(entries: list[tuple[tuple[int, int, int], str]], height: int, width: int = 180) -> np.ndarray:
    """(height,width,3) uint8: a white panel with one colour swatch and name per entry."""
    panel = Image.new("RGB", (width, max(height, 14 * len(entries) + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    font = _font()
    for i, (colour, name) in enumerate(entries):
        y = 4 + 14 * i
        draw.rectangle([4, y, 14, y + 10], fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
        draw.text((20, y - 1), name if len(name) <= 26 else name[:25] + "…", fill=(0, 0, 0), font=font)
    return np.asarray(panel)


def overlay_picture(image: np.ndarray, labels: np.ndarray, names: dict[int, str], alpha: float = 0.5) -> np.ndarray:
    """The image blended with its coloured labels, and a legend of the labels present on the right.

    image HxWx3 uint8, labels (H,W) int, names: label → class name. Returns (H',W+180,3) uint8.
    """
    colours = colorize(labels)
    blend = ((1 - alpha) * image.astype(np.float32) + alpha * colours).round().astype(np.uint8)
    pal = voc_palette()
    present = [int(v) for v in np.unique(labels)]
    panel = legend_panel([(tuple(pal[v % len(pal)]), names.get(v, str(v))) for v in present], image.shape[0])
    canvas = np.full((panel.shape[0], image.shape[1] + panel.shape[1], 3), 255, np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = blend
    canvas[:, image.shape[1] :] = panel
    return canvas


def tile_sheet(tiles: list[Image.Image], title: str, columns: int, pad: int = 4, head: int = 24) -> Image.Image:
    """A white picture: a title line, then `tiles` (PIL images of one size) in rows of `columns`."""
    if not tiles:
        raise ValueError("a sheet of no tiles")
    w, h = tiles[0].size
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (pad + cols * (w + pad), head + rows * (h + pad) + pad), "white")
    ImageDraw.Draw(sheet).text((pad, 6), title, fill="black")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (pad + (i % cols) * (w + pad), head + (i // cols) * (h + pad)))
    return sheet


EXPLAIN_COLOURS = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
    ],
    np.uint8,
)


def save_index_map(index: np.ndarray, path: Path) -> None:
    """(H,W) integers in 0..65535 → a 16-bit grayscale PNG (the value is the index)."""
    im = Image.fromarray(np.asarray(index, dtype=np.uint16))
    _atomic(path, lambda tmp: im.save(tmp, format="PNG"))


def explain_picture(
    image: np.ndarray, regions: list[np.ndarray], supports: list[tuple[np.ndarray, np.ndarray, str]], thumb: int = 128
) -> np.ndarray:
    """The image with the pixels each chosen prototype won tinted in its colour (left), and for each
    prototype the support image it came from with its source region tinted alike, and a caption.

    image HxWx3 uint8; regions: (H,W) bool per prototype; supports: (support image hxwx3 uint8,
    source region (h',w') bool on any grid, caption) per prototype. Returns an HxW'x3 uint8 picture.
    """
    left = image.astype(np.float32)
    for colour, region in zip(EXPLAIN_COLOURS, regions, strict=False):
        left[region] = 0.45 * left[region] + 0.55 * colour
    tiles = []
    font = _font()
    width = min(
        480, max([200] + [int(font.getlength(line)) + 8 for *_, caption in supports for line in caption.split("\n")])
    )

    def fit(line: str) -> str:  # a caption line cut to the column, for class names of any length
        room = (width - 8) / max(font.getlength(line), 1)
        return line if room >= 1 else line[: max(1, int(len(line) * room) - 1)] + "…"

    for colour, (sup, src, caption) in zip(EXPLAIN_COLOURS, supports, strict=False):
        s = np.asarray(Image.fromarray(sup).resize((thumb, thumb), Image.Resampling.BILINEAR)).astype(np.float32)
        m = np.asarray(Image.fromarray(src.astype(np.uint8) * 255).resize((thumb, thumb), Image.Resampling.NEAREST)) > 0
        s[m] = 0.45 * s[m] + 0.55 * colour
        lines = caption.split("\n")
        tile = Image.new("RGB", (thumb + 12 + width, thumb + 8), (255, 255, 255))
        tile.paste(Image.fromarray(s.astype(np.uint8)), (4, 4))
        draw = ImageDraw.Draw(tile)
        draw.rectangle([thumb + 12, 6, thumb + 22, 16], fill=tuple(int(c) for c in colour))
        for j, line in enumerate(lines):
            draw.text((thumb + 12, 20 + 12 * j), fit(line), fill=(0, 0, 0), font=font)
        tiles.append(np.asarray(tile))
    right = np.concatenate(tiles, 0) if tiles else np.full((image.shape[0], 8, 3), 255, np.uint8)
    height = max(image.shape[0], right.shape[0])
    canvas = np.full((height, image.shape[1] + 8 + right.shape[1], 3), 255, np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = left.round().astype(np.uint8)
    canvas[: right.shape[0], image.shape[1] + 8 :] = right
    return canvas
