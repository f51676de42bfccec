"""`ovdiff segment`: label every pixel of some images with one of the given classes (or background)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..config import SegmentConfig
from ..errors import OvdiffError
from .common import (
    CacheOpt,
    ClassesFileOpt,
    ClipModelOpt,
    DeviceOpt,
    DinoModelOpt,
    DtypeOpt,
    ExtractorOpt,
    PresetOpt,
    ProposerOpt,
    QuietOpt,
    SdModelOpt,
    SeedOpt,
    VerboseOpt,
    make_run,
    read_classes_file,
)

_S = SegmentConfig()  # defaults shown in --help; presets may override them


def _ints(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise OvdiffError(f"{option} takes comma-separated pixel sizes, e.g. 448,336; got {text!r}") from None
    if not vals or min(vals) < 8:
        raise OvdiffError(f"{option} sizes must be at least 8 px; got {text!r}")
    return vals


def check_out_dir(out: Path) -> Path:
    """`out` as a writable folder (created), or a one-line error before any work starts."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OvdiffError(f"--out {out} is a file: give a folder for the masks")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OvdiffError(f"cannot create --out folder {out}: {e.strerror}") from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise OvdiffError(f"--out folder {out} is not writable")
    return out


def segment(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns (quote globs).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the masks (created).", show_default=False)],
    classes: Annotated[Optional[str], typer.Option("--classes", "-c", help="Comma-separated class names; mask value k = k-th class, 0 = background.", show_default=False)] = None,
    classes_file: ClassesFileOpt = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Look into subfolders of input folders.")] = False,
    no_build: Annotated[bool, typer.Option("--no-build", help="Refuse classes missing from the cache instead of building them.")] = False,
    use_filter: Annotated[Optional[bool], typer.Option("--filter/--no-filter", help=f"CLIP category pre-filter \\[default: {'on' if _S.use_filter else 'off'}].", show_default=False)] = None,
    eta: Annotated[Optional[int], typer.Option("--eta", help=f"At most this many classes per image after the filter \\[default: {_S.eta}].", show_default=False)] = None,
    slide: Annotated[Optional[bool], typer.Option("--slide/--no-slide", help="Sliding windows, or one pass over the whole image \\[default: slide].", show_default=False)] = None,
    windows: Annotated[Optional[str], typer.Option("--windows", help=f"Window sizes in px \\[default: {','.join(map(str, _S.windows))}].", show_default=False)] = None,
    stride: Annotated[Optional[int], typer.Option("--stride", help=f"Window stride in px \\[default: {_S.stride}].", show_default=False)] = None,
    short_side: Annotated[Optional[int], typer.Option("--short-side", help=f"Images are resized to this short side first \\[default: {_S.short_side}].", show_default=False)] = None,
    no_background: Annotated[bool, typer.Option("--no-background", help="Every pixel gets a named class (no background label, paper A.3).")] = False,
    no_bg_prototypes: Annotated[bool, typer.Option("--no-bg-prototypes", help="Background by thresholding the best fg similarity (--fg-threshold) instead of bg prototypes (paper A.2 ablation).")] = False,
    fg_threshold: Annotated[Optional[float], typer.Option("--fg-threshold", help=f"Threshold for --no-bg-prototypes \\[default: {_S.fg_threshold}].", show_default=False)] = None,
    no_stuff_filter: Annotated[bool, typer.Option("--no-stuff-filter", help="Keep things' bg prototypes that look like a stuff class.")] = False,
    stuff_threshold: Annotated[Optional[float], typer.Option("--stuff-threshold", help=f"Stuff filter cosine threshold \\[default: {_S.stuff_threshold}].", show_default=False)] = None,
    protos: Annotated[Optional[str], typer.Option("--protos", help="Prototype kinds to use \\[default: class,instance,part].", show_default=False)] = None,
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write overlays/<name>.jpg: the image blended with its mask, with a legend.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Also write explain/<name>.{json,png,winner.png}: which prototype won each pixel and its support-set source.")] = False,
    extractor: ExtractorOpt = None,
    mask_proposer: ProposerOpt = None,
    sd_model: SdModelOpt = None,
    clip_model: ClipModelOpt = None,
    dino_model: DinoModelOpt = None,
    cache: CacheOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Segment images against a list of classes: one palette PNG per image, plus classes.json.

    A mask's pixel value is the class's position in --classes (1, 2, …), 0 is background, in
    the PASCAL VOC colours. Classes missing from the cache are built first (see 'ovdiff protos add').
    Exit code 0 when every image was written, 1 when some failed (the others are written), 2 for
    a usage error.

    Example: ovdiff segment photos/ --classes cat,dog,sky --out masks/ --overlay

    Example (offline, no weights): ovdiff segment demo/data/VOC2012/JPEGImages --preset procedural --classes-file demo/data/classes.txt --out masks/ --explain
    """
    from ..imageio import discover
    from ..names import parse_class_list
    from ..segment import Explainer, Segmenter, save_legend, segment_paths
    from ..types import PROTO_KINDS
    from ..vocab import ensure_classes

    kinds = None
    if protos is not None:
        kinds = tuple(k.strip() for k in protos.split(",") if k.strip())
        bad = [k for k in kinds if k not in PROTO_KINDS]
        if bad or not kinds:
            raise OvdiffError(f"--protos takes a comma list of {', '.join(PROTO_KINDS)}; got {protos!r}")
    if eta is not None and eta < 1:
        raise OvdiffError(f"--eta must be at least 1, got {eta}")
    if stride is not None and stride < 1:
        raise OvdiffError(f"--stride must be at least 1, got {stride}")
    run = make_run(
        cache, preset, device, dtype, seed, verbose, quiet, sd_model=sd_model, clip_model=clip_model,
        dino_model=dino_model, protos={"extractor": extractor, "mask_proposer": mask_proposer},
        segment={"use_filter": use_filter, "eta": eta, "slide": slide, "windows": _ints(windows, "--windows"),
                 "stride": stride, "short_side": short_side, "background": False if no_background else None,
                 "bg_prototypes": False if no_bg_prototypes else None, "fg_threshold": fg_threshold,
                 "stuff_filter": False if no_stuff_filter else None, "stuff_threshold": stuff_threshold,
                 "proto_kinds": kinds},
    )  # fmt: skip
    names = parse_class_list(classes, read_classes_file(classes_file))
    if not names:
        raise OvdiffError("no classes given: use --classes cat,dog,sky or --classes-file FILE")
    out_dir = check_out_dir(out)
    items = discover(inputs, recursive)

    with run.progress() as bar:
        tasks: dict[tuple[str, str], int] = {}

        def on_event(stage: str, name: str, done: int, total: int) -> None:
            if stage == "cached":
                return
            if (stage, name) not in tasks:
                tasks[(stage, name)] = bar.add_task(f"{stage:<10} {name}", total=total)
            bar.update(tasks[(stage, name)], completed=done, total=total)

        protos_list = ensure_classes(run.cache, run.hub, names, run.run.seed, run.sample, run.protos,
                                     build=not no_build, on_event=on_event)  # fmt: skip
        segmenter = Segmenter(run.hub, protos_list, run.segment, run.protos.extractor, run.cache)
        save_legend(names, run.segment.background, out_dir)
        task = bar.add_task("segment", total=len(items))

        def on_image(item, error: str | None) -> None:
            bar.advance(task)
            if error:
                run.err.print(f"[yellow]skipped[/] {error}", highlight=False, soft_wrap=True)

        summary = segment_paths(segmenter, items, out_dir, overlay=overlay,
                                explainer=Explainer(segmenter, run.cache) if explain else None, on_image=on_image)  # fmt: skip
    if not run.quiet:
        table = Table(title=f"ovdiff segment → {out_dir}")
        for col in ("images", "written", "failed", "s/image", "features", "filter", "matching", "upsample+io"):
            table.add_column(col, justify="right")
        per = summary.written or 1
        t = summary.timings
        table.add_row(str(len(items)), str(summary.written), str(len(summary.failures)),
                      f"{summary.seconds_per_image:.3f}" if summary.written else "-",
                      *(f"{t.get(k, 0.0) / per:.3f}" for k in ("features", "filter", "matching", "upsample_io")))  # fmt: skip
        run.console.print(table)
        run.say(f"masks: {out_dir}/<name>.png · legend: {out_dir / 'classes.json'}"
                + (f" · overlays: {out_dir / 'overlays'}" if overlay else "")
                + (f" · explanations: {out_dir / 'explain'}" if explain else ""))  # fmt: skip
    if summary.failures:
        run.err.print(f"[bold red]{len(summary.failures)} of {len(items)} image(s) failed[/]; the others were written",
                      highlight=False)  # fmt: skip
        raise typer.Exit(1)
