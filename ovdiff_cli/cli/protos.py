"""`ovdiff protos add|list|rm|show|export|import`: build, inspect and share class prototypes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..api import ModelOptions
from .common import catalogue_run, make_run
from .options import (
    BuildOptions,
    CacheOpt,
    ClassesFileOpt,
    DeviceOpt,
    DtypeOpt,
    EngineOptions,
    JsonOpt,
    PresetOpt,
    QuietOpt,
    SeedOpt,
    VerboseOpt,
    grouped,
    read_classes_file,
)
from .output import Command, human_size

app = typer.Typer(help="Build, inspect and share class prototypes (the cached vocabulary).", no_args_is_help=True)

NamesArg = Annotated[list[str] | None, typer.Argument(help="Class names (quote multi-word names).", show_default=False)]
TargetsArg = Annotated[
    list[str] | None, typer.Argument(help="Class names or ids (6+ characters of the id).", show_default=False)
]
SeedFilterOpt = Annotated[
    int | None, typer.Option("--seed", help="Only classes of this seed \\[default: any].", show_default=False)
]
ExtractorFilterOpt = Annotated[
    str | None,
    typer.Option(
        "--extractor",
        help="Only the entries of these extractor parts, e.g. dino or sd+dino+clip \\[default: any].",
        show_default=False,
    ),
]


def _prototypes(counts: dict[str, int]) -> str:
    return f"{counts['fg']} fg" + (f" + {counts['bg']} bg" if counts["bg"] else "")


@app.command("add", cls=Command)
@grouped
def add(
    class_names: NamesArg = None,
    *,
    classes_file: ClassesFileOpt = None,
    stuff: Annotated[
        list[str] | None,
        typer.Option(
            "--stuff",
            help="Treat this class as stuff: fg prototypes only (repeatable; adds the class).",
            show_default=False,
        ),
    ] = None,
    thing: Annotated[
        list[str] | None,
        typer.Option(
            "--thing",
            help="Treat this class as a thing: fg and bg prototypes (repeatable; adds the class).",
            show_default=False,
        ),
    ] = None,
    build: BuildOptions,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Beyond the paper: build the (one) class from your photos in this folder (no masks needed); --n-images adds that many generated images (default none).",
            show_default=False,
        ),
    ] = None,
    models: ModelOptions,
    engine: EngineOptions,
    cache: CacheOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Sample what is missing, then build and cache the prototypes of each class.

    Classes already cached with the same seed, extractor and models are not touched. Stuff or
    thing comes from a built-in table (COCO-Stuff, Context, ADE20K) unless --stuff/--thing say.

    Example: ovdiff protos add cat dog "chocolate glazed donut" --stuff sky

    Example: ovdiff protos add --classes-file voc.txt --extractor sd --mask-proposer threshold

    Example (a Ray cluster, one worker per GPU): ovdiff protos add --classes-file lvis.txt --engine ray --address HEAD:6379

    Example (your own photos, beyond the paper): ovdiff protos add "my mug" --images photos/mug/ --n-images 8
    """
    from ..api import parse_class_list
    from ..errors import OvdiffError

    run = make_run(cache, preset, device, dtype, seed, verbose, quiet, models, build.sample(), build.protos())
    classes = parse_class_list(None, read_classes_file(classes_file), extra=class_names)
    kinds = dict.fromkeys(parse_class_list(None, None, stuff), "stuff")
    for name in parse_class_list(None, None, thing):
        if name in kinds:
            raise OvdiffError(f"class {name!r} is given both --stuff and --thing")
        kinds[name] = "thing"
    classes = [*classes, *(name for name in kinds if name not in classes)]  # the Pipeline checks the union
    if not classes:
        raise OvdiffError(
            'no class names given: e.g. ovdiff protos add cat "chocolate glazed donut", or --classes-file FILE'
        )

    if images is not None and len(classes) != 1:
        raise OvdiffError("--images builds one class: give one class name")
    before, built = dict(run.pipe.stages.calls), []
    with run.progress() as bar:
        tasks: dict[tuple[str, str], int] = {}

        def on_event(stage: str, name: str, done: int, total: int) -> None:
            if stage == "ray":  # a class built on a Ray worker
                built.append(name)
                name, stage = "(ray)", "classes"
            if stage == "cached":
                return
            key = (stage, name)
            if key not in tasks:
                tasks[key] = bar.add_task(f"{stage:<10} {name}", total=total)
            bar.update(tasks[key], completed=done, total=total)

        if images is not None:
            vocab = run.pipe.photo_class(
                classes[0], images, build.n_images or 0, kinds.get(classes[0]), **engine.calls(), on_event=on_event
            )
        else:
            vocab = run.pipe.vocabulary(classes, kinds, on_event=on_event, **engine.calls())
        protos = vocab.classes
    if not run.quiet:
        entries = {c.id: c for c in run.pipe.catalogue.list(sizes=False)}
        table = Table(title=f"prototypes in {run.pipe.cache_dir}")
        for col in ("class", "part", "kind", "prototypes", "masks", "id"):
            table.add_column(col)
        for p in protos:
            for part, protos_of_part in p.parts.items():
                entry = entries[protos_of_part.pid]
                rec = entry.record
                table.add_row(
                    escape(p.name),
                    part,
                    f"{rec['kind']} ({rec['kind_source']})",
                    _prototypes(entry.prototypes),
                    _mask_sources(rec),
                    protos_of_part.pid[:12],
                )
        run.console.print(table)
    calls = {k: run.pipe.stages.calls.get(k, 0) - before.get(k, 0) for k in ("generate", "extract")}
    run.result(
        f"{len(protos)} class(es), extractor {run.pipe.proto_config.extractor}, seed {run.pipe.seed}: "
        + (
            f"{len(built)} built on Ray"
            if engine.engine == "ray" and images is None
            else f"{calls['generate']} images generated, {calls['extract']} featurised"
        )
    )


