"""`ovdiff protos add|list|rm|show|export|import`: build, inspect and share class prototypes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .common import cache_run, make_run
from .options import (
    AddressOpt,
    CacheOpt,
    ClassesFileOpt,
    ClipModelOpt,
    DeviceOpt,
    DinoModelOpt,
    DtypeOpt,
    EngineOpt,
    ExtractorOpt,
    FilterModelOpt,
    GeneratorOpt,
    JsonOpt,
    KPartsOpt,
    MaskModelOpt,
    NImagesOpt,
    PartModelOpt,
    PresetOpt,
    ProposerOpt,
    ProtoDtypeOpt,
    QuietOpt,
    SamModelOpt,
    SdModelOpt,
    SeedOpt,
    VerboseOpt,
    WorkersOpt,
    read_classes_file,
)
from .output import human_size

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


def _check_filter_seed(seed: int | None) -> None:
    """--seed as a filter has the range of --seed, checked before the cache is opened."""
    from ..limits import check_seed

    if seed is not None:
        check_seed(seed)


def _prototypes(rec: dict) -> str:
    from ..engines.catalogue import prototype_counts

    c = prototype_counts(rec)
    return f"{c['fg']} fg" + (f" + {c['bg']} bg" if c["bg"] else "")


@app.command("add")
def add(
    class_names: NamesArg = None,
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
    extractor: ExtractorOpt = None,
    mask_proposer: ProposerOpt = None,
    k_parts: KPartsOpt = None,
    proto_dtype: ProtoDtypeOpt = None,
    n_images: NImagesOpt = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Beyond the paper: build the (one) class from your photos in this folder (no masks needed); --n-images adds that many generated images (default none).",
            show_default=False,
        ),
    ] = None,
    sam_model: SamModelOpt = None,
    mask_model: MaskModelOpt = None,
    sd_model: SdModelOpt = None,
    clip_model: ClipModelOpt = None,
    dino_model: DinoModelOpt = None,
    part_model: PartModelOpt = None,
    filter_model: FilterModelOpt = None,
    generator: GeneratorOpt = None,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
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
    from ..engines.catalogue import find_classes
    from ..errors import OvdiffError
    from ..names import parse_class_list, validate

    run = make_run(
        cache,
        preset,
        device,
        dtype,
        seed,
        verbose,
        quiet,
        sd_model=sd_model,
        clip_model=clip_model,
        dino_model=dino_model,
        sam_model=sam_model,
        mask_model=mask_model,
        part_models=part_model,
        filter_model=filter_model,
        generator=generator,
        sample={"n_images": n_images},
        protos={"extractor": extractor, "mask_proposer": mask_proposer, "k_parts": k_parts, "proto_dtype": proto_dtype},
    )
    classes = parse_class_list(None, read_classes_file(classes_file), extra=class_names)
    kinds: dict[str, str] = {}
    for kind, given in (("stuff", stuff or []), ("thing", thing or [])):
        for name in given:
            norm = validate(name)
            if kinds.get(norm, kind) != kind:
                raise OvdiffError(f"class {norm!r} is given both --stuff and --thing")
            kinds[norm] = kind
            if norm not in classes:
                classes.append(norm)
    if not classes:
        raise OvdiffError(
            'no class names given: e.g. ovdiff protos add cat "chocolate glazed donut", or --classes-file FILE'
        )

    if images is not None and len(classes) != 1:
        raise OvdiffError("--images builds one class: give one class name")
    before, built = dict(run.stages.calls), []
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
                classes[0], images, n_images or 0, kinds.get(classes[0]), engine, address, workers, on_event
            )
        else:
            vocab = run.pipe.vocabulary(
                classes, kinds, on_event=on_event, engine=engine, address=address, workers=workers
            )
        protos = vocab.classes
    if not run.quiet:
        records = dict(find_classes(run.cache))
        table = Table(title=f"prototypes in {run.cache_dir}")
        for col in ("class", "part", "kind", "prototypes", "masks", "id"):
            table.add_column(col)
        for p in protos:
            for part, protos_of_part in p.parts.items():
                rec = records[protos_of_part.pid]
                table.add_row(
                    escape(p.name),
                    part,
                    f"{rec['kind']} ({rec['kind_source']})",
                    _prototypes(rec),
                    _mask_sources(rec),
                    protos_of_part.pid[:12],
                )
        run.console.print(table)
    calls = {k: run.stages.calls.get(k, 0) - before.get(k, 0) for k in ("generate", "extract")}
    run.result(
        f"{len(protos)} class(es), extractor {run.protos.extractor}, seed {run.run.seed}: "
        + (
            f"{len(built)} built on Ray"
            if engine == "ray" and images is None
            else f"{calls['generate']} images generated, {calls['extract']} featurised"
        )
    )


def _mask_sources(rec: dict) -> str:
    """How a class's support masks were made: "P proposals, T thresholds" (of N images)."""
    if "mask_proposals" not in rec:
        return "?"
    return f"{rec['mask_proposals']} proposals, {rec['mask_thresholds']} thresholds"


