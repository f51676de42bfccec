"""`ovdiff cache info|verify`."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from .common import CacheOpt, JsonOpt, QuietOpt, VerboseOpt, cache_run, human_size

app = typer.Typer(help="Inspect and check the prototype cache.", no_args_is_help=True)


@app.command("info")
def info(cache: CacheOpt = None, json_out: JsonOpt = False) -> None:
    """Where the cache is, its schema version, size and what it holds.

    Example: ovdiff cache info --cache ~/.cache/ovdiff

    Example: ovdiff cache info --json
    """
    run = cache_run(cache, json_out=json_out)
    nfo = run.cache.info()
    if json_out:
        run.emit(nfo)
        return
    table = Table(show_header=False, box=None)
    for k in ("path", "schema_version", "classes", "support_entries", "text_embeddings", "entries"):
        table.add_row(k.replace("_", " "), str(nfo[k]))
    table.add_row("used", human_size(nfo["used_bytes"]))
    table.add_row("map size", human_size(nfo["map_size"]))
    run.console.print(table)


@app.command("verify")
def verify(
    cache: CacheOpt = None,
    repair: bool = typer.Option(False, "--repair", help="Delete broken entries so the next run rebuilds them."),
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Decode every entry, check shapes, metadata and checksums; exit 1 if anything is broken.

    Example: ovdiff cache verify --repair

    Example: ovdiff cache verify --json   (exit code as without --json)
    """
    run = cache_run(cache, verbose, quiet, json_out)
    problems = run.cache.verify(repair=repair)
    if json_out:
        nfo = run.cache.info()
        run.emit({"path": str(run.cache_dir), "sound": not problems, "repaired": repair and bool(problems),
                  "entries": nfo["entries"], "classes": nfo["classes"], "support_entries": nfo["support_entries"],
                  "text_embeddings": nfo["text_embeddings"],
                  "problems": [{"key": p.key, "reason": p.reason} for p in problems]})  # fmt: skip
        if problems and not repair:
            raise typer.Exit(1)
        return
    if verbose:
        nfo = run.cache.info()
        run.say(f"checked {nfo['entries']} entries: {nfo['classes']} classes, {nfo['support_entries']} support sets, "
                f"{nfo['text_embeddings']} text embeddings")  # fmt: skip
    if not problems:
        run.result("[green]cache is sound[/]")
        return
    for p in problems:
        run.err.print(f"[red]broken[/] {escape(f'{p.key}: {p.reason}')}", highlight=False, soft_wrap=True)
    if repair:
        run.say(f"removed {len(problems)} broken entries; the next 'ovdiff protos add' rebuilds them")
        return
    run.err.print(f"{len(problems)} problem(s); run 'ovdiff cache verify --repair' to remove them")
    raise typer.Exit(1)
