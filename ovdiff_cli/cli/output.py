"""What several commands print, and how: consoles, progress off a terminal, sizes, the eval table, the error line."""

from __future__ import annotations

import sys
import threading
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from typer.core import TyperCommand


class LogProgress(Progress):
    """rich's Progress for logs and pipes, where its live bar would show only once, at the end: one
    heartbeat thread prints the rows of the unfinished tasks (rich's own columns, plain text) every
    `every` seconds of wall time, however long or short each task is, and a line while no task runs."""

    def __init__(self, console: Console, every: float = 10.0):
        from rich.progress import MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        super().__init__(
            TextColumn("{task.description}", markup=False),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
            disable=True,
        )
        self.every, self.began = every, time.monotonic()
        self.stopping = threading.Event()
        self.beat = threading.Thread(target=self.heartbeat, name="ovdiff-progress", daemon=True)

    def start(self) -> None:
        super().start()
        self.began = time.monotonic()
        self.beat.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.beat.is_alive():
            self.beat.join()
        super().stop()

    def heartbeat(self) -> None:
        while not self.stopping.wait(self.every):
            self.print_state()

    def print_state(self) -> None:
        """The unfinished tasks' rows, or how long the command has run while none is."""
        with self._lock:
            active = [t for t in self.tasks if t.visible and not t.finished]
        if active:
            print_unpadded(self.console, self.make_tasks_table(active))
        else:
            self.console.print(f"working … {time.monotonic() - self.began:.0f} s", highlight=False)


def print_unpadded(console: Console, renderable: object) -> None:
    """Print `renderable`; off a terminal without the blanks rich pads each line with to the table's
    width, so piped lines end where their text does."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as text:
        console.print(renderable, highlight=False)
    console.out("\n".join(line.rstrip() for line in text.get().splitlines()), highlight=False)


def make_console(stderr: bool = False) -> Console:
    """A rich console; off a terminal (a pipe, a file) it never wraps or cuts a table's cells, so each
    row stays on one line for grep and cut."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = 100_000
    return console


def human_size(n: float) -> str:
    """Bytes for a table: 512 B, 1.5 KiB, 3.2 MiB, 1.1 GiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def result_line(ds, results: list) -> str:
    """The one line `eval` and `demo` end with, --quiet or not: mIoU (mean ± σ over seeds) and the paper's.
    ds: the dataset scored; results: its `EvalResult` per seed."""
    from ..api import paper_score, score_summary

    last = results[-1]
    if len(results) > 1:
        m = score_summary(results)["miou"]
        score = f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f} over {len(results)} seeds" if m else "n/a"
    else:
        score = "n/a" if last.miou != last.miou else f"{100 * last.miou:.1f}"
    paper = paper_score(ds)
    ref = f" (paper, {paper['table']}: {100 * paper['miou']:.1f})" if paper else ""
    return escape(f"{ds.name} mIoU {score}{ref} · {last.n_images} images, {len(ds.classes)} classes")


def print_results(console: Console, ds, results: list, seconds_per_image: float | None = None) -> None:
    """The per-class table of `eval` and `demo`; `seconds_per_image` when the predictions were timed
    elsewhere (saved masks)."""
    import math

    from rich.table import Table

    from ..api import score_summary

    summary = score_summary(results) if len(results) > 1 else None
    table = Table(title=f"{ds.name}: {results[-1].n_images} images, {len(ds.classes)} classes")
    table.add_column("class")
    table.add_column("IoU %", justify="right")

    def fmt(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{100 * x:.1f}"

    for j, name in enumerate(ds.classes):
        if summary and summary["per_class_iou"][name]:
            s = summary["per_class_iou"][name]
            table.add_row(escape(name), f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}")
        else:
            table.add_row(escape(name), fmt(results[-1].per_class_iou[j]))
    table.add_section()
    if summary:
        table.add_row(
            "[bold]mIoU[/]", f"[bold]{100 * summary['miou']['mean']:.1f} ± {100 * summary['miou']['std']:.1f}[/]"
        )
        pa = summary["pixel_accuracy"]
        table.add_row("pixel accuracy", f"{100 * pa['mean']:.1f} ± {100 * pa['std']:.1f}")
    else:
        table.add_row("[bold]mIoU[/]", f"[bold]{fmt(results[-1].miou)}[/]")
        table.add_row("pixel accuracy", fmt(results[-1].pixel_accuracy))
    if seconds_per_image is None:
        seconds_per_image = sum(r.seconds_per_image for r in results) / len(results)
    table.add_row("seconds/image", f"{seconds_per_image:.3f}")
    console.print(table)


def fail(msg: str, code: int = 2) -> None:
    """Print one error line and exit."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(printable(msg))}", highlight=False, soft_wrap=True)
    sys.exit(code)


def printable(text: str) -> str:
    """`text` with the undecodable bytes of non-UTF-8 file names (surrogate escapes) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class Command(TyperCommand):
    """A command whose help flows to the terminal's width (a docstring's line breaks inside a paragraph are
    the source's, not the reader's) and whose flags (--recursive, --json, --help) show no `<bool>` type:
    they take no value."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.help:
            import inspect

            self.help = "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(self.help).split("\n\n"))

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


def ovdiff_command() -> str:
    """The command that runs ovdiff from the user's shell, for the `next:` lines: `ovdiff` where it is on
    PATH; else the script that ran this process (`.venv/bin/ovdiff` after `make demo`, relative to the
    working folder when under it); else this interpreter with `-m ovdiff_cli`."""
    import os
    import shlex
    import shutil
    from pathlib import Path

    if shutil.which("ovdiff"):
        return "ovdiff"
    script = Path(sys.argv[0]).absolute()
    if script.name == "ovdiff" and script.is_file():
        here = Path.cwd().absolute()
        rel = os.path.relpath(script, here)
        return shlex.quote(str(script) if not script.is_relative_to(here) else rel if "/" in rel else f"./{rel}")
    return f"{shlex.quote(sys.executable)} -m ovdiff_cli"
