"""What the API accepts as an image: a path, a PIL image, an array or the bytes of an image file, read as
`ovdiff segment` reads its files. A torch tensor is refused with the conversion to use: its layout
(HxWx3 or 3xHxW) and range cannot be told apart safely."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from .errors import InvalidSetting, OvdiffError, RemoteInput

if TYPE_CHECKING:
    from PIL import Image

ImageLike = Union[str, Path, "Image.Image", np.ndarray, bytes]


def as_rgb(image: ImageLike) -> np.ndarray:
    """A path, PIL image, numpy array or encoded image file's bytes → HxWx3 uint8 RGB, as `ovdiff segment`
    reads its inputs (EXIF orientation applied, any mode converted; empty pictures, those under
    `io.images.MIN_SIDE` a side and those over the CLI's pixel limit refused)."""
    from .io.images import check_segmentable

    return check_segmentable(_read(image), "the image")


def _read(image: ImageLike) -> np.ndarray:
    import io

    from PIL import Image, ImageOps

    from .io.images import URL, ImageError, check_size, load_image, to_rgb

    if isinstance(image, (bytes, bytearray, memoryview)):  # an image file's bytes (PNG, JPEG, …)
        try:
            with Image.open(io.BytesIO(bytes(image))) as im:
                check_size(*im.size, "the image bytes")
                return to_rgb(ImageOps.exif_transpose(im))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ImageError(f"the image bytes are not a picture Pillow can read ({type(e).__name__}: {e})") from None
    if type(image).__module__.split(".")[0] == "torch":
        raise OvdiffError(
            f"cannot segment a torch {type(image).__name__}: give an HxWx3 uint8 array, e.g. "
            "(t.permute(1, 2, 0) * 255).byte().cpu().numpy() for a 3xHxW float tensor in [0, 1]"
        )
    if isinstance(image, (str, Path)):
        if isinstance(image, str) and URL.match(image):
            raise RemoteInput(image)
        return load_image(Path(image).expanduser())
    if isinstance(image, Image.Image):
        check_size(*image.size, "the image")
        return to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        if image.ndim in (2, 3):
            check_size(image.shape[1], image.shape[0], "the image array")
        if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
            return np.ascontiguousarray(image)
        if (image.ndim == 2 and image.dtype in (np.uint8, np.uint16, np.float32)) or (
            image.ndim == 3 and image.shape[2] == 4 and image.dtype == np.uint8
        ):  # grayscale, 16-bit, float or RGBA: converted as the CLI converts such files
            return to_rgb(Image.fromarray(image))
        raise OvdiffError(f"image array of dtype {image.dtype} and shape {image.shape}: expected HxWx3 uint8 RGB")
    raise OvdiffError(
        f"cannot segment a {type(image).__name__}: give a path, a PIL image, an HxWx3 uint8 array or an image file's bytes"
    )


def check_path(setting: str, value: object, what: str) -> str:
    """`value` as text, or InvalidSetting unless it is a path (text or `Path`): None or a number would
    fail later, raw."""
    if isinstance(value, bool) or not isinstance(value, (str, Path)) or not str(value).strip():
        raise InvalidSetting(setting, f"takes {what} (text or a Path), got {value!r:.60}")
    return str(value)


def input_paths(inputs: object) -> list[str]:
    """`segment_folder`'s inputs (one path, folder or glob pattern, or a list of them) as a list of text."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    elif isinstance(inputs, (bytes, dict)) or not hasattr(inputs, "__iter__"):
        raise InvalidSetting(
            "inputs", f"takes a path, folder or glob pattern, or a list of them; got {type(inputs).__name__}"
        )
    return [check_path("inputs", p, "an image, a folder or a glob pattern") for p in inputs]


def is_one_image(image: object) -> bool:
    """Whether `image` is one image (a path, PIL image or array) rather than a batch of them."""
    from PIL import Image

    return isinstance(image, (str, Path, Image.Image, np.ndarray, bytes, bytearray, memoryview)) or (
        type(image).__module__.split(".")[0] == "torch"  # a tensor is one (refused) image, not a batch
    )


def procedural_scene(seed: int = 0, size: tuple[int, int] = (128, 192)) -> np.ndarray:
    """A held-out scene of the procedural world (preset `procedural`): (H,W,3) uint8 RGB, for trying the API offline."""
    from .limits import check_seed, in_range
    from .procedural import render_scene

    check_seed(seed)
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise InvalidSetting("size", f"takes (height, width), got {size!r:.40}")
    for side in size:
        in_range("scene_side", side, " pixels")
    return render_scene(np.random.default_rng(seed), size=size)[0]
