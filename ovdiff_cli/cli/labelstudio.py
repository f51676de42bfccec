"""`ovdiff label-studio`: ovdiff as a Label Studio ML backend (connect it in a project's Model settings)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..errors import OvdiffError
from .common import phrase
from .options import (
    CacheOpt,
    ClipModelOpt,
    DeviceOpt,
    DinoModelOpt,
    DtypeOpt,
    MaskModelOpt,
    PresetOpt,
    SamModelOpt,
    SdModelOpt,
    SeedOpt,
)

EXTRA = "pip install 'ovdiff[ui,labelstudio]'"


def label_studio(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on; 127.0.0.1 serves this machine only (0.0.0.0: anyone who can reach it).",
        ),
    ] = "127.0.0.1",
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
    sd_model: SdModelOpt = None,
    clip_model: ClipModelOpt = None,
    dino_model: DinoModelOpt = None,
    sam_model: SamModelOpt = None,
    mask_model: MaskModelOpt = None,
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

    from ..api import Pipeline
    from ..limits import check_seed, in_range
    from ..ui.labelstudio import rle_encoder

    in_range("port", port)
    check_seed(seed)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise OvdiffError(f"ovdiff label-studio needs the ui extra ({e.name} is missing): {EXTRA}") from e
    rle_encoder()
    from ..ui.app import listen, run, sigterm_as_ctrl_c
    from ..ui.labelstudio_app import LabelStudioBackend, make_app

    models = {
        role: src
        for role, src in (
            ("sd", sd_model),
            ("clip", clip_model),
            ("dino", dino_model),
            ("sam", sam_model),
            ("cutler", mask_model),
        )
        if src
    }
    pipeline = Pipeline(preset=preset, cache=cache, device=device, dtype=dtype, seed=seed, models=models)
    backend = LabelStudioBackend(pipeline, url, os.environ.get("LABEL_STUDIO_API_KEY"), build=not no_build)
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    if bound_host not in ("127.0.0.1", "::1"):
        print(f"warning: listening on {bound_host}: anyone who can reach it can run ovdiff", file=sys.stderr)
    with sigterm_as_ctrl_c():  # SIGTERM (a service manager, kill) stops it as Ctrl-C does
        print(
            f"ovdiff label-studio: http://{shown_host}:{bound_port} (preset {pipeline.preset.name}, cache "
            f"{pipeline.cache_dir}, images from {backend.server or 'the Label Studio that connects'}; Ctrl-C stops)",
            flush=True,
        )
        try:
            run(make_app(backend, phrase), sock)
        except KeyboardInterrupt:  # uvicorn finished the requests in flight, then passed the signal on
            print("ovdiff label-studio: stopped", file=sys.stderr)
