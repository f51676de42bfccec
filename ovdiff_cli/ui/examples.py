"""The web demo's example pictures: procedural scenes the server draws (no files shipped, nothing
downloaded), each with the class list that fits it, one click from a segmentation."""

from __future__ import annotations

import io

from ..errors import OvdiffError

CLASSES = "kite, ball, boat, car, sky, grass"  # the procedural world's labelled classes
SIZE = (128, 192)  # (height, width): the demo's scenes
EXAMPLES = {  # seed → what the scene shows
    0: "a kite over the sea, a sailing boat",
    4: "a kite over a road, a car",
    10: "a kite over grass, a ball",
    1: "a car on a road (two classes of the list only)",
}


def examples() -> list[dict]:
    """The examples as the page lists them: seed, title, the class list to type, the picture's URL."""
    return [
        {"seed": seed, "title": title, "classes": CLASSES, "url": f"/api/examples/{seed}.png"}
        for seed, title in EXAMPLES.items()
    ]


def example_png(seed: int) -> bytes:
    """The PNG of example `seed` (drawn on each call: a few milliseconds)."""
    from PIL import Image

    from ..inputs import procedural_scene

    if seed not in EXAMPLES:
        raise OvdiffError(f"no example {seed}: the examples are {', '.join(map(str, EXAMPLES))}")
    buf = io.BytesIO()
    Image.fromarray(procedural_scene(seed, SIZE)).save(buf, format="PNG")
    return buf.getvalue()
