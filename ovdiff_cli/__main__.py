"""`python -m ovdiff_cli` is the `ovdiff` command."""

from .cli.app import main

main()
