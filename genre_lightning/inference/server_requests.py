"""What genre-serve reads of a request: the image bytes (a raw body or a multipart form's ``file``
field, its type checked before the body is read, refused past the size limit) and the query flags, each
refusal an ``UploadError`` with its HTTP status and one-line reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

RAW_TYPES = ("application/octet-stream",)  # besides image/*: bytes sent as they are (curl --data-binary)
MULTIPART = "multipart/form-data"


class UploadError(Exception):
    """A request the server refuses: its HTTP status and the one-line reason sent back."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


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
        raise UploadError(400, f"malformed multipart body: {one_line(err)}") from None
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


def flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise UploadError(400, f"{name}={value!r} is not valid: expected true or false")
    return value in ("true", "1", "yes")


def integer(request: Request, name: str, default: int, lowest: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit() or int(value) < lowest:
        raise UploadError(400, f"{name}={value!r} is not valid: expected an integer >= {lowest}")
    return int(value)


def one_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
