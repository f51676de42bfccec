"""`ovdiff segment`: label every pixel of some images with one of the given classes (or background)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..api import ModelOptions
from ..config import SegmentConfig
from ..errors import OvdiffError
from .common import make_run
from .options import (
    BuildOptions,
    CacheOpt,
    ClassesFileOpt,
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
    read_classes_file,
)
from .output import printable


@grouped
def segment(
    inputs: Annotated[
        list[str], typer.Argument(help="Image files, folders or glob patterns (quote globs).", show_default=False)
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the masks (created).", show_default=False)],
    *,
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            "-c",
            help="Comma-separated class names; mask value k = k-th class, 0 = background.",
            show_default=False,
        ),
    ] = None,
    classes_file: ClassesFileOpt = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Look into subfolders of input folders.")
    ] = False,
    no_build: Annotated[
        bool, typer.Option("--no-build", help="Refuse classes missing from the cache instead of building them.")
    ] = False,
    method: MethodOptions,
    no_background: Annotated[
        bool, typer.Option("--no-background", help="Every pixel gets a named class (no background label, paper A.3).")
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            help=f"Images segmented together (their windows share the backbones' batches) \\[default: {SegmentConfig().image_batch}].",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace the masks of another class list in --out (by default such a folder is refused, so two legends never mix).",
        ),
    ] = False,
    overlay: Annotated[
        bool,
        typer.Option(
            "--overlay", help="Also write overlays/<name>.jpg: the image blended with its mask, with a legend."
        ),
    ] = False,
    mask_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="Masks as png (palette; 16-bit beyond 254 classes), npz (labels, + scores with --save-scores) or coco-rle (one COCO results JSON).",
        ),
    ] = "png",
    save_scores: Annotated[
        bool,
        typer.Option(
            "--save-scores", help="With --format npz: also store each label's score map (float16, working resolution)."
        ),
    ] = False,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Also write explain/<name>.{json,png,winner.png}: which prototype won each pixel and its support-set source.",
        ),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="I/N: only shard I of N (by sorted path, image i goes to shard i mod N), to split a job.",
            show_default=False,
        ),
    ] = None,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Skip images whose outputs are already in --out (resume a job).")
    ] = False,
    refine: Annotated[
        str,
        typer.Option(
            "--refine",
            help="Beyond the paper: refine each label map, pamr (colour-affinity propagation, about a second per image on a CPU) or sam2 (each SAM 2 region takes the class of highest mean score; needs SAM 2 weights, --sam2-model). none is the paper's.",
        ),
    ] = "none",
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
    """Segment images against a list of classes: one palette PNG per image, plus classes.json.

    A mask's pixel value is the class's position in --classes (1, 2, …), 0 is background, in
    the PASCAL VOC colours; beyond 254 classes masks are 16-bit PNGs. --format npz or coco-rle
    writes the same labels as numpy files or one COCO results JSON. Classes missing from the cache
    are built first (see 'ovdiff protos add').
    Exit code 0 when every image was written, 1 when some failed (the others are written), 2 for
    a usage error.

    Example: ovdiff segment photos/ --classes cat,dog,sky --out masks/ --overlay

    Example (offline, no weights): ovdiff segment demo/data/VOC2012/JPEGImages --preset procedural --classes-file demo/data/classes.txt --out masks/ --explain

    Example: ovdiff segment photos/ --classes-file lvis.txt --out masks/ --format coco-rle --json

    Example (beyond the paper, label maps snapped to SAM 2 regions): ovdiff segment photos/ --classes cat,dog,sky --out masks/ --refine sam2 --sam2-model ~/models/sam2.1-hiera-large

    Example (a Ray cluster, resumable): ovdiff segment /shared/photos --classes-file voc.txt --out /shared/masks --engine ray --address HEAD:6379 --skip-existing
    """
    from ..api import parse_class_list

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
        {
            **method.overrides(),
            "background": False if no_background else None,
            "image_batch": batch_size,
            "refine": refine,
        },
        json_out,
    )
    run.pipe.create_cache = not no_build  # --no-build only reads: a missing cache is an error, a read-only one works
    names = parse_class_list(classes, read_classes_file(classes_file))
    if not names:
        raise OvdiffError("no classes given: use --classes cat,dog,sky or --classes-file FILE")

    with run.progress() as bar:
        tasks: dict[tuple[str, str], int] = {}

        def on_event(stage: str, name: str, done: int, total: int) -> None:
            if stage == "resume":
                run.say(f"{done} of {total} image(s) already done in {name}: skipped")
            elif stage == "segment":
                tasks[(stage, name)] = bar.add_task("segment", total=total)
            elif stage != "cached":
                key = ("prototypes", "(ray)") if stage == "ray" else (stage, name)
                if key not in tasks:
                    tasks[key] = bar.add_task(f"{key[0]:<10} {key[1]}", total=total)
                bar.update(tasks[key], completed=done, total=total)

        def on_image(item, seg, error: str | None) -> None:
            bar.advance(tasks[("segment", "")])
            if error:
                run.err.print(f"[yellow]skipped[/] {escape(printable(error))}", highlight=False, soft_wrap=True)
            elif run.verbose:
                kept = ", ".join(names[i] for i in seg.selected)
                run.err.print(
                    f"{escape(printable(item.name))}: {sum(seg.timings.values()):.2f} s, classes kept by the filter: "
                    f"{escape(kept)}",
                    highlight=False,
                    soft_wrap=True,
                )

        done = run.pipe.segment_folder(
            inputs,
            out,
            names,
            fmt=mask_format,
            overlay=overlay,
            explain=explain,
            save_scores=save_scores,
            shard=shard,
            skip_existing=skip_existing,
            overwrite=overwrite,
            recursive=recursive,
            build=not no_build,
            **engine.calls(),
            on_event=on_event,
            on_image=on_image,
        )
    summary, items, out_dir = done.summary, done.items, done.out_dir
    if run.json:
        run.emit(done.report())
    elif not run.quiet:
        table = Table(title=f"ovdiff segment → {out_dir}")
        for col in ("images", "written", "failed", "s/image", "features", "filter", "matching", "upsample+io"):
            table.add_column(col, justify="right")
        per = summary.written or 1
        t = summary.timings
        table.add_row(
            str(len(items)),
            str(summary.written),
            str(len(summary.failures)),
            f"{summary.seconds_per_image:.3f}" if summary.written else "-",
            *(f"{t.get(k, 0.0) / per:.3f}" for k in ("features", "filter", "matching", "upsample_io")),
        )
        run.console.print(table)
    if not run.json:
        masks = out_dir / "coco_results.json" if mask_format == "coco-rle" else f"{out_dir}/<name>.{mask_format}"
        run.result(
            escape(
                f"{summary.written} mask(s): {masks} · legend: {out_dir / 'classes.json'}"
                + (f" · overlays: {out_dir / 'overlays'}" if overlay else "")
                + (f" · explanations: {out_dir / 'explain'}" if explain else "")
            )
        )
    if summary.failures:
        failed = escape(printable(", ".join(path for path, _ in summary.failures[:10]))) + (
            " …" if len(summary.failures) > 10 else ""
        )
        run.err.print(
            f"[bold red]{len(summary.failures)} of {len(items)} image(s) failed[/] ({failed}); the others were written",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
