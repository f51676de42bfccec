"""The `ovdiff` application: one module per command group, assembled here."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Annotated

import typer
from typer.core import TyperGroup

from . import bench as bench_cmd
from . import cache_cmd
from . import demo as demo_cmd
from . import eval as eval_cmd
from . import labelstudio as labelstudio_cmd
from . import models as models_cmd
from . import protos as protos_cmd
from . import sample as sample_cmd
from . import segment as segment_cmd
from . import serve as serve_cmd
from .output import Command

_UsageError = typer.BadParameter.__mro__[1]  # click's UsageError, as the click that typer bundles defines it


class _Group(TyperGroup):
    """Turns a user error raised by any command into one line on stderr and a non-zero exit."""

    def invoke(self, ctx):
        from ..errors import OvdiffError

        argv = [*(getattr(ctx, "_protected_args", None) or []), *ctx.args]
        json_out = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_warning
                return super().invoke(ctx)
        except OvdiffError as e:
            if os.environ.get("OVDIFF_DEBUG"):
                raise
            from .common import phrase
            from .output import fail

            if json_out:
                _json_error(phrase(e), type(e).__name__, e.exit_code)
            fail(phrase(e), e.exit_code)
        except _UsageError as e:  # a bad option value or a missing argument: one line, not usage text
            if type(e).__name__ == "NoArgsIsHelpError":
                raise
            from .output import fail

            where = e.ctx.command_path if e.ctx is not None else "ovdiff"
            if json_out:
                _json_error(f"{e.format_message()} (see '{where} --help')", "UsageError", e.exit_code)
            fail(f"{e.format_message()} (see '{where} --help')", e.exit_code)
        except KeyboardInterrupt:  # here, before click turns it into a bare "Aborted!"
            if json_out:
                _json_error(INTERRUPTED, "Interrupted", 130)
            print(INTERRUPTED, file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:  # `ovdiff … | head -1`: the reader has all it wanted
            _silence_stdout()
            sys.exit(0)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush into a closed pipe says nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _json_error(message: str, kind: str, code: int) -> None:
    """With --json, an error exit still prints one JSON document on stdout, so a pipe into jq sees why."""
    import json

    from .output import printable

    sys.stdout.write(
        json.dumps({"error": printable(message), "type": kind, "exit_code": code}, ensure_ascii=False) + "\n"
    )
    sys.stdout.flush()


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings as one plain line on stderr; others as Python shows them."""
    from ..errors import LongNameWarning

    if issubclass(category, LongNameWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


INTERRUPTED = (
    "interrupted: work committed so far is kept in the cache (and masks written so far in --out); re-run to resume"
)


app = typer.Typer(
    name="ovdiff",
    cls=_Group,
    help="Open-vocabulary segmentation with no training: Stable Diffusion draws a support set for each "
    "class name, frozen extractors turn it into prototypes, and images are labelled by their nearest prototype.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(cache_cmd.app, name="cache")
app.add_typer(protos_cmd.app, name="protos")
app.add_typer(models_cmd.app, name="models")
app.command("sample", cls=Command)(sample_cmd.sample)
app.command("eval", cls=Command)(eval_cmd.eval_cmd)
app.command("segment", cls=Command)(segment_cmd.segment)
app.command("demo", cls=Command)(demo_cmd.demo)
app.command("bench", cls=Command)(bench_cmd.bench)
app.command("doctor", cls=Command)(models_cmd.doctor)
app.command("serve", cls=Command)(serve_cmd.serve)
app.command("label-studio", cls=Command)(labelstudio_cmd.label_studio)


def _print_version(value: bool) -> None:
    if value:
        from ..api import __version__

        typer.echo(f"ovdiff {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Open-vocabulary segmentation with no training (see 'ovdiff COMMAND --help')."""


def main() -> None:
    """Console entry point (user errors and Ctrl-C are handled by the group: one line, traceback with OVDIFF_DEBUG=1).

    A reader that closes the pipe early (`ovdiff protos list | head -1`) ends the command quietly with
    status 0: rich (tables, --help) and click (--version) point stdout at /dev/null and exit 1 then,
    the group does so for a plain write, and here the last flush is guarded."""
    was_null = _stdout_is_devnull()
    try:
        app()
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        code = 0
    if (_stdout_is_devnull() and not was_null) or type(sys.stdout).__name__.endswith("PacifyFlushWrapper"):
        code = 0
    sys.exit(code)


def _stdout_is_devnull() -> bool:
    try:
        out, null = os.fstat(sys.stdout.fileno()), os.stat(os.devnull)
    except (OSError, ValueError):
        return False
    return (out.st_dev, out.st_ino) == (null.st_dev, null.st_ino)
