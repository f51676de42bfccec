"""`ovdiff label-studio`: ovdiff as a Label Studio ML backend (connect it in a project's Model settings)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..api import ModelOptions
from .common import make_run, phrase
from .options import CacheOpt, DeviceOpt, DtypeOpt, HostOpt, PresetOpt, SeedOpt, grouped


@grouped
def label_studio(
    *,
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on (0: any free port).")] = 9090,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="LABEL_STUDIO_URL",
            help="Label Studio's address, the only server images are read from (default: the one that connects). "
            "Its API key is read from LABEL_STUDIO_API_KEY.",
        ),
    ] = None,
    no_build: Annotated[
        bool, typer.Option("--no-build", help="Refuse classes missing from the cache instead of building them.")
    ] = False,
    models: ModelOptions,
    cache: CacheOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Serve ovdiff as a Label Studio ML backend: the project's BrushLabels (and PolygonLabels) labels are
    the classes (a label's hint, when set, is the text segmented), predictions come back as brush masks
    (and polygons) with scores.

    Needs the ui and labelstudio extras (pip install 'ovdiff\\[ui,labelstudio]'). Same presets, cache and
    models as 'ovdiff segment'. Images are read from Label Studio only. Ctrl-C stops it.

    Example (offline, no weights): LABEL_STUDIO_URL=http://localhost:8080 LABEL_STUDIO_API_KEY=... ovdiff label-studio --preset procedural
    """
    import os

    from ..api import serve_label_studio

    run = make_run(cache, preset, device, dtype, seed, models=models)

    def on_listen(bound_host: str, bound_port: int, server: str | None) -> None:
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        if bound_host not in ("127.0.0.1", "::1"):
            print(f"warning: listening on {bound_host}: anyone who can reach it can run ovdiff", file=sys.stderr)
        print(
            f"ovdiff label-studio: http://{shown_host}:{bound_port} (preset {run.pipe.preset.name}, cache "
            f"{run.pipe.cache_dir}, images from {server or 'the Label Studio that connects'}; Ctrl-C stops)",
            flush=True,
        )

    try:
        serve_label_studio(
            run.pipe,
            host,
            port,
            url=url,
            api_key=os.environ.get("LABEL_STUDIO_API_KEY"),
            build=not no_build,
            phrase=phrase,
            on_listen=on_listen,
        )
    except KeyboardInterrupt:
        print("ovdiff label-studio: stopped", file=sys.stderr)
