"""The folder `ovdiff segment` writes into: never an input overwritten, never two legends mixed, one writer.

A mask folder holds one set: masks of one class list, described by its `classes.json`. A run whose
legend differs from the folder's is refused unless `overwrite`, which first removes the old set
(the masks segment writes, its overlays/ and explain/ folders, the legend) and nothing else. A lock
file (`.ovdiff-segment.lock`, flock) keeps a second run out while one writes; its last holder
removes it. Masks are never written beside input images, where a later run would read them back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import InvalidSetting, OvdiffError
from .images import InputImage
from .masks import COCO_IMAGES, COCO_RESULTS

LEGEND = "classes.json"
LOCK = ".ovdiff-segment.lock"
SIDE_FOLDERS = ("overlays", "explain")


def check_out_dir(out: Path, what: str = "the masks") -> Path:
    """`out` as a writable folder (created), or a typed error (setting "out") before any work starts."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise InvalidSetting("out", f"{out} is a file: give a folder for {what}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidSetting("out", f"folder {out} cannot be created: {e.strerror}") from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise InvalidSetting("out", f"folder {out} is not writable")
    return out


@contextlib.contextmanager
def job_out_dir(out: Path, what: str = "the masks") -> Iterator[Path]:
    """`check_out_dir`'s folder for a job's block; if the block fails while the folder it created is still
    empty, the folder goes too: a run that failed before writing anything leaves nothing behind."""
    fresh = not Path(out).expanduser().exists()
    folder = check_out_dir(out, what)
    try:
        yield folder
    except BaseException:
        if fresh:
            with contextlib.suppress(OSError):  # not empty (or gone): left as it is
                folder.rmdir()
        raise


def check_not_in_cache(target: Path, cache_dir: Path, setting: str | None = "out") -> None:
    """A one-line error if `target` (a file or folder a command writes; `setting`: the setting that named
    it, None for an argument) is the cache folder or lies inside it: a command never writes over the
    cache it reads, nor over any file in it."""
    where = Path(target).expanduser().resolve()
    root = Path(cache_dir).expanduser().resolve()
    if where == root or where.is_relative_to(root):
        detail = f"{target} lies inside the cache {cache_dir}, which it would damage: write it elsewhere"
        raise OvdiffError(f"the file {detail}") if setting is None else InvalidSetting(setting, detail)


def check_no_input_overwritten(
    out_dir: Path, items: list[InputImage], fmt: str = "png", overlay: bool = False, explain: bool = False
) -> None:
    """A one-line error if an output (mask, overlay, explanation, the legend) would be written over one of the inputs."""
    inputs = {item.path.resolve() for item in items}
    for item in items:
        targets = [out_dir / f"{item.name}.{fmt}"] if fmt != "coco-rle" else []
        targets += [out_dir / "overlays" / f"{item.name}.jpg"] if overlay else []
        targets += (
            [out_dir / "explain" / f"{item.name}{s}" for s in (".json", ".winner.png", ".png")] if explain else []
        )
        for target in targets:
            if target.resolve() in inputs:
                raise InvalidSetting(
                    "out",
                    f"{out_dir} would overwrite the input {target} with an output of {item.path}: "
                    "write the outputs to another folder",
                )
    for name in (LEGEND, COCO_RESULTS, COCO_IMAGES) if fmt == "coco-rle" else (LEGEND,):
        if (out_dir / name).resolve() in inputs:
            raise InvalidSetting(
                "out", f"{out_dir} would overwrite the input {out_dir / name}: write the masks to another folder"
            )


def check_out_holds_no_input(out_dir: Path, items: list[InputImage]) -> None:
    """A one-line error if `out_dir` is the folder of an input image: masks written beside the inputs
    would be read back as inputs by the next run over that folder."""
    out = out_dir.resolve()
    beside = [item.path for item in items if item.path.resolve().parent == out]
    if beside:
        raise InvalidSetting(
            "out",
            f"{out_dir} holds input images ({beside[0].name}{', …' if len(beside) > 1 else ''}): "
            "the masks would be read back as inputs next time; write them to another folder, "
            f"e.g. {out_dir / 'masks'}",
        )


def _legend_names(legend: dict) -> list[str]:
    return [str(e.get("name")) for e in legend.get("labels", [])]


