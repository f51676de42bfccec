"""The library calls behind the commands that are not a `Pipeline`'s or a `Catalogue`'s: the benchmark,
the demo, the doctor's report, the web demo and the summary of scores over seeds. `api` exports them, so
the CLI reaches the library through `api` alone."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engines.demo import DemoRun
    from .eval.datasets import SegDataset
    from .eval.evaluate import EvalResult


@contextlib.contextmanager
def _workspace(folder: Path | None) -> Iterator[Path]:
    """The folder the bench's caches and images go to: `folder` (kept), else a temporary one (removed)."""
    if folder is not None:
        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="ovdiff-bench-") as tmp:
        yield Path(tmp)


def run_benchmark(
    out: str | Path,
    session: Callable[..., Any],
    *,
    quick: bool = False,
    preset: str | None = None,
    repeats: int | None = None,
    pairs: int | None = None,
    sections: str | None = None,
    folder: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    say: Callable[[str], None] | None = None,
) -> dict:
    """`ovdiff bench`: time the sections named in `sections` (comma-separated; default per device) on the
    machine, in `folder` (default a temporary one) and write the results document (JSON) to `out`. The
    settings as the CLI's options: quick (tiny preset, small counts), preset, repeats, pairs, device,
    dtype, seed; say(line) reports each section; session: the `api.Pipeline` class (the Ray section runs one). Returns the document (`bench_rows` tabulates it)."""
    from .bench.run import run_bench
    from .bench.settings import bench_settings, parse_sections
    from .io.images import save_json
    from .limits import check_seed
    from .models.presets import resolve_device

    check_seed(seed)
    kind = resolve_device(device).type
    settings = bench_settings(kind, quick, preset, repeats, pairs)
    only = parse_sections(sections, kind, quick)
    with _workspace(None if folder is None else Path(folder)) as root:
        results = run_bench(settings, root, device, dtype, seed, say, only, session)
    save_json(results, Path(out))
    return results


def bench_rows(results: dict) -> list[tuple[str, ...]]:
    """The rows of the bench's table: section, figure, median, min, max, spread, unit, target, pass/MISS."""
    from .bench.settings import table_rows

    return table_rows(results)


def bench_markdown(results: dict) -> str:
    """The bench's results as a Markdown table (for the manual's performance page)."""
    from .bench.settings import markdown_table

    return markdown_table(results)


def demo_classes() -> int:
    """How many classes the demo's procedural world builds."""
    from .procedural import LABELLED

    return len(LABELLED)


def run_demo(
    pipeline: Any,
    root: str | Path,
    n_images: int,
    on_event: Callable | None = None,
    on_image: Callable | None = None,
) -> DemoRun:
    """`ovdiff demo` (`pipeline`: an `api.Pipeline` of the procedural preset): draw `n_images` held-out scenes of the procedural world under `root`, build its classes,
    segment the scenes, score the masks and draw the figure (`pipeline`: of the procedural preset)."""
    from .engines.demo import run_demo as demo

    return demo(pipeline, Path(root).expanduser(), n_images, on_event, on_image)


def doctor_report(pipeline: Any) -> dict:
    """`ovdiff doctor`: the device, dtype, library versions, caches and which of `pipeline`'s weights are
    present, JSON-ready (for bug reports)."""
    from .doctor import report
    from .models.weights import role_specs

    return report(
        pipeline.preset,
        pipeline.cache_dir,
        pipeline.device,
        pipeline.dtype,
        role_specs(pipeline.model_specs),
        pipeline.proto_config.extractor,
        pipeline.proto_config.mask_proposer,
    )


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache that `models download` fills."""
    from .models.weights import hf_cache_dir as where

    return where()


def serve_pipeline(
    pipeline: Any,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    max_pixels: int = 16_000_000,
    max_classes: int = 32,
    build: bool = True,
    phrase: Callable[[Exception], str] = str,
    on_listen: Callable[[str, int], None] | None = None,
) -> None:
    """`ovdiff serve`: the web demo of `pipeline` on host:port (0: any free port) until Ctrl-C or SIGTERM
    (KeyboardInterrupt, after the requests in flight are answered); the limits
    of one request (max_pixels, max_classes) and build (classes missing from the cache are built) as the
    CLI's options; phrase turns a library error into the page's line; on_listen(host, port) once bound."""
    from .limits import in_range

    in_range("port", port)
    in_range("max_pixels", max_pixels)
    in_range("max_classes", max_classes)
    try:
        import python_multipart  # noqa: F401  (starlette's form parser)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        from .errors import OvdiffError

        raise OvdiffError(f"ovdiff serve needs the ui extra ({e.name} is missing): pip install 'ovdiff[ui]'") from e
    from .ui.app import listen, make_app, run, sigterm_as_ctrl_c
    from .ui.session import DemoSession

    session = DemoSession(pipeline, max_pixels=max_pixels, max_classes=max_classes, build=build)
    sock = listen(host, port)
    with sigterm_as_ctrl_c():  # SIGTERM (a service manager, kill) stops it as Ctrl-C does
        if on_listen is not None:
            on_listen(*sock.getsockname()[:2])
        run(make_app(session, phrase), sock)


def score_summary(results: list[EvalResult]) -> dict:
    """Mean and σ over seeds of mIoU, pixel accuracy and each class's IoU (`eval.evaluate.aggregate`)."""
    from .eval.evaluate import aggregate

    return aggregate(results)


def paper_score(dataset: SegDataset) -> dict | None:
    """The paper's mIoU on `dataset` and its table, where the paper reports one."""
    from .eval.paper import paper_reference

    return paper_reference(dataset)


def serve_label_studio(
    pipeline: Any,
    host: str = "127.0.0.1",
    port: int = 9090,
    *,
    url: str | None = None,
    api_key: str | None = None,
    build: bool = True,
    phrase: Callable[[Exception], str] = str,
    on_listen: Callable[[str, int, str | None], None] | None = None,
) -> None:
    """`ovdiff label-studio`: `pipeline` as a Label Studio ML backend on host:port until Ctrl-C or SIGTERM
    (KeyboardInterrupt);
    url: the Label Studio images are read from (None: the one that connects), api_key its key; build as
    `serve_pipeline`'s; on_listen(host, port, server) once bound."""
    from .limits import in_range

    in_range("port", port)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        from .errors import OvdiffError

        raise OvdiffError(
            f"ovdiff label-studio needs the ui extra ({e.name} is missing): pip install 'ovdiff[ui,labelstudio]'"
        ) from e
    from .ui.app import listen, run, sigterm_as_ctrl_c
    from .ui.labelstudio import rle_encoder
    from .ui.labelstudio_app import LabelStudioBackend, make_app

    rle_encoder()
    backend = LabelStudioBackend(pipeline, url, api_key, build=build)
    sock = listen(host, port)
    with sigterm_as_ctrl_c():  # SIGTERM (a service manager, kill) stops it as Ctrl-C does
        if on_listen is not None:
            on_listen(*sock.getsockname()[:2], backend.server)
        run(make_app(backend, phrase), sock)
