"""The `ovdiff` command line: thin Typer commands over the library's stages."""
