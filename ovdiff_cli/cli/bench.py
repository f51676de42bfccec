"""`ovdiff bench`: time sampling, prototypes, segmentation, the filter cache, the vocabulary and memory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .options import DeviceOpt, DtypeOpt, QuietOpt, SeedOpt, VerboseOpt


def results_table(results: dict) -> Table:
    from ..api import bench_rows

    m, s = results["machine"], results["settings"]
    table = Table(
        title=f"ovdiff bench · preset {s['preset']} · {m['device_name']} ({m['device']}, {m['dtype']}) · "
        f"{s['repeats']} repeat(s), {s['pairs']} pair(s) per ratio · {results['wall_s']:.0f} s"
    )
    for col, justify in (
        ("section", "left"),
        ("figure", "left"),
        ("median", "right"),
        ("min", "right"),
        ("max", "right"),
        ("spread", "right"),
        ("unit", "left"),
        ("target", "left"),
        ("", "left"),
    ):
        table.add_column(col, justify=justify)
    for row in bench_rows(results):
        if row[0]:
            table.add_section()
        table.add_row(*row[:-1], "[green]pass[/]" if row[-1] == "pass" else "[bold red]MISS[/]" if row[-1] else "")
    return table


def bench(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the results (JSON).")] = Path(
        "bench/results.json"
    ),
    repeats: Annotated[
        int | None,
        typer.Option(
            "--repeats",
            help="Runs per figure: the median, min and max are reported \\[default: 2 on CPU, 2 on CUDA; 1 with --quick].",
            show_default=False,
        ),
    ] = None,
    pairs: Annotated[
        int | None,
        typer.Option(
            "--pairs",
            help="Interleaved pairs (A B, B A, …) per ratio: the median pair ratio and its spread are reported \\[default: 12 on CPU, 3 on CUDA; 1 with --quick].",
            show_default=False,
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Tiny preset, small counts, one repeat: checks that the bench runs, in seconds (the figures mean nothing).",
        ),
    ] = False,
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache",
            help="Folder for the bench's caches and images (kept) \\[default: a temporary directory, removed after].",
            show_default=False,
        ),
    ] = None,
    sections: Annotated[
        str | None,
        typer.Option(
            "--sections",
            help="Comma-separated sections to run, e.g. segment,large_vocab: class_build, memory, sampling, prototypes, segment, filter, vocabulary, large_vocab, ray \\[default: all on CPU; on CUDA all but class_build, large_vocab and ray, so it ends in minutes; all but ray with --quick].",
            show_default=False,
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="Models to time: sd15-random, tiny or sd15 \\[default: sd15-random; tiny with --quick].",
            show_default=False,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Measure speed and memory and write them to --out, with the settings and the machine.

    On a CPU the sizes are reduced (1 support image, 2 steps, 256 px, windows 256/192) so the run
    takes minutes; on CUDA they are the paper's (8 support images per class). Each figure is the
    median of --repeats runs, with min, max and spread; each ratio the median of --pairs interleaved
    pair ratios. The class-build section measures peak memory of one build at N=8 and N=32, the
    large-vocabulary one reading, filtering, segmenting with and adding to 10,000 cached classes
    (fp16, ~24 GiB of disk; it says so and stops where the disk is too small).
    Without --quick, a last section compares `segment --engine ray` (1 and 2 workers) with the local
    engine.

    Example: ovdiff bench --out bench/results.json
    """
    from ..api import bench_markdown, run_benchmark

    err = Console(stderr=True)
    say = (lambda msg: None) if quiet else (lambda msg: err.print(f"[dim]bench[/] {msg}", highlight=False))
    results = run_benchmark(
        out,
        quick=quick,
        preset=preset,
        repeats=repeats,
        pairs=pairs,
        sections=sections,
        folder=cache,
        device=device,
        dtype=dtype,
        seed=seed,
        say=say,
    )
    if quiet:
        return
    console = Console()
    if not console.is_terminal:  # a log or a pipe: do not squeeze the table into 80 columns
        console.width = 132
    console.print(results_table(results))
    m = results["machine"]
    console.print(
        f"[bold]machine[/]: {m['device_name']}, {m['cpus_usable']} of {m['cpu_count']} CPUs usable, "
        f"{m['memory_gib']} GiB, torch {m['torch']}, {m['platform']}; load average "
        f"{m['load_average_at_start']} at start, {m['load_average_at_end']} at end",
        highlight=False,
    )
    for name, section in results["sections"].items():
        for note in section["notes"]:
            console.print(f"[bold]{name}[/]: {note}", highlight=False)
    if verbose:
        console.print(bench_markdown(results), highlight=False, soft_wrap=True)
    console.print(f"results: {out}", highlight=False)