def check_legend(out_dir: Path, legend: dict, overwrite: bool, protect: set[Path]) -> None:
    """Refuse to mix this run's masks with another class list's; with `overwrite`, remove the old set first.

    `protect`: input files, never removed even where the old set would include them.
    """
    path = out_dir / LEGEND
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        old = {"labels": [{"name": f"(unreadable: {e})"}]}
    same_format = old.get("mask_format", legend.get("mask_format")) == legend.get("mask_format")
    if old.get("labels") == legend["labels"] and same_format:
        return  # the same classes and files: this run refreshes the same set
    if not overwrite and old.get("labels") == legend["labels"]:
        raise InvalidSetting(
            "format",
            f"{legend.get('mask_format')}: {out_dir} holds {old.get('mask_format')} masks of these "
            f"classes; write {old.get('mask_format')}, use another folder, or replace that set",
            way_out="overwrite",
        )
    if not overwrite:
        names = ", ".join(_legend_names(old)[:8])
        raise InvalidSetting(
            "out",
            f"{out_dir} holds masks of other classes ({names}): write to another folder, or replace that set",
            way_out="overwrite",
        )
    remove_mask_set(out_dir, protect)


def remove_mask_set(out_dir: Path, protect: set[Path]) -> int:
    """Delete what `ovdiff segment` wrote into `out_dir` (palette-PNG masks at any depth, overlays/,
    explain/, the legend), sparing `protect`; returns the number of files removed."""
    import numpy as np
    from PIL import Image

    removed = 0
    for side in SIDE_FOLDERS:
        if (out_dir / side).is_dir() and not any(p.is_relative_to((out_dir / side).resolve()) for p in protect):
            removed += sum(1 for p in (out_dir / side).rglob("*") if p.is_file())
            shutil.rmtree(out_dir / side)
    for png in out_dir.rglob("*.png"):
        if png.resolve() in protect or not png.is_file():
            continue
        try:
            with Image.open(png) as im:
                ours = im.mode in ("P", "I;16")  # palette masks, or 16-bit ones beyond 254 classes
        except OSError:
            ours = False
        if ours:
            png.unlink()
            removed += 1
    for npz in out_dir.rglob("*.npz"):  # --format npz masks: numpy files holding 'labels'
        if npz.resolve() in protect or not npz.is_file():
            continue
        try:
            with np.load(npz) as z:
                ours = "labels" in z.files
        except (OSError, ValueError):
            ours = False
        if ours:
            npz.unlink()
            removed += 1
    (out_dir / LEGEND).unlink(missing_ok=True)
    return removed


def _flock(path: Path, mode: int, out_dir: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise InvalidSetting("out", f"folder {out_dir} cannot be locked: {e.strerror}") from e
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InvalidSetting(
                "out",
                f"{out_dir} is being written by another 'ovdiff segment': wait for it to finish, or use another folder",
            ) from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)  # its last holder removed the file between our open and lock: lock the new one


def _unlock(path: Path, fd: int) -> None:
    """Let go of a lock; the last holder (who can take it exclusively) removes the file first."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass  # another shard of the job still holds it
    finally:
        os.close(fd)


def lock(out_dir: Path, shard: tuple[int, int] | None = None) -> Callable[[], None]:
    """Take `out_dir`'s writer lock for this run and return the function that releases it; a second
    run into the same folder is refused while the lock is held (the OS releases it if we die).

    The shards of one job (`shard` = (i, n)) write disjoint images, so they may run side by side:
    each holds the folder's lock shared and its own shard's lock exclusively, which still keeps out
    a whole run and a second copy of the same shard.
    """
    folder = out_dir / LOCK
    if shard is None:
        fd = _flock(folder, fcntl.LOCK_EX, out_dir)
        return lambda: _unlock(folder, fd)
    whole = _flock(folder, fcntl.LOCK_SH, out_dir)
    mine = out_dir / f"{LOCK}.{shard[0]}-of-{shard[1]}"
    try:
        own = _flock(mine, fcntl.LOCK_EX, out_dir)
    except OvdiffError:
        _unlock(folder, whole)
        raise
    return lambda: (_unlock(mine, own), _unlock(folder, whole))
