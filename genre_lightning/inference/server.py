"""genre-serve's HTTP server: ``POST /predict``, ``GET /health`` and ``GET /`` (a page to drop a poster on).

Starlette on uvicorn (the ASGI toolkit and server FastAPI and LitServe are built on), imported here
only, so ``import genre_lightning.inference`` stays light. Every prediction goes through the
``Predictor``: an upload is decoded as a file is in training (``data/imageio.decode_rgb``), through the
checkpoint's evaluation transform, and a batch of uploads through ``Predictor.predict`` (probabilities,
top-k, the task's decisions), so the numbers are genre-predict's.

Dynamic batching: requests that arrive within ``batch_wait_ms`` of the first one run as one batch of
up to ``max_batch_size`` images, on one model thread; explanations run on that thread too.

Safe by default: the server binds 127.0.0.1 unless told otherwise; it reads nothing but request
bodies (never a path a client names); with an API key every ``/predict`` needs it (``X-API-Key`` or
``Authorization: Bearer``) or gets 401; a body over ``max_upload_mb`` is refused (413) from its
declared length, before it is read, or as soon as the bytes received pass the limit; each bad upload
gets a 4xx with a one-line reason (``{"error": ...}``) and the server keeps serving; at most
``max_pending`` requests are held at once (503 beyond), so memory stays bounded; SIGTERM (or
Ctrl+C) stops accepting connections, finishes the requests in flight, and exits 0.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from genre_lightning.data.imageio import UnreadableImage, decode_rgb, unexpected_error_reason
from genre_lightning.inference.predictor import GenrePrediction, Predictor
from genre_lightning.inference.server_batcher import Batcher
from genre_lightning.inference.server_requests import UploadError, flag, integer, read_upload
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)

API_KEY_ENV = "GENRE_SERVE_API_KEY"
PAGE = "serve_page.html"


@dataclass(frozen=True)
class ServeSettings:
    """How the server listens, batches and protects itself (``conf/serve.yaml``'s ``serve`` block)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_upload_mb: float = 20.0
    max_image_side: int = 8192
    batching: bool = True
    max_batch_size: int = 16
    batch_wait_ms: float = 10.0
    max_pending: int = 64
    decode_threads: int = 2
    top_k: int = 3
    explain_method: str = "gradcam"
    drain_timeout_s: float = 30.0
    access_log: bool = False

    def __post_init__(self) -> None:
        checks = {
            "max_upload_mb": (self.max_upload_mb > 0, "a positive number"),
            "max_image_side": (self.max_image_side >= 32, "an integer >= 32"),
            "max_batch_size": (self.max_batch_size >= 1, "an integer >= 1"),
            "batch_wait_ms": (self.batch_wait_ms >= 0, "a number >= 0"),
            "max_pending": (self.max_pending >= 1, "an integer >= 1"),
            "decode_threads": (self.decode_threads >= 1, "an integer >= 1"),
            "top_k": (self.top_k >= 1, "an integer >= 1"),
            "port": (0 <= self.port <= 65535, "0 (a free port) to 65535"),
            "drain_timeout_s": (self.drain_timeout_s > 0, "a positive number of seconds"),
        }
        for key, (valid, expected) in checks.items():
            if not valid:
                raise ConfigError(f"serve.{key}", getattr(self, key), expected)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


class GenreServer:
    """The server's state: the predictor, its settings, the batcher and the decode threads."""

    def __init__(self, predictor: Predictor, settings: ServeSettings) -> None:
        self.predictor, self.settings = predictor, settings
        self.api_key = settings.api_key
        self.decoders = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        self.batcher: Batcher | None = None
        self.pending = 0
        self.served = 0

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        size = self.settings.max_batch_size if self.settings.batching else 1
        self.batcher = Batcher(self.predictor, size, self.settings.batch_wait_ms / 1000 if size > 1 else 0.0)
        self.batcher.start()
        yield
        # uvicorn has finished the requests in flight (graceful shutdown) before this runs.
        await self.batcher.stop()
        self.decoders.shutdown(wait=True)

    def app(self) -> Starlette:
        routes = [
            Route("/", self.page, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/predict", self.predict, methods=["POST"]),
        ]
        return Starlette(routes=routes, lifespan=self.lifespan)

    async def page(self, request: Request) -> Response:
        return HTMLResponse(files("genre_lightning.inference").joinpath(PAGE).read_text(encoding="utf-8"))

    async def health(self, request: Request) -> Response:
        batches = self.batcher.batches if self.batcher else []
        return JSONResponse(
            {
                "status": "ok",
                "checkpoint": self.predictor.identity,
                "backend": self.predictor.backend,
                "precision": self.predictor.precision,
                "classes": self.predictor.classes,
                "multilabel": self.predictor.multilabel,
                "api_key_required": self.api_key is not None,
                "max_upload_mb": self.settings.max_upload_mb,
                "batching": {
                    "enabled": self.settings.batching,
                    "max_batch_size": self.settings.max_batch_size,
                    "batch_wait_ms": self.settings.batch_wait_ms,
                    "mean_recent_batch": sum(batches) / len(batches) if batches else None,
                },
                "pending": self.pending,
                "served": self.served,
            }
        )

    async def predict(self, request: Request) -> Response:
        try:
            self._authorize(request)
            if self.pending >= self.settings.max_pending:
                raise UploadError(503, f"busy: {self.pending} requests in progress (serve.max_pending); retry shortly")
            self.pending += 1
            try:
                return JSONResponse(await self._answer(request))
            finally:
                self.pending -= 1
        except UploadError as err:
            return JSONResponse({"error": err.reason}, status_code=err.status)

    async def _answer(self, request: Request) -> dict[str, Any]:
        explain = flag(request, "explain")
        top_k = integer(request, "top_k", self.settings.top_k, 1)
        data = await read_upload(request, self.settings.max_upload_bytes)
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(self.decoders, self.prepare, data)
        assert self.batcher is not None
        prediction = await self.batcher.predict(image)
        answer = prediction_json(prediction, self.predictor, top_k)
        if explain:
            answer["explanation"] = await self.batcher.on_model_thread(self.explanation, image, prediction.genre)
        self.served += 1
        return answer

    def prepare(self, data: bytes) -> torch.Tensor:
        """Upload bytes -> the network's input, exactly as genre-predict decodes a file: 422, with the
        intake's reason, for what genre-data would refuse (no image, corrupt, too small, ...)."""
        try:
            image = decode_rgb(
                data, "upload", max_side=self.settings.max_image_side, min_side=self.predictor.min_image_side
            )
            return self.predictor.eval_transform(image)
        except UnreadableImage as err:
            raise UploadError(422, str(err)) from None
        except Exception as err:  # a decoder bug: this upload fails, the server goes on
            raise UploadError(422, unexpected_error_reason(err)) from None

    def explanation(self, image: torch.Tensor, genre: str) -> dict[str, Any]:
        from genre_lightning.inference.explain import explain

        (result,) = explain(self.predictor, image, genres=[genre], method=self.settings.explain_method)
        buffer = io.BytesIO()
        result.overlay(genre).save(buffer, format="PNG")
        return {
            "genre": genre,
            "method": self.settings.explain_method,
            "png_base64": base64.b64encode(buffer.getvalue()).decode("ascii"),
        }

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        sent = request.headers.get("x-api-key", "")
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            sent = sent or bearer[7:].strip()
        if not hmac.compare_digest(sent.encode(), self.api_key.encode()):
            raise UploadError(401, "missing or wrong API key: send it in the X-API-Key header")


def prediction_json(prediction: GenrePrediction, predictor: Predictor, top_k: int) -> dict[str, Any]:
    """What ``POST /predict`` answers: the top genre, the top ``top_k``, every genre's probability,
    the decided genres (multi-label: those above their thresholds), and the checkpoint's identity."""
    thresholds = predictor.task.thresholds()
    return {
        "genre": prediction.genre,
        "top_k": [{"genre": genre, "probability": p} for genre, p in prediction.top_k[:top_k]],
        "probabilities": prediction.probabilities,
        "genres": prediction.genres,
        "multilabel": predictor.multilabel,
        "thresholds": dict(zip(predictor.classes, thresholds.tolist(), strict=True))
        if thresholds is not None
        else None,
        "checkpoint": predictor.identity,
    }


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (``port=0``: a free port the system picks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError("serve.port", port, f"a free port on {host} ({err.strerror})") from None
    sock.listen(2048)
    return sock


def run_server(predictor: Predictor, settings: ServeSettings, announce: Callable[[str], None] = print) -> None:
    """Serve until SIGTERM or Ctrl+C; finish the requests in flight and return (the command exits 0)."""
    import uvicorn

    server = GenreServer(predictor, settings)
    sock = listening_socket(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        server.app(),
        log_config=None,  # keep the command's logging (Hydra's) as it is
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.drain_timeout_s,
        lifespan="on",
    )
    # uvicorn finishes the requests in flight on SIGTERM/SIGINT, then raises the signal again for the
    # handler it found: a no-op one here, so the command returns normally and exits 0.
    for received in (signal.SIGTERM, signal.SIGINT):
        signal.signal(received, lambda *_: None)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    batching = (
        f"batches of up to {settings.max_batch_size} images, {settings.batch_wait_ms:g} ms wait"
        if settings.batching
        else "no batching"
    )
    announce(
        f"genre-serve: {predictor.identity.get('checkpoint', 'model')} on {url} ({batching}; "
        f"backend {predictor.backend}, precision {predictor.precision}; "
        f"API key {'required' if settings.api_key else 'not required'})"
    )
    uvicorn.Server(config).run(sockets=[sock])
    announce(f"genre-serve: stopped after {server.served} predictions")
