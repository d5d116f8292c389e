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
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from genre_lightning.data.imageio import UnreadableImage, decode_rgb, unexpected_error_reason
from genre_lightning.inference.predictor import GenrePrediction, Predictor
from genre_lightning.utils.errors import ConfigError

log = logging.getLogger(__name__)

API_KEY_ENV = "GENRE_SERVE_API_KEY"
RAW_TYPES = ("application/octet-stream",)  # besides image/*: bytes sent as they are (curl --data-binary)
MULTIPART = "multipart/form-data"
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


class UploadError(Exception):
    """A request the server refuses: its HTTP status and the one-line reason sent back."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class Batcher:
    """Dynamic batching on one model thread: the first waiting image opens a batch, which takes every
    image arriving within ``wait_s`` (up to ``max_batch_size``) and runs as one forward pass."""

    def __init__(self, predictor: Predictor, max_batch_size: int, wait_s: float) -> None:
        self.predictor = predictor
        self.max_batch_size, self.wait_s = max_batch_size, wait_s
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
        self.batches: list[int] = []  # sizes of the latest batches (for /health)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.model_thread.shutdown(wait=True)

    async def predict(self, image: torch.Tensor) -> GenrePrediction:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, future))
        return await future

    async def on_model_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function`` between batches (explanations: backward hooks on the one network)."""
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, function, *args)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(waiting) < self.max_batch_size:
                try:
                    waiting.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time())))
                except TimeoutError:
                    break
            images = torch.stack([image for image, _ in waiting])
            try:
                results = await self.on_model_thread(self._predict, images)
            except Exception as err:  # a model failure answers these requests (500), the server goes on
                log.exception("Prediction failed for a batch of %d images", len(waiting))
                results = [err] * len(waiting)
            self.batches = (self.batches + [len(waiting)])[-100:]
            for (_, future), result in zip(waiting, results, strict=True):
                if future.done():  # the client went away
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _predict(self, images: torch.Tensor) -> list[GenrePrediction]:
        classes = len(self.predictor.classes)
        return self.predictor.predict(images, top_k=classes, batch_size=len(images))


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
        explain = _flag(request, "explain")
        top_k = _integer(request, "top_k", self.settings.top_k, 1)
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


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes of a request: a raw body (``image/*`` or ``application/octet-stream``) or the
    ``file`` field of a multipart form. The content type is checked before the body is read, and the
    body is refused once it passes ``limit`` bytes (at once when its declared length does)."""
    content_type = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if not (_image_type(content_type) or content_type == MULTIPART):
        raise UploadError(415, f"unsupported content type {content_type}: {_WHAT_TO_SEND}")
    body = await _read_body(request, limit)
    if content_type != MULTIPART:
        return body
    replay = Request(request.scope, receive=_replay(body))
    try:
        form = await replay.form(max_files=1, max_fields=8)
    except Exception as err:  # python-multipart's parse errors, and max_files/max_fields
        raise UploadError(400, f"malformed multipart body: {_one_line(err)}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise UploadError(400, f"the multipart form has no 'file' field: {_WHAT_TO_SEND}")
    part_type = (upload.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if not _image_type(part_type):
        raise UploadError(415, f"unsupported content type {part_type} of the 'file' field: {_WHAT_TO_SEND}")
    return await upload.read()


_WHAT_TO_SEND = "send image bytes (image/*, application/octet-stream) or multipart/form-data with a 'file' field"


def _image_type(content_type: str) -> bool:
    return content_type.startswith("image/") or content_type in RAW_TYPES


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = f"upload too large: over serve.max_upload_mb ({limit / 2**20:g} MB)"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadError(413, too_large)  # refused before a byte of the body is read
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked body (no declared length) that keeps coming
            raise UploadError(413, too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(body: bytes) -> Callable[[], Any]:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise UploadError(400, f"{name}={value!r} is not valid: expected true or false")
    return value in ("true", "1", "yes")


def _integer(request: Request, name: str, default: int, lowest: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit() or int(value) < lowest:
        raise UploadError(400, f"{name}={value!r} is not valid: expected an integer >= {lowest}")
    return int(value)


def _one_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


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
