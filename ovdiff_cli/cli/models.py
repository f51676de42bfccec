"""`ovdiff models download` and `ovdiff doctor`: fetch a preset's weights once; say what is there."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..api import ModelOptions
from .common import make_run
from .options import (
    CacheOpt,
    DeviceOpt,
    DtypeOpt,
    ExtractorOpt,
    JsonOpt,
    PresetOpt,
    ProposerOpt,
    QuietOpt,
    VerboseOpt,
    flag,
    grouped,
)
from .output import Command, print_unpadded

app = typer.Typer(help="Fetch the weights a preset needs, so that later runs work offline.", no_args_is_help=True)


@app.command("download", cls=Command)
@grouped
def download(
    *,
    local_dir: Annotated[
        Path | None,
        typer.Option(
            "--local-dir",
            help="Put each model in DIR/<role> instead of the HF cache, to pass as --sd-model DIR/sd etc.",
            show_default=False,
        ),
    ] = None,
    extractor: ExtractorOpt = None,
    mask_proposer: ProposerOpt = None,
    models: ModelOptions,
    cache: CacheOpt = None,
    preset: PresetOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Download every weight the preset needs into the HF cache (or --local-dir), for offline runs.

    The generator (SD), the filter's CLIP, the extractor's backbones and SAM when it proposes the
    masks; with --local-dir, one folder per model. Later runs work with HF_HUB_OFFLINE=1.

    Example: ovdiff models download --preset sd15

    Example: ovdiff models download --local-dir ~/weights --extractor sd+dino+clip+mae
    """
    from ..api import hf_cache_dir

    run = make_run(
        cache,
        preset,
        verbose=verbose,
        quiet=quiet,
        models=models,
        protos={"extractor": extractor, "mask_proposer": mask_proposer},
    )

    def on_weight(w, state: str) -> None:
        if state == "elsewhere":
            run.say(f"{w.role}: {escape(w.spec)} is {w.source}, nothing to download")
        elif state == "present":
            run.say(f"{w.role}: {escape(w.repo or w.url)} already present")
        else:
            run.say(f"{w.role}: downloading {escape(w.repo or w.url)} ({', '.join(w.files)}) …")
            if w.gated:
                run.say(gated_hint(w.repo))

    wanted, folders = run.pipe.download_weights(local_dir, on_weight)
    flags = []
    for role, folder in folders.items():  # the options of the library's table of model roles
        setting = ModelOptions.setting_of(role)
        if setting == "generator":
            name = run.pipe.run_config.model_overrides["generator"].partition("=")[0]
            flags += ["--generator", shlex.quote(f"{name}={folder}")]
        elif setting == "part_model":
            flags += ["--part-model", shlex.quote(f"{role}={folder}")]  # pasteable, as every suggested command
        elif ModelOptions.takes_folder(role) and setting in {name for name, _, _ in ModelOptions.table()}:
            flags += [flag(setting), shlex.quote(str(folder))]
    where = local_dir if local_dir is not None else hf_cache_dir()
    run.result(
        f"preset {run.pipe.preset.name}: {sum(w.source in ('hub', 'url') for w in wanted)} model(s) ready in {where}"
    )
    if flags:
        run.result(f"use them with: {' '.join(flags)}")


@grouped
def doctor(
    *,
    extractor: ExtractorOpt = None,
    mask_proposer: ProposerOpt = None,
    models: ModelOptions,
    cache: CacheOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Print the device, dtype, library versions, caches and which weights are present, for bug reports.

    Example: ovdiff doctor --preset sd15
    """
    from ..api import doctor_report

    run = make_run(
        cache,
        preset,
        device,
        dtype,
        verbose=verbose,
        quiet=quiet,
        models=models,
        protos={"extractor": extractor, "mask_proposer": mask_proposer},
        json_out=json_out,
    )
    facts = doctor_report(run.pipe)
    if json_out:
        run.emit(facts)
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    for key in (
        "ovdiff",
        "platform",
        "device",
        "gpu",
        "dtype",
        "cuda_available",
        "cuda_version",
        "torch_threads",
        "preset",
        "extractor",
        "mask_proposer",
        "ovdiff_cache",
        "hf_cache",
    ):
        if key in facts:
            table.add_row(key.replace("_", " "), escape(str(facts[key])))
    table.add_row("libraries", escape(", ".join(f"{k} {v or 'missing'}" for k, v in facts["libraries"].items())))
    print_unpadded(run.console, table)
    weights = Table(title="weights")
    for col in ("role", "spec", "source", "repository", "present"):
        weights.add_column(col)
    for w in facts["weights"]:
        mark = {True: "[green]yes[/]", False: "[red]no[/]", None: "n/a"}[w["present"]]
        weights.add_row(w["role"], escape(w["spec"]), w["source"], escape(w["repo"] or ""), mark)
    print_unpadded(run.console, weights)
    missing = [w for w in facts["weights"] if w["present"] is False]
    if missing:
        given = run.pipe.run_config.model_overrides.get("generator")
        again = f"ovdiff models download --preset {run.pipe.preset.name}" + (
            f" --generator {shlex.quote(given)}" if given else ""
        )
        run.result(f"missing weights: {', '.join(w['role'] for w in missing)}; fetch them with '{again}'")
        for w in missing:
            if w["gated"]:
                run.result(gated_hint(w["repo"]))
    else:
        run.result("all weights present")


def gated_hint(repo: str) -> str:
    """What a user does once before the hub serves a gated model's files."""
    return (
        f"{repo} is gated: accept its terms at https://huggingface.co/{repo} and log in with 'hf auth login' "
        "(or set HF_TOKEN)"
    )
