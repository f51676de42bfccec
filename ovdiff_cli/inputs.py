"""What the API accepts as an image: a path, a PIL image or an array, read as `ovdiff segment` reads its files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from .errors import InvalidSetting, OvdiffError, RemoteInput

if TYPE_CHECKING:
    from PIL import Image

ImageLike = Union[str, Path, "Image.Image", np.ndarray]


def as_rgb(image: ImageLike) -> np.ndarray:
    """A path, PIL image or numpy array → HxWx3 uint8 RGB, as `ovdiff segment` reads its inputs
    (EXIF orientation applied, any mode converted; empty pictures and those over the CLI's pixel
    limit refused)."""
    from PIL import Image, ImageOps

    from .io.images import URL, check_size, load_image, to_rgb

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
    raise OvdiffError(f"cannot segment a {type(image).__name__}: give a path, a PIL image or an HxWx3 uint8 array")


def is_one_image(image: object) -> bool:
    """Whether `image` is one image (a path, PIL image or array) rather than a batch of them."""
    from PIL import Image

    return isinstance(image, (str, Path, Image.Image, np.ndarray))


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
