"""`ovdiff serve`: the local web demo (drop a picture, type classes, click a pixel for its explanation)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..api import ModelOptions
from .common import make_run, phrase
from .options import CacheOpt, DeviceOpt, DtypeOpt, HostOpt, PresetOpt, SeedOpt, grouped


@grouped
def serve(
    *,
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on (0: any free port).")] = 7860,
    no_build: Annotated[
        bool, typer.Option("--no-build", help="Refuse classes missing from the cache instead of building them.")
    ] = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Largest picture accepted, in pixels.")] = 16_000_000,
    max_classes: Annotated[int, typer.Option("--max-classes", help="Most class names accepted in one request.")] = 32,
    models: ModelOptions,
    cache: CacheOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Serve a local web page: drop a picture, type class names, see the overlay and legend; click a pixel
    to see which prototype won it and the support-image region it came from (paper App. A.5).

    Needs the ui extra (pip install 'ovdiff\\[ui]'). Same presets, cache and models as 'ovdiff segment';
    classes missing from the cache are built on first use (unless --no-build). Ctrl-C or SIGTERM stops it.

    Example (offline, no weights): ovdiff serve --preset procedural --cache demo/cache
    """
    from ..api import serve_pipeline

    run = make_run(cache, preset, device, dtype, seed, models=models)

    def on_listen(bound_host: str, bound_port: int) -> None:
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        if bound_host not in ("127.0.0.1", "::1"):
            print(
                f"warning: listening on {bound_host}: anyone who can reach this machine can use the page",
                file=sys.stderr,
                flush=True,
            )
        print(
            f"ovdiff serve: http://{shown_host}:{bound_port}/ (preset {run.pipe.preset.name}, cache {run.pipe.cache_dir}; Ctrl-C stops)",
            flush=True,
        )

    try:
        serve_pipeline(
            run.pipe,
            host,
            port,
            max_pixels=max_pixels,
            max_classes=max_classes,
            build=not no_build,
            phrase=phrase,
            on_listen=on_listen,
        )
    except KeyboardInterrupt:  # uvicorn finished the requests in flight, then passed the signal on: a normal stop
        print("ovdiff serve: stopped", file=sys.stderr)
