"""`ovdiff eval`: score ovdiff (or saved masks) on a segmentation benchmark under one protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..api import ModelOptions
from .common import make_run
from .options import (
    BuildOptions,
    CacheOpt,
    DeviceOpt,
    DtypeOpt,
    EngineOptions,
    JsonOpt,
    MethodOptions,
    PresetOpt,
    QuietOpt,
    SeedOpt,
    VerboseOpt,
    grouped,
)
from .output import print_results, result_line

DATASETS_HELP = "voc, context, object (with background); voc20, context59, ade, stuff, cityscapes (without); ade847, pc459 (large vocabularies)."


@grouped
def eval_cmd(
    dataset: Annotated[str, typer.Argument(help=DATASETS_HELP, show_default=False)],
    root: Annotated[
        Path,
        typer.Option(
            "--root", help="The dataset folder in its mmsegmentation layout, e.g. data/VOC2012.", show_default=False
        ),
    ],
    *,
    pred: Annotated[
        Path | None,
        typer.Option(
            "--pred", help="Score saved masks <id>.png from this folder instead of running a model.", show_default=False
        ),
    ] = None,
    offset: Annotated[
        int | None,
        typer.Option(
            "--offset",
            help="With --pred: dataset index = mask value - offset \\[default: 0 with background, 1 without, as ovdiff segment writes].",
            show_default=False,
        ),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            help="Comma-separated support-set seeds; reports mean ± σ over them \\[default: --seed].",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", help="Only the first N images of the split, for a quick look.", show_default=False),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write metrics.json and report.html here.", show_default=False)
    ] = None,
    classes_file: Annotated[
        Path | None,
        typer.Option(
            "--classes-file",
            help="Class names of a dataset of your own in this layout, one per line, line k = label k \\[default: classes.txt in --root if present].",
            show_default=False,
        ),
    ] = None,
    raw_names: Annotated[
        bool,
        typer.Option("--raw-names", help="Use the dataset's own class names, not the paper's corrections (App. C.3)."),
    ] = False,
    method: MethodOptions,
    build: BuildOptions,
    models: ModelOptions,
    engine: EngineOptions,
    cache: CacheOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Evaluate on a benchmark split: per-class IoU, mIoU, pixel accuracy, seconds/image.

    Protocol of the prior work (TCL/GroupViT): short side 448, sliding windows, ignore label 255, mIoU
    from one confusion matrix over the split. Without-background benchmarks ignore background pixels
    and use no background prototypes (paper A.3).

    Example: ovdiff eval voc --root data/VOC2012 --seeds 0,1,2,3,4 --out reports/voc

    Example: ovdiff eval voc --root data/VOC2012 --pred masks/ --out reports/mine

    Example (offline): ovdiff demo --out demo && ovdiff eval voc --root demo/data --preset procedural

    Example: ovdiff eval voc --root data/VOC2012 --json | jq .miou

    Example (a Ray cluster): ovdiff eval voc --root /shared/VOC2012 --engine ray --address HEAD:6379
    """
    from ..errors import OvdiffError

    run = make_run(
        cache,
        preset,
        device,
        dtype,
        seed,
        verbose,
        quiet,
        models,
        build.sample(),
        build.protos(),
        method.overrides(),
        json_out,
    )
    try:
        seed_list = None if seeds is None else [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise OvdiffError(f"--seeds {seeds!r}: give comma-separated integers, e.g. --seeds 0,1,2,3,4") from None
    with run.progress() as bar:
        building: dict[str, int] = {}  # the seed whose classes are being built → its bar
        built: set[str] = set()
        scoring: dict[str, int] = {}

        def on_event(stage: str, name: str, done: int, total: int) -> None:
            if stage == "benchmark":  # the classes of the next seed ("seed S"): one bar per seed
                building.clear()
                built.clear()
                building[name] = bar.add_task(f"prototypes ({name})", total=total)
                return
            ((what, task),) = building.items()
            built.add(name)
            bar.update(
                task,
                completed=len(built) - 1,
                description=f"{'prototypes' if stage == 'ray' else stage:<10} {name[:30]} ({what})",
            )

        def on_score(what: str, done: int, total: int, running: float, image_id: str) -> None:
            if what not in scoring:
                if what in building:  # this seed's classes are ready
                    bar.update(building.pop(what), completed=len(built), description=f"prototypes ({what})")
                scoring[what] = bar.add_task(what, total=total)
            bar.update(scoring[what], completed=done, description=f"{dataset} ({what}) mIoU {100 * running:.1f}")
            if run.verbose:
                run.err.print(f"{escape(image_id)}: running mIoU {100 * running:.1f}", highlight=False)

        done = run.pipe.evaluate(
            dataset,
            root,
            seeds=seed_list,
            pred=pred,
            offset=offset,
            limit=limit,
            out=out,
            classes_file=classes_file,
            raw_names=raw_names,
            **engine.calls(),
            on_event=on_event,
            on_score=on_score,
            on_note=lambda text: run.say(escape(text)),
        )
    ds, results = done.dataset, done.results
    if not run.json and not run.quiet:
        print_results(run.console, ds, results)
    if done.report is not None:
        run.say(f"wrote {done.report[0]} and {done.report[1]}")
    if run.json:
        run.emit(done.document())
    else:
        run.result(result_line(ds, results))
