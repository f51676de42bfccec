"""`ovdiff demo`: the whole tool end to end, offline and without weights, on the procedural world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import OvdiffError
from .common import CacheOpt, DeviceOpt, DtypeOpt, QuietOpt, SeedOpt, VerboseOpt, make_run


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's data, masks, overlays and cache (created).", show_default=False)],
    images: Annotated[int, typer.Option("--images", "-n", help="Held-out scenes to draw and segment.")] = 24,
    cache: CacheOpt = None,
    preset: Annotated[str, typer.Option("--preset", help="Only 'procedural': the demo needs a world whose truth is known.")] = "procedural",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run OVDiff end to end on the procedural world: no weights, no network, seconds on a CPU.

    Draws held-out scenes with known truth in the VOC layout (OUT/data), builds prototypes for the
    world's classes from procedurally generated support sets (cache: OUT/cache unless --cache),
    segments the scenes into OUT/masks with overlays, and scores those masks as `ovdiff eval --pred`
    does (report in OUT/report; mIoU from one confusion matrix over
    the split, as mmsegmentation does).

    Example: ovdiff demo --out demo/ --images 24
    """
    from ..datasets import load_dataset
    from ..evaluate import evaluate, predictions_from_dir, write_report
    from ..imageio import discover
    from ..procedural import write_voc
    from ..segment import save_legend, segment_paths
    from ..vocab import ensure_classes
    from .eval import print_results
    from .segment import check_out_dir

    if preset != "procedural":
        raise OvdiffError(f"the demo runs on the procedural preset only (got {preset!r}); for real weights use 'ovdiff segment'")
    if images < 1:
        raise OvdiffError(f"--images must be at least 1, got {images}")
    root = check_out_dir(out)
    run = make_run(cache or root / "cache", preset, device, dtype, seed, verbose, quiet)
    data = root / "data"
    ids = write_voc(data, images, seed)
    names = [n for n in (data / "classes.txt").read_text().splitlines() if n]
    run.say(f"drew {len(ids)} held-out scenes → {data / 'VOC2012'}")
    masks = root / "masks"
    with run.progress() as bar:
        build = bar.add_task("prototypes", total=len(names))
        protos = ensure_classes(run.cache, run.stages, names, run.run.seed, run.sample, run.protos,
                                on_event=lambda stage, *_: bar.advance(build) if stage in ("prototypes", "cached") else None)  # fmt: skip
        segmenter = run.stages.segmenter(protos, run.segment, run.protos.extractor, run.cache)
        save_legend(names, True, masks)
        task = bar.add_task("segment", total=len(ids))
        summary = segment_paths(segmenter, discover([str(data / "VOC2012" / "JPEGImages")]), masks, overlay=True,
                                on_image=lambda *_: bar.advance(task))  # fmt: skip
    if summary.failures:
        raise OvdiffError(f"{len(summary.failures)} demo image(s) failed: {summary.failures[0][1]}")
    dataset = load_dataset("voc", data, custom_classes=names)
    result = evaluate(dataset, predictions_from_dir(masks, dataset))  # the saved masks, under eval's protocol
    _, report = write_report(result, root / "report", dataset)
    if run.quiet:
        return
    print_results(run, dataset, [result], summary.seconds_per_image)
    run.say(f"masks: {masks} · overlays: {masks / 'overlays'} · "
            f"truth: {data / 'VOC2012' / 'SegmentationClass'} · report: {report}")  # fmt: skip
    run.say(f"next: ovdiff segment {data / 'VOC2012' / 'JPEGImages'} --preset procedural --cache {run.cache_dir} "
            f"--classes-file {data / 'classes.txt'} --out {root / 'explained'} --explain")  # fmt: skip
