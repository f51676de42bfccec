"""`ovdiff label-studio`: ovdiff as a Label Studio ML backend (Starlette), on one `api.Pipeline`.

Label Studio's ML-backend protocol: GET /health (is it up), POST /setup (a project connects: its labeling
config; answers the model version), POST /predict (tasks → one prediction each), POST /webhook (Label
Studio's events; ovdiff does not train, it acknowledges them), GET /versions. A user error is a 400 with
its one line (also printed, since Label Studio keeps it in its log only).
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import OvdiffError
from .labelstudio import LabelingConfig, image_url, model_version, origin, parse_config, rle_encoder, task_prediction

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ..results import Vocabulary

MAX_BODY_BYTES = 16 * 1024 * 1024  # a /predict request: the tasks' data, not their images
MAX_IMAGE_BYTES = 64 * 1024 * 1024
FETCH_TIMEOUT_S = 30.0


class SameOrigin(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only on the server it came from: Label Studio may not send ovdiff (and its key) elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if origin(newurl) != origin(req.full_url):
            raise OvdiffError(
                f"refused to follow {req.full_url} to {newurl[:120]!r}: ovdiff reads from Label Studio only"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class LabelStudioBackend:
    """The backend's state: the pipeline, the Label Studio server it reads images from, the vocabularies.

    server/token: Label Studio's URL and API key (LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY); where they are
    not set, those Label Studio sends in /setup (hostname, access_token) are used. build=False refuses
    classes missing from the cache. Predictions are serialised: the models are shared.
    """

    def __init__(
        self,
        pipeline: Any,  # an api.Pipeline (which sits above this module)
        server: str | None = None,
        token: str | None = None,
        build: bool = True,
        max_image_bytes: int = MAX_IMAGE_BYTES,
    ):
        self.pipeline, self.build, self.max_image_bytes = pipeline, build, max_image_bytes
        self.server = server or os.environ.get("LABEL_STUDIO_URL") or None
        self.token = token or os.environ.get("LABEL_STUDIO_API_KEY") or None
        self._told = self.server is not None  # the operator's server wins over what /setup says
        self._lock = threading.Lock()
        self._vocabs: dict[tuple[str, ...], Vocabulary] = {}
        self.versions: list[str] = []

    def version(self, config: LabelingConfig) -> str:
        p = self.pipeline
        return model_version(p.preset.name, p.seed, p.proto_config.extractor, config.prompts)

    def setup(self, payload: dict) -> dict:
        """A project connects: check its config, learn the server to read images from (unless set)."""
        config = parse_config(payload.get("schema") or payload.get("label_config"))
        rle_encoder()  # a missing label-studio-sdk is said at connection, not at the first prediction
        if not self._told and payload.get("hostname"):
            self.server, self.token = str(payload["hostname"]), payload.get("access_token") or self.token
        version = self.version(config)
        if version not in self.versions:
            self.versions.append(version)
        return {"model_version": version}

    def fetch(self, ref: str) -> bytes:
        """A task's image from Label Studio (its API key sent), at most max_image_bytes."""
        url = image_url(ref, self.server)
        headers = {"Authorization": f"Token {self.token}"} if self.token else {}
        try:
            opener = urllib.request.build_opener(SameOrigin)
            with opener.open(urllib.request.Request(url, headers=headers), timeout=FETCH_TIMEOUT_S) as r:
                data = r.read(self.max_image_bytes + 1)
        except urllib.error.HTTPError as e:
            hint = " (set LABEL_STUDIO_API_KEY to a Label Studio access token)" if e.code in (401, 403) else ""
            raise OvdiffError(f"Label Studio answered {e.code} {e.reason} for {url}{hint}") from e
        except (urllib.error.URLError, OSError) as e:
            raise OvdiffError(f"cannot fetch {url}: {getattr(e, 'reason', None) or e}") from e
        if len(data) > self.max_image_bytes:
            raise OvdiffError(f"{url} is over {self.max_image_bytes:,} bytes, this backend's limit")
        return data

    def read(self, data: bytes, url: str) -> np.ndarray:
        """Image bytes → HxWx3 uint8 RGB, as `ovdiff segment` reads files (EXIF orientation applied)."""
        from PIL import Image, UnidentifiedImageError

        from ..inputs import as_rgb

        try:
            with Image.open(io.BytesIO(data)) as im:
                return as_rgb(im)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise OvdiffError(f"{url} is not a picture Pillow can read ({type(e).__name__})") from e

    def vocabulary(self, config: LabelingConfig) -> Vocabulary:
        key = tuple(config.prompts)
        if key not in self._vocabs:
            self._vocabs[key] = self.pipeline.vocabulary(key, build=self.build)
        return self._vocabs[key]

    def predict(self, payload: dict) -> dict:
        """Label Studio's tasks → {"results": one prediction per task, in order, "model_version"}."""
        config = parse_config(payload.get("label_config") or payload.get("schema"))
        tasks = payload.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise OvdiffError("no tasks: /predict takes {'tasks': [{'id': ..., 'data': {...}}], 'label_config': ...}")
        version = self.version(config)
        out = []
        with self._lock:
            vocab = self.vocabulary(config)
            for task in tasks:
                data = task.get("data") or {}
                missing = [k for k in config.data_keys if k not in data]
                if missing:
                    raise OvdiffError(f"task {task.get('id')} has no {missing[0]!r} in its data")
                results = {
                    k: self.pipeline.segment(self.read(self.fetch(data[k]), data[k]), vocab) for k in config.data_keys
                }
                out.append(task_prediction(config, results, version))
        return {"results": out, "model_version": version}


def make_app(backend: LabelStudioBackend, phrase: Callable[[OvdiffError], str] = str) -> Starlette:
    """The ML-backend app serving `backend`; `phrase` words a library error for the user (the CLI passes its own)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def refuse(message: str, status: int = 400) -> JSONResponse:
        print(f"ovdiff label-studio: {message}", file=sys.stderr, flush=True)
        return JSONResponse({"status": "ERROR", "error": message}, status_code=status)

    async def body(request: Request) -> dict:
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise OvdiffError(
                f"the request is {int(declared):,} bytes, above this backend's limit of {MAX_BODY_BYTES:,}"
            )
        try:
            payload = json.loads(await request.body() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise OvdiffError(f"the request is not JSON ({e})") from e
        if not isinstance(payload, dict):
            raise OvdiffError("the request is JSON but not an object")
        return payload

    def handler(call: Callable[[dict], dict]):
        async def route(request: Request) -> JSONResponse:
            try:
                return JSONResponse(await run_in_threadpool(call, await body(request)))
            except OvdiffError as e:
                return refuse(phrase(e))

        return route

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "UP", "model_class": "ovdiff", "preset": backend.pipeline.preset.name})

    async def versions(request: Request) -> JSONResponse:
        return JSONResponse({"versions": backend.versions})

    def webhook(payload: dict) -> dict:
        return {"action": payload.get("action"), "status": "ignored: ovdiff does not train from annotations"}

    async def webhook_route(request: Request) -> JSONResponse:
        try:
            return JSONResponse(webhook(await body(request)), status_code=201)
        except OvdiffError as e:
            return refuse(phrase(e))

    return Starlette(
        routes=[
            Route("/", health),
            Route("/health", health),
            Route("/versions", versions),
            Route("/setup", handler(backend.setup), methods=["POST"]),
            Route("/predict", handler(backend.predict), methods=["POST"]),
            Route("/webhook", webhook_route, methods=["POST"]),
        ]
    )
