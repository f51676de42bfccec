"""The HTTP layer of `ovdiff serve` (Starlette): each route parses its request, makes one `DemoSession`
call and answers JSON; a user error is a 400 (413 for an oversized upload) with its one line.

GET /                          the page (page.html)
POST /api/segment              multipart: image (file), classes (comma-separated) → DemoSession.segment
GET /api/explain?id=&x=&y=     → DemoSession.explain
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING

from ..errors import OvdiffError

FORM_SLACK = 16 * 1024  # a form's bytes beyond its picture: part headers and the class names

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .session import DemoSession


def make_app(session: DemoSession, phrase: Callable[[OvdiffError], str] = str) -> Starlette:
    """The app serving `session`; `phrase` words a library error for the user (the CLI passes its own)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

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

    async def segment(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > session.max_bytes + FORM_SLACK:
            return refuse(
                f"the upload is {int(declared):,} bytes, above this server's limit of {session.max_bytes:,}", 413
            )
        try:
            async with request.form(max_files=1, max_fields=2, max_part_size=session.max_bytes) as form:
                upload, classes = form.get("image"), form.get("classes")
                data = await upload.read() if hasattr(upload, "read") else b""
        except (MultiPartException, HTTPException) as e:
            return refuse(f"unreadable upload: {getattr(e, 'message', None) or getattr(e, 'detail', None) or e}")
        if not isinstance(classes, str):
            return refuse("no classes: type comma-separated class names, e.g. kite, ball, sky")
        return await answer(session.segment, data, classes)

    async def explain(request: Request) -> JSONResponse:
        q = request.query_params
        x, y = q.get("x", ""), q.get("y", "")
        if not (x.isascii() and x.isdigit() and y.isascii() and y.isdigit() and q.get("id")):
            return refuse("explain needs id, x and y (pixel coordinates, whole numbers from 0)")
        return await answer(session.explain, q["id"], int(x), int(y))

    return Starlette(
        routes=[Route("/", page), Route("/api/segment", segment, methods=["POST"]), Route("/api/explain", explain)]
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


def run(app: Starlette, sock: socket.socket) -> None:
    """Serve `app` on `sock` until Ctrl-C (uvicorn, access log off)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
