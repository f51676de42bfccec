"""The HTTP layer of `ovdiff serve` (Starlette): each route parses its request, makes one `DemoSession`
call and answers JSON; a user error is a 400 (413 for an oversized upload) with its one line.

GET /                          the page (page.html)
GET /api/examples              the example pictures (ui/examples.py); GET /api/examples/SEED.png one of them
POST /api/segment              multipart: image (file), classes (comma-separated), job (optional token)
                               → DemoSession.segment
GET /api/progress?job=         → DemoSession.progress, polled while a segment request builds its classes
GET /api/explain?id=&x=&y=     → DemoSession.explain
GET /api/mask?id=              the label map, a palette PNG (DemoSession.mask_png), as a download
GET /api/results?id=&format=   json or coco (DemoSession.results), as a download
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from importlib import resources
from typing import TYPE_CHECKING

from ..errors import OvdiffError

FORM_SLACK = 16 * 1024  # a form's bytes beyond its picture: part headers and the class names


class TooLarge(Exception):
    """A request body that passed the byte limit while it was arriving; seen: the bytes read by then.
    (Starlette's form parser closes its temporary files on any error from the stream.)"""

    def __init__(self, seen: int):
        super().__init__(f"over {seen:,} bytes")
        self.seen = seen


async def at_most(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """`stream`'s chunks, counted as they arrive: past `limit` bytes it stops with TooLarge. A chunked
    body declares no length, so this is what bounds it (memory and temporary disk alike)."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise TooLarge(seen)
        yield chunk


if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .session import DemoSession


def make_app(session: DemoSession, phrase: Callable[[OvdiffError], str] = str) -> Starlette:
    """The app serving `session`; `phrase` words a library error for the user (the CLI passes its own)."""
    from python_multipart.multipart import parse_options_header
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from .examples import example_png, examples

    page_html = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    def refuse(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def answer(call, *args) -> JSONResponse:
        try:
            return JSONResponse(await run_in_threadpool(call, *args))
        except OvdiffError as e:
            return refuse(phrase(e))

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(page_html)

    async def example_list(request: Request) -> JSONResponse:
        return JSONResponse(examples())

    async def example(request: Request) -> Response:
        try:
            return Response(await run_in_threadpool(example_png, request.path_params["seed"]), media_type="image/png")
        except OvdiffError as e:
            return refuse(phrase(e), 404)

    async def progress(request: Request) -> JSONResponse:
        return JSONResponse(session.progress(request.query_params.get("job", "")))

    def download(name: str) -> dict[str, str]:
        return {"Content-Disposition": f'attachment; filename="{name}"'}

    async def mask(request: Request) -> Response:
        token = request.query_params.get("id", "")
        try:
            png = await run_in_threadpool(session.mask_png, token)
        except OvdiffError as e:
            return refuse(phrase(e))
        return Response(png, media_type="image/png", headers=download(f"ovdiff-{token[:8]}-mask.png"))

    async def results(request: Request) -> JSONResponse:
        token, fmt = request.query_params.get("id", ""), request.query_params.get("format", "json")
        try:
            body = await run_in_threadpool(session.results, token, fmt)
        except OvdiffError as e:
            return refuse(phrase(e))
        name = f"ovdiff-{token[:8]}-{'coco_results' if fmt == 'coco' else 'results'}.json"
        return JSONResponse(body, headers=download(name))

    async def segment(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > session.max_bytes + FORM_SLACK:
            return refuse(
                f"the upload is {int(declared):,} bytes, above this server's limit of {session.max_bytes:,}", 413
            )
        if parse_options_header(request.headers.get("content-type", ""))[0] != b"multipart/form-data":
            return refuse("send the picture and the classes as a multipart form, as the page does")
        limit = session.max_bytes + FORM_SLACK
        parser = MultiPartParser(
            request.headers,
            at_most(request.stream(), limit),
            max_files=1,
            max_fields=3,
            max_part_size=session.max_bytes,
        )
        try:
            form = await parser.parse()
        except TooLarge as e:
            return refuse(
                f"the upload is over {e.seen:,} bytes, above this server's limit of {session.max_bytes:,}", 413
            )
        except MultiPartException as e:
            return refuse(f"unreadable upload: {e.message}")
        try:
            upload, classes, job = form.get("image"), form.get("classes"), form.get("job")
            data = await upload.read() if hasattr(upload, "read") else b""
        finally:
            await form.close()
        if not isinstance(classes, str):
            return refuse("no classes: type comma-separated class names, e.g. kite, ball, sky")
        job = job if isinstance(job, str) and 0 < len(job) <= 64 else None  # the page's token to poll progress with
        return await answer(session.segment, data, classes, job)

    async def explain(request: Request) -> JSONResponse:
        q = request.query_params
        x, y = q.get("x", ""), q.get("y", "")
        if not (x.isascii() and x.isdigit() and y.isascii() and y.isdigit() and q.get("id")):
            return refuse("explain needs id, x and y (pixel coordinates, whole numbers from 0)")
        return await answer(session.explain, q["id"], int(x), int(y))

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/examples", example_list),
            Route("/api/examples/{seed:int}.png", example),
            Route("/api/segment", segment, methods=["POST"]),
            Route("/api/progress", progress),
            Route("/api/explain", explain),
            Route("/api/mask", mask),
            Route("/api/results", results),
        ]
    )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: any free port), or an OvdiffError saying why not."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except (OSError, OverflowError) as e:
        raise OvdiffError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from e
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block, as Ctrl-C does: one way to stop, whoever asks.
    (While uvicorn serves it catches both, answers the requests in flight, then raises the caught signal
    again with this handler back in place.)"""

    def stop(signum: int, frame) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def run(app: Starlette, sock: socket.socket) -> None:
    """Serve `app` on `sock` until Ctrl-C or SIGTERM, then raise KeyboardInterrupt (uvicorn, access log off)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
    if server.should_exit:
        # uvicorn stops on the signal, then passes it on to the handler the process had. Where SIGINT was ignored
        # when the process started (`ovdiff serve &` in a script) nothing is raised: stopped by Ctrl-C all the same.
        raise KeyboardInterrupt
