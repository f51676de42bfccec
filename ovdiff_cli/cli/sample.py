"""`ovdiff sample`: generate and cache each class's support set, or draw a contact sheet of one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..config import SampleConfig
from .common import make_run
from .options import (
    CacheOpt,
    ClassesFileOpt,
    DeviceOpt,
    DtypeOpt,
    GeneratorOpt,
    PresetOpt,
    QuietOpt,
    read_classes_file,
    SdModelOpt,
    SeedOpt,
    VerboseOpt,
)

_D = SampleConfig()  # defaults shown in --help; presets may override them
NamesArg = Annotated[Optional[list[str]], typer.Argument(help="Class names (quote multi-word names).", show_default=False)]


def sample(
    class_names: NamesArg = None,
    classes_file: ClassesFileOpt = None,
    n_images: Annotated[Optional[int], typer.Option("--n-images", help=f"Support images per class N \\[default: {_D.n_images}; the offline presets use fewer].", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help=f"Images per generator call \\[default: {_D.batch_size}].", show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help=f"DPM-Solver++ steps \\[default: {_D.steps}].", show_default=False)] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help=f"Classifier-free guidance scale \\[default: {_D.guidance_scale}].", show_default=False)] = None,
    size: Annotated[Optional[int], typer.Option("--size", help=f"Image side in pixels, a multiple of 8 \\[default: {_D.size}].", show_default=False)] = None,
    prompt_template: Annotated[Optional[str], typer.Option("--prompt-template", help=f"Prompt with {{}} for the class \\[default: '{_D.prompt_template}'].", show_default=False)] = None,
    negative_prompt: Annotated[Optional[str], typer.Option("--negative-prompt", help=f"Negative prompt \\[default: '{_D.negative_prompt}'].", show_default=False)] = None,
    show: Annotated[Optional[str], typer.Option("--show", help="Write a contact sheet of this class's cached support set to --out.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Contact sheet file (PNG/JPEG) for --show.", show_default=False)] = None,
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
    from ..errors import OvdiffError
    from ..names import parse_class_list

    run = make_run(
        cache, preset, device, dtype, seed, verbose, quiet, sd_model=sd_model, generator=generator,
        sample={"n_images": n_images, "batch_size": batch_size, "steps": steps, "guidance_scale": guidance,
                "size": size, "prompt_template": prompt_template, "negative_prompt": negative_prompt},
    )
    classes = parse_class_list(None, read_classes_file(classes_file), extra=class_names)
    if show is None and out is not None:
        raise OvdiffError("--out is the contact sheet of --show: add --show CLASS")
    if show is not None and out is None:
        raise OvdiffError(f"--show needs a file to write: add --out {show.replace(' ', '-')}-support.png")
    if not classes and show is None:
        raise OvdiffError('no class names given: e.g. ovdiff sample cat "chocolate glazed donut", or --classes-file FILE')
    if classes:
        _sample_classes(run, classes)
    if show is not None:
        _write_sheet(run, show, out)


def _sample_classes(run, classes: list[str]) -> None:
    """Sample every class with one set of stages (one model load), an overall bar and one per class."""
    from ..engines.support import ensure_support_set

    n = run.sample.n_images
    start, generated_before = time.perf_counter(), run.stages.calls.get("generate", 0)
    with run.progress() as bar:
        overall = bar.add_task("all classes", total=n * len(classes))
        for k, name in enumerate(classes):
            task = bar.add_task(name, total=n)

            def on_progress(done: int, total: int, task=task, offset=k * n) -> None:
                bar.update(task, completed=done)
                bar.update(overall, completed=offset + done)

            sid, meta = ensure_support_set(run.cache, run.stages, name, run.run.seed, run.sample, on_progress)
            bar.update(task, visible=False)
            if run.verbose:
                run.say(f"{escape(name)}: {meta['n_images']} images, support set {sid}")
    new = run.stages.calls.get("generate", 0) - generated_before
    run.result(
        f"{len(classes)} class(es), {n} images each: {new} generated, {n * len(classes) - new} already cached "
        f"({time.perf_counter() - start:.1f} s); cache {run.cache_dir}"
    )


def _write_sheet(run, show: str, out: Path) -> None:
    from ..errors import OvdiffError
    from ..io.outdir import check_not_in_cache
    from ..engines.support import cached_support_set
    from ..io.sheets import contact_sheet

    check_not_in_cache(out, run.cache_dir, "--out")
    meta, samples = cached_support_set(run.cache, run.stages.specs, show, run.run.seed, run.sample)
    norm = meta["norm"]
    title = f"{meta['prompt']}  |  seed {meta['seed']}  |  {len(samples)} images, attribution maps beside them"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(samples, title).save(out)
    except (OSError, ValueError) as e:
        raise OvdiffError(f"cannot write contact sheet {out}: {getattr(e, 'strerror', None) or e}") from e
    run.say(f"wrote {out} ({len(samples)} support images of {escape(repr(norm))})")