@app.command("list")
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
    from ..engines.catalogue import class_summary, count_classes, match_classes

    _check_filter_seed(seed)
    run = cache_run(cache, verbose, quiet, json_out, create=False)
    found = match_classes(run.cache, targets, seed, extractor)
    if json_out:
        run.emit([class_summary(run.cache, pid, rec) for pid, rec in found])
        return
    if quiet:
        for pid, rec in found:
            typer.echo(f"{pid}\t{rec['name']}\t{rec['seed']}\t{rec['extractor']}\t{rec['kind']}")
        return
    if not found:
        run.say(f"no classes cached in {run.cache_dir}: add some with 'ovdiff protos add NAME'")
        return
    table = Table(title=escape(f"{count_classes(found)} in {run.cache_dir}"))
    cols = ["class", "seed", "extractor", "prototypes", "kind", "size", "id"] + (
        ["proposer", "masks", "K", "N", "preset", "created"] if verbose else []
    )
    for col in cols:
        table.add_column(col, justify="right" if col in ("seed", "size", "K", "N") else "left")
    for pid, rec in found:
        row = [
            escape(rec["name"]),
            str(rec["seed"]),
            rec["extractor"],
            _prototypes(rec),
            rec["kind"],
            human_size(run.cache.class_size(pid)),
            pid[:12],
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
    run.console.print(table)


@app.command("rm")
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
    from ..engines.catalogue import count_classes, remove_classes
    from ..errors import OvdiffError

    if not targets:
        raise OvdiffError("name the classes to remove (names or ids from 'ovdiff protos list')")
    _check_filter_seed(seed)
    run = cache_run(cache, verbose, quiet, create=False)
    doomed = remove_classes(run.cache, targets, seed, extractor, with_support)
    if verbose:
        for pid, rec in doomed:
            run.say(f"removed {escape(rec['name'])} (seed {rec['seed']}, {rec['extractor']}, id {pid[:12]})")
    run.say(escape(f"removed {count_classes(doomed)} from {run.cache_dir}"))


@app.command("show")
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
    from ..engines.catalogue import write_class_sheet

    _check_filter_seed(seed)
    run = cache_run(cache, verbose, quiet, create=False)
    pid, rec, count = write_class_sheet(run.cache, target, seed, extractor, out)
    run.say(f"wrote {out} ({count} support images of {escape(repr(rec['name']))}, id {pid[:12]})")


@app.command("export")
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
    from ..engines.catalogue import count_classes, export_matching

    _check_filter_seed(seed)
    run = cache_run(cache, verbose, quiet, create=False)
    found, size = export_matching(run.cache, targets, seed, extractor, file)
    run.say(escape(f"wrote {file}: {count_classes(found)}, {human_size(size)}"))


@app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="A file written by 'ovdiff protos export'.", show_default=False)],
    cache: CacheOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Load classes exported by 'ovdiff protos export' into the cache, bit for bit.

    Example: ovdiff protos import voc-protos.safetensors --cache ~/.cache/ovdiff
    """
    from ..engines.catalogue import count_classes
    from ..store.sharing import import_classes

    run = cache_run(cache, verbose, quiet)
    pids = import_classes(run.cache, file)
    found = [(p, run.cache.class_record(p)) for p in pids]
    names = list(dict.fromkeys(rec["name"] for _, rec in found))
    run.say(escape(f"imported {count_classes(found)} into {run.cache_dir}: {', '.join(names)}"))
