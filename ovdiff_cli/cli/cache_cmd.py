"""`ovdiff cache info|verify`: one `api.Catalogue` call each, printed."""

from __future__ import annotations

import shlex

import typer
from rich.markup import escape
from rich.table import Table

from .common import catalogue_run
from .options import CacheOpt, JsonOpt, QuietOpt, VerboseOpt
from .output import Command, human_size

app = typer.Typer(help="Inspect and check the prototype cache.", no_args_is_help=True)


@app.command("info", cls=Command)
def info(cache: CacheOpt = None, json_out: JsonOpt = False) -> None:
    """Where the cache is, its schema version, size and what it holds.

    Example: ovdiff cache info --cache ~/.cache/ovdiff

    Example: ovdiff cache info --json
    """
    cat, out = catalogue_run(cache, json_out=json_out)  # a mistyped --cache is an error, not a new cache
    nfo = cat.info()
    if json_out:
        out.emit(nfo)
        return
    table = Table(show_header=False, box=None)
    for k in ("path", "schema_version", "classes", "support_entries", "text_embeddings", "entries"):
        table.add_row(k.replace("_", " "), str(nfo[k]))
    table.add_row("used", human_size(nfo["used_bytes"]))
    table.add_row("map size", human_size(nfo["map_size"]))
    out.console.print(table)


@app.command("verify", cls=Command)
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
    cat, out = catalogue_run(cache, verbose, quiet, json_out)
    check = cat.verify(repair=repair)
    if json_out:
        out.emit(check.document())
    if check.damage is not None:
        _damaged(out, check)
        return
    if json_out:
        if check.problems and not repair:
            raise typer.Exit(1)
        return
    if verbose:
        for c in check.classes:
            rec = c.record
            out.say(
                f"class {escape(str(rec.get('name')))} (seed {rec.get('seed')}, {rec.get('extractor')}, id {c.id[:12]})"
            )
        n = check.counts
        out.say(
            f"checked {n['entries']} entries: {n['classes']} classes, {n['support_entries']} support sets, "
            f"{n['text_embeddings']} text embeddings"
        )
    if check.sound:
        out.result("[green]cache is sound[/]")
        return
    _report(out, check.problems)
    if repair:
        out.say(f"removed {len(check.problems)} broken entries; the next 'ovdiff protos add' rebuilds them")
        _lost_photos(out, check.lost_photos)
        return
    out.err.print(f"{len(check.problems)} problem(s); run 'ovdiff cache verify --repair' to remove them")
    raise typer.Exit(1)


def _report(out, problems) -> None:
    for p in problems:
        out.err.print(f"[red]broken[/] {escape(f'{p.key}: {p.reason}')}", highlight=False, soft_wrap=True)


def _damaged(out, check) -> None:
    """A data file LMDB must not map: say so, or after --repair what the copy into a fresh one kept."""
    if not check.repaired:
        out.err.print(f"[red]broken[/] {escape(f'data.mdb: {check.damage}')}", highlight=False, soft_wrap=True)
        out.err.print("run 'ovdiff cache verify --repair' to copy every intact class into a fresh cache")
        raise typer.Exit(1)
    _report(out, check.problems)
    out.say(
        f"repaired: {check.kept} intact class(es) copied into a fresh cache at {escape(str(check.path))}; "
        f"the damaged original is kept at {escape(str(check.original))} (delete it when done)"
    )
    _lost_photos(out, check.lost_photos)


def _lost_photos(out, names: list[str]) -> None:
    """A class from the user's photos cannot be drawn again: say how to give the photos back."""
    for name in names:
        out.say(
            f"the photos of {escape(repr(name))} are lost: add them again with "
            f"'ovdiff protos add {escape(shlex.quote(name))} --images DIR'"
        )
