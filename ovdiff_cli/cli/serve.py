"""`ovdiff serve`: the local web demo (drop a picture, type classes, click a pixel for its explanation)."""

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

UI_EXTRA = "pip install 'ovdiff[ui]'"


def serve(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on; 127.0.0.1 serves this machine only (0.0.0.0: anyone who can reach it).",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on (0: any free port).")] = 7860,
    no_build: Annotated[
        bool, typer.Option("--no-build", help="Refuse classes missing from the cache instead of building them.")
    ] = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Largest picture accepted, in pixels.")] = 16_000_000,
    max_classes: Annotated[int, typer.Option("--max-classes", help="Most class names accepted in one request.")] = 32,
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
    """Serve a local web page: drop a picture, type class names, see the overlay and legend; click a pixel
    to see which prototype won it and the support-image region it came from (paper App. A.5).

    Needs the ui extra (pip install 'ovdiff\\[ui]'). Same presets, cache and models as 'ovdiff segment';
    classes missing from the cache are built on first use (unless --no-build). Ctrl-C or SIGTERM stops it.

    Example (offline, no weights): ovdiff serve --preset procedural --cache demo/cache
    """
    from ..api import Pipeline
    from ..limits import check_seed, in_range

    in_range("port", port)
    in_range("max_pixels", max_pixels)
    in_range("max_classes", max_classes)
    check_seed(seed)
    try:
        import python_multipart  # noqa: F401  (starlette's form parser)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise OvdiffError(f"ovdiff serve needs the ui extra ({e.name} is missing): {UI_EXTRA}") from e
    from ..ui.app import listen, make_app, run, sigterm_as_ctrl_c
    from ..ui.session import DemoSession

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
    session = DemoSession(pipeline, max_pixels=max_pixels, max_classes=max_classes, build=not no_build)
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    if bound_host not in ("127.0.0.1", "::1"):
        print(
            f"warning: listening on {bound_host}: anyone who can reach this machine can use the page",
            file=sys.stderr,
            flush=True,
        )
    with sigterm_as_ctrl_c():  # SIGTERM (a service manager, kill) stops it as Ctrl-C does
        try:  # from the announcement on: a signal may come as soon as the line is read
            print(
                f"ovdiff serve: http://{shown_host}:{bound_port}/ (preset {pipeline.preset.name}, cache {pipeline.cache_dir}; Ctrl-C stops)",
                flush=True,
            )
            run(make_app(session, phrase), sock)
        except KeyboardInterrupt:  # uvicorn finished the requests in flight, then passed the signal on: a normal stop
            print("ovdiff serve: stopped", file=sys.stderr)
