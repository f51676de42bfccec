"""`ovdiff sample`: generate and cache each class's support set, or draw a contact sheet of one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..api import ModelOptions
from ..config import SampleConfig
from .common import make_run
from .options import (
    CacheOpt,
    ClassesFileOpt,
    DeviceOpt,
    DtypeOpt,
    PresetOpt,
    QuietOpt,
    SeedOpt,
    VerboseOpt,
    model_option,
    read_classes_file,
)

SdModelOpt, GeneratorOpt = model_option("sd_model"), model_option("generator")  # the two models sampling uses
_D = SampleConfig()  # defaults shown in --help; presets may override them
NamesArg = Annotated[list[str] | None, typer.Argument(help="Class names (quote multi-word names).", show_default=False)]


def sample(
    class_names: NamesArg = None,
    classes_file: ClassesFileOpt = None,
    n_images: Annotated[
        int | None,
        typer.Option(
            "--n-images",
            help=f"Support images per class N \\[default: {_D.n_images}; the offline presets use fewer].",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", help=f"Images per generator call \\[default: {_D.batch_size}].", show_default=False
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help=f"DPM-Solver++ steps \\[default: {_D.steps}].", show_default=False)
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(
            "--guidance", help=f"Classifier-free guidance scale \\[default: {_D.guidance_scale}].", show_default=False
        ),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size", help=f"Image side in pixels, a multiple of 8 \\[default: {_D.size}].", show_default=False
        ),
    ] = None,
    prompt_template: Annotated[
        str | None,
        typer.Option(
            "--prompt-template",
            help=f"Prompt with {{}} for the class \\[default: '{_D.prompt_template}'].",
            show_default=False,
        ),
    ] = None,
    negative_prompt: Annotated[
        str | None,
        typer.Option(
            "--negative-prompt", help=f"Negative prompt \\[default: '{_D.negative_prompt}'].", show_default=False
        ),
    ] = None,
    show: Annotated[
        str | None,
        typer.Option(
            "--show", help="Write a contact sheet of this class's cached support set to --out.", show_default=False
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Contact sheet file (PNG/JPEG) for --show.", show_default=False)
    ] = None,
    sd_model: SdModelOpt = None,
    generator: GeneratorOpt = None,
    cache: CacheOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate and cache the support set of each class: N Stable Diffusion images with attribution maps.

    Cached images are skipped, so an interrupted run resumes where it stopped.

    The same class and --seed give the same images, whatever else is sampled with them.

    Example: ovdiff sample cat "chocolate glazed donut" --n-images 32 --batch-size 8

    Example: ovdiff sample --show "chocolate glazed donut" --out donut-sheet.png
    """
    from ..api import parse_class_list
    from ..errors import OvdiffError

    run = make_run(
        cache,
        preset,
        device,
        dtype,
        seed,
        verbose,
        quiet,
        models=ModelOptions(sd_model=sd_model, generator=generator),
        sample={
            "n_images": n_images,
            "batch_size": batch_size,
            "steps": steps,
            "guidance_scale": guidance,
            "size": size,
            "prompt_template": prompt_template,
            "negative_prompt": negative_prompt,
        },
    )
    classes = parse_class_list(None, read_classes_file(classes_file), extra=class_names)
    if show is None and out is not None:
        raise OvdiffError("--out is the contact sheet of --show: add --show CLASS")
    if show is not None and out is None:
        raise OvdiffError(f"--show needs a file to write: add --out {show.replace(' ', '-')}-support.png")
    if not classes and show is None:
        raise OvdiffError(
            'no class names given: e.g. ovdiff sample cat "chocolate glazed donut", or --classes-file FILE'
        )
    if classes:
        with run.progress() as bar:
            n = run.pipe.sample_config.n_images
            overall = bar.add_task("all classes", total=n * len(classes))
            tasks: dict[str, int] = {}

            def on_event(stage: str, name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.update(tasks[name], completed=done, visible=done < total)
                bar.update(overall, completed=n * (len(tasks) - 1) + done)

            done = run.pipe.sample(classes, on_event)
        if run.verbose:
            for name, sid in zip(done.names, done.ids, strict=True):
                run.say(f"{escape(name)}: {done.n_images} images, support set {sid}")
        run.result(
            f"{len(classes)} class(es), {done.n_images} images each: {done.generated} generated, "
            f"{done.n_images * len(classes) - done.generated} already cached ({done.seconds:.1f} s); cache {run.pipe.cache_dir}"
        )
    if show is not None:
        meta, count = run.pipe.support_sheet(show, out)
        run.say(f"wrote {out} ({count} support images of {escape(repr(meta['norm']))})")
