"""`ovdiff demo`: the whole tool end to end, offline and without weights, on the procedural world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import make_run
from .options import CacheOpt, DeviceOpt, DtypeOpt, QuietOpt, SeedOpt, VerboseOpt
from .output import ovdiff_command, print_results, result_line


def demo(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder for the demo's data, masks, overlays and cache (created).", show_default=False
        ),
    ],
    images: Annotated[int, typer.Option("--images", "-n", help="Held-out scenes to draw and segment.")] = 24,
    cache: CacheOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run OVDiff end to end on the procedural world: no weights, no network, a minute or two on a CPU.

    Draws held-out scenes with known truth in the VOC layout (OUT/data), builds prototypes for the
    world's classes from procedurally generated support sets (cache: OUT/cache unless --cache),
    segments the scenes into OUT/masks with overlays, and scores those masks as `ovdiff eval --pred`
    does (report in OUT/report; mIoU from one confusion matrix over
    the split, as mmsegmentation does).

    Example: ovdiff demo --out demo/ --images 24
    """
    from ..api import demo_classes, run_demo

    root = Path(out).expanduser()
    run = make_run(cache or root / "cache", "procedural", device, dtype, seed, verbose, quiet)
    with run.progress() as bar:
        build = bar.add_task("prototypes", total=demo_classes())
        task = bar.add_task("segment", total=images)
        done = run_demo(
            run.pipe,
            root,
            images,
            on_event=lambda stage, *_: bar.advance(build) if stage in ("prototypes", "cached") else None,
            on_image=lambda *_: bar.advance(task),
        )
    if run.quiet:
        run.result(result_line(done.dataset, [done.result]))
        return
    print_results(run.console, done.dataset, [done.result], done.summary.seconds_per_image)
    run.say(f"drew {images} held-out scenes → {done.data / 'VOC2012'}")
    run.say(
        f"masks: {done.masks} · overlays: {done.masks / 'overlays'} · "
        f"truth: {done.data / 'VOC2012' / 'SegmentationClass'} · report: {done.report} · figure: {done.figure}"
    )
    run.say(
        f"next: {ovdiff_command()} segment {done.data / 'VOC2012' / 'JPEGImages'} --preset procedural --cache {run.pipe.cache_dir} "
        f"--classes-file {done.data / 'classes.txt'} --out {root / 'explained'} --explain"
    )
