"""The `ovdiff` application: one module per command group, assembled here."""

from __future__ import annotations

import os
import sys

import typer

from . import cache_cmd
from . import eval as eval_cmd
from . import sample as sample_cmd

app = typer.Typer(
    name="ovdiff",
    help="Open-vocabulary segmentation with no training: Stable Diffusion draws a support set for each "
    "class name, frozen extractors turn it into prototypes, and images are labelled by their nearest prototype.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(cache_cmd.app, name="cache")
app.command("sample")(sample_cmd.sample)
app.command("eval")(eval_cmd.eval_cmd)


def main() -> None:
    """Console entry point: user errors become one line and a non-zero exit (traceback with OVDIFF_DEBUG=1)."""
    from ..errors import OvdiffError

    try:
        app()
    except OvdiffError as e:
        if os.environ.get("OVDIFF_DEBUG"):
            raise
        from .common import fail

        fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        print("interrupted: work committed so far is kept in the cache; re-run to resume", file=sys.stderr)
        sys.exit(130)