def _mask_sources(rec: dict) -> str:
    """How a class's support masks were made: "P proposals, T thresholds" (of N images)."""
    if "mask_proposals" not in rec:
        return "?"
    return f"{rec['mask_proposals']} proposals, {rec['mask_thresholds']} thresholds"


@app.command("list", cls=Command)
def list_cmd(
    targets: TargetsArg = None,
    seed: SeedFilterOpt = None,
    extractor: ExtractorFilterOpt = None,
    cache: CacheOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Table of cached classes: class, seed, extractor, prototypes, stuff/thing, size on disk, id.

    With -q, one tab-separated line per class (id, class, seed, extractor, kind) for scripts; with
    --json, a JSON list with every field of the verbose table.

    Example: ovdiff protos list --extractor sd+dino+clip

    Example: ovdiff protos list --json | jq -r '.[].class'
    """
    cat, out = catalogue_run(cache, verbose, quiet, json_out)
    found = cat.list(targets, seed, extractor)
    if json_out:
        out.emit([c.summary() for c in found])
        return
    if quiet:
        for c in found:
            rec = c.record
            typer.echo(f"{c.id}\t{rec['name']}\t{rec['seed']}\t{rec['extractor']}\t{rec['kind']}")
        return
    if not found:
        out.say(f"no classes cached in {cat.path}: add some with 'ovdiff protos add NAME'")
        return
    table = Table(title=escape(f"{cat.count(found)} in {cat.path}"))
    cols = ["class", "seed", "extractor", "prototypes", "kind", "size", "id"] + (
        ["proposer", "masks", "K", "N", "preset", "created"] if verbose else []
    )
    for col in cols:
        table.add_column(col, justify="right" if col in ("seed", "size", "K", "N") else "left")
    for c in found:
        rec = c.record
        row = [
            escape(rec["name"]),
            str(rec["seed"]),
            rec["extractor"],
            _prototypes(c.prototypes),
            rec["kind"],
            human_size(c.size_bytes),
            c.id[:12],
        ]
        if verbose:
            row += [
                rec["mask_proposer"],
                _mask_sources(rec),
                str(rec["k_parts"]),
                str(rec["n_images"]),
                rec["models"].get("preset", ""),
                rec.get("created_at", ""),
            ]
        table.add_row(*row)
    out.console.print(table)


@app.command("rm", cls=Command)
def rm(
    targets: TargetsArg = None,
    seed: SeedFilterOpt = None,
    extractor: ExtractorFilterOpt = None,
    with_support: Annotated[
        bool,
        typer.Option("--with-support", help="Also delete the support images, unless another cached class uses them."),
    ] = False,
    cache: CacheOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Remove cached classes (every seed and extractor of a name, unless filtered).

    Example: ovdiff protos rm cat "chocolate glazed donut" --extractor sd --with-support
    """
    cat, out = catalogue_run(cache, verbose, quiet)
    doomed = cat.remove(targets or [], seed, extractor, with_support)
    if verbose:
        for c in doomed:
            rec = c.record
            out.say(f"removed {escape(rec['name'])} (seed {rec['seed']}, {rec['extractor']}, id {c.id[:12]})")
    out.say(escape(f"removed {cat.count(doomed)} from {cat.path}"))


@app.command("show", cls=Command)
def show(
    target: Annotated[str, typer.Argument(help="Class name or id.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Sheet to write (PNG or JPEG).", show_default=False)],
    seed: SeedFilterOpt = None,
    extractor: ExtractorFilterOpt = None,
    cache: CacheOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Draw a class's support images with their foreground (red) and background (blue) masks.

    When several cached classes match, the newest is drawn (narrow with --seed / --extractor).

    Example: ovdiff protos show cat --out cat-masks.png
    """
    cat, say = catalogue_run(cache, verbose, quiet)
    shown, count = cat.show(target, out, seed, extractor)
    say.say(f"wrote {out} ({count} support images of {escape(repr(shown.name))}, id {shown.id[:12]})")


@app.command("export", cls=Command)
def export(
    file: Annotated[Path, typer.Argument(help="The .safetensors file to write.", show_default=False)],
    targets: TargetsArg = None,
    seed: SeedFilterOpt = None,
    extractor: ExtractorFilterOpt = None,
    cache: CacheOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write cached classes (all, or those named) to one .safetensors file to share a vocabulary.

    Prototypes, masks and records travel; support images do not.

    Example: ovdiff protos export voc-protos.safetensors --extractor sd+dino+clip
    """
    cat, out = catalogue_run(cache, verbose, quiet)
    found, size = cat.export_file(file, targets, seed, extractor)
    out.say(escape(f"wrote {file}: {cat.count(found)}, {human_size(size)}"))


@app.command("import", cls=Command)
def import_cmd(
    file: Annotated[Path, typer.Argument(help="A file written by 'ovdiff protos export'.", show_default=False)],
    cache: CacheOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Load classes exported by 'ovdiff protos export' into the cache, bit for bit.

    Example: ovdiff protos import voc-protos.safetensors --cache ~/.cache/ovdiff
    """
    cat, out = catalogue_run(cache, verbose, quiet, create=True)
    found = cat.import_file(file)
    names = list(dict.fromkeys(c.name for c in found))
    out.say(escape(f"imported {cat.count(found)} into {cat.path}: {', '.join(names)}"))
