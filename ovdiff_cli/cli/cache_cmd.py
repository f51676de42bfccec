"""`ovdiff cache info|verify`."""

from __future__ import annotations

import shlex

import typer
from rich.markup import escape
from rich.table import Table

from .common import cache_run
from .options import CacheOpt, JsonOpt, QuietOpt, VerboseOpt
from .output import human_size

app = typer.Typer(help="Inspect and check the prototype cache.", no_args_is_help=True)


@app.command("info")
def info(cache: CacheOpt = None, json_out: JsonOpt = False) -> None:
    """Where the cache is, its schema version, size and what it holds.

    Example: ovdiff cache info --cache ~/.cache/ovdiff

    Example: ovdiff cache info --json
    """
    run = cache_run(cache, json_out=json_out, create=False)  # a mistyped --cache is an error, not a new cache
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
    from ..store.audit import check
    from ..store.cache import CacheDamaged

    run = cache_run(cache, verbose, quiet, json_out, create=False)
    try:
        c = run.cache
    except CacheDamaged as e:
        _damaged(run, e, repair)
        return
    found = check(c, repair=repair)
    problems = found.problems
    if json_out:
        nfo = c.info()
        run.emit(
            {
                "path": str(run.cache_dir),
                "sound": not problems,
                "repaired": repair and bool(problems),
                "entries": nfo["entries"],
                "classes": nfo["classes"],
                "support_entries": nfo["support_entries"],
                "text_embeddings": nfo["text_embeddings"],
                "problems": [{"key": p.key, "reason": p.reason} for p in problems],
                "lost_photos": found.lost_photos,
            }
        )
        if problems and not repair:
            raise typer.Exit(1)
        return
    if verbose:
        for pid, rec in found.kept_classes():  # the records that decoded and checked out
            run.say(
                f"class {escape(str(rec.get('name')))} (seed {rec.get('seed')}, {rec.get('extractor')}, id {pid[:12]})"
            )
        nfo = c.info()
        run.say(
            f"checked {nfo['entries']} entries: {nfo['classes']} classes, {nfo['support_entries']} support sets, "
            f"{nfo['text_embeddings']} text embeddings"
        )
    if not problems:
        run.result("[green]cache is sound[/]")
        return
    _report(run, problems)
    if repair:
        run.say(f"removed {len(problems)} broken entries; the next 'ovdiff protos add' rebuilds them")
        _lost_photos(run, found.lost_photos)
        return
    run.err.print(f"{len(problems)} problem(s); run 'ovdiff cache verify --repair' to remove them")
    raise typer.Exit(1)


def _report(run, problems) -> None:
    for p in problems:
        run.err.print(f"[red]broken[/] {escape(f'{p.key}: {p.reason}')}", highlight=False, soft_wrap=True)


def _damage_report(run, problems, repaired: bool, **extra) -> dict:
    """`cache verify --json` of a data file LMDB cannot map: the same document as for a sound one,
    entries unknown (None), every problem listed."""
    return {
        "path": str(run.cache_dir),
        "sound": False,
        "repaired": repaired,
        "entries": None,
        "classes": extra.pop("kept", None),
        "support_entries": None,
        "text_embeddings": None,
        "problems": [{"key": p.key, "reason": p.reason} for p in problems],
        **extra,
    }


def _damaged(run, error, repair: bool) -> None:
    """A data file LMDB must not map: say so, or with --repair copy what is intact into a fresh one."""
    from ..store.audit import Problem, rebuild

    if not repair:
        if run.json:
            run.emit(_damage_report(run, [Problem("data.mdb", error.problem)], repaired=False))
        run.err.print(f"[red]broken[/] {escape(f'data.mdb: {error.problem}')}", highlight=False, soft_wrap=True)
        run.err.print("run 'ovdiff cache verify --repair' to copy every intact class into a fresh cache")
        raise typer.Exit(1)
    done = rebuild(run.cache_dir, error.problem)
    if run.json:
        run.emit(
            _damage_report(
                run,
                done.problems,
                repaired=True,
                kept=done.classes,
                original=str(done.original),
                lost_photos=done.lost_photos,
            )
        )
    _report(run, done.problems)
    run.say(
        f"repaired: {done.classes} intact class(es) copied into a fresh cache at {escape(str(run.cache_dir))}; "
        f"the damaged original is kept at {escape(str(done.original))} (delete it when done)"
    )
    _lost_photos(run, done.lost_photos)


def _lost_photos(run, names: list[str]) -> None:
    """A class from the user's photos cannot be drawn again: say how to give the photos back."""
    for name in names:
        run.say(
            f"the photos of {escape(repr(name))} are lost: add them again with "
            f"'ovdiff protos add {escape(shlex.quote(name))} --images DIR'"
        )
