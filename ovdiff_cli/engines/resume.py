"""Resumable, splittable segment jobs, for any engine or scheduler: `--shard I/N` and `--skip-existing`.

Every output is written atomically, yet a file may have been cut or emptied since (a copy, another
tool): an interrupted job resumes by skipping the images whose outputs all decode, their masks within
the run's labels, and N jobs over the N shards of one input list write exactly the outputs of one run.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidSetting
from ..io.images import InputImage
from ..io.masks import png_kind


def parse_shard(spec: str) -> tuple[int, int]:
    """ "I/N" → (I, N), 0 ≤ I < N, or a one-line error."""
    index, _, count = spec.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if n < 1 or not 0 <= i < n:
        raise InvalidSetting("shard", f"{spec!r}: give I/N with 0 <= I < N, e.g. 0/4 for the first of 4 shards")
    return i, n


def shard(items: list[InputImage], index: int, count: int) -> list[InputImage]:
    """The inputs of shard `index` of `count`: by sorted path, the i-th goes to shard i mod count.

    The shards of one input list partition it, so N jobs with --shard 0/N … N-1/N write one run's outputs.
    """
    order = sorted(range(len(items)), key=lambda i: str(items[i].path))
    mine = {i for rank, i in enumerate(order) if rank % count == index}
    return [item for i, item in enumerate(items) if i in mine]


def check_resumable(fmt: str) -> None:
    """Shards and resumed runs need one mask file per image: coco-rle writes one file per run."""
    if fmt == "coco-rle":
        raise InvalidSetting(
            "format", "coco-rle writes one results file per run: a run in shards or resumed needs png or npz"
        )


def outputs(
    item: InputImage, out_dir: Path, overlay: bool = False, explain: bool = False, fmt: str = "png"
) -> list[Path]:
    """The files a written image leaves in `out_dir` (each written atomically: present means complete)."""
    check_resumable(fmt)
    out_dir = Path(out_dir)
    paths = [out_dir / f"{item.name}.{fmt}"]
    if overlay:
        paths.append(out_dir / "overlays" / f"{item.name}.jpg")
    if explain:
        paths += [out_dir / "explain" / f"{item.name}{suffix}" for suffix in (".json", ".winner.png", ".png")]
    return paths


def complete(path: Path, num_classes: int | None = None) -> bool:
    """Whether an output file is whole: it decodes, and a mask's labels lie in 0..num_classes (the run's
    legend). A 0-byte, truncated or foreign file is not: the image is redone."""
    import json
    import warnings

    import numpy as np
    from PIL import Image

    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
            return True
        if path.suffix == ".npz":
            with np.load(path) as z:
                labels = z["labels"]
        else:
            with warnings.catch_warnings(), Image.open(path) as im:
                warnings.simplefilter("ignore")
                im.load()
                if num_classes is None:  # an overlay or explanation picture: decoding is enough
                    return True
                if im.mode not in (("P",) if png_kind(num_classes) == "palette" else ("I;16", "I", "I;16B")):
                    return False
                labels = np.asarray(im)
        return labels.ndim == 2 and (num_classes is None or labels.size == 0 or int(labels.max()) <= num_classes)
    except Exception:  # any decoding failure means "not done": the image is segmented again
        return False


def pending(
    items: list[InputImage],
    out_dir: Path,
    overlay: bool = False,
    explain: bool = False,
    fmt: str = "png",
    num_classes: int | None = None,
) -> list[InputImage]:
    """The inputs missing some whole output (what `--skip-existing` leaves to do); num_classes: the
    run's vocabulary size, which its masks' labels must fit."""

    def done(item: InputImage) -> bool:
        mask, *others = outputs(item, out_dir, overlay, explain, fmt)
        return complete(mask, num_classes) and all(complete(p) for p in others)

    return [item for item in items if not done(item)]
