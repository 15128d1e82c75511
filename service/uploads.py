"""Request bodies from untrusted clients: a size cap enforced while the body streams in, a time
limit on receiving an upload, and multipart forms validated into typed models.

Upload routes parse their form themselves (``read_form``) instead of declaring ``File()``
parameters, because FastAPI reads declared bodies before it runs dependencies: this way a
request is authenticated and given a work slot before a byte of its upload is stored.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from detector.errors import ClearanceError

M = TypeVar("M", bound=BaseModel)

FORM_OVERHEAD = 64 * 1024
"""Bytes allowed on top of the upload cap for the multipart framing and the text fields."""


class BodyTooLarge(HTTPException):
    """A request body over its cap. An ``HTTPException`` because it is raised inside the
    framework's own body reading, which passes only those through unchanged."""

    def __init__(self, limit: int, what: str):
        super().__init__(413, f"the request body is larger than the {_size(limit)} limit for {what}")


class UploadTimeout(ClearanceError):
    """The client took longer than the upload time limit to send its body."""


class BodyLimit:
    """ASGI middleware capping request bodies: ``upload_bytes`` for the upload routes
    (``upload_paths``, POST only) and ``other_bytes`` for any other request.

    Reading a body whose declared ``Content-Length`` is over the cap fails before a byte of it
    is read; a body that grows past its cap while streaming (chunked, or longer than declared)
    fails as soon as the cap is crossed. Either way with ``BodyTooLarge``, answered 413.
    """

    def __init__(self, app: ASGIApp, *, upload_paths: frozenset[str], upload_bytes: int, other_bytes: int):
        self.app = app
        self.upload_paths = upload_paths
        self.upload_bytes = upload_bytes
        self.other_bytes = other_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = scope["method"] == "POST" and scope["path"] in self.upload_paths
        limit = self.upload_bytes if upload else self.other_bytes
        what = "an audio upload" if upload else "this request"
        declared = Headers(scope=scope).get("content-length", "")
        declared_too_large = declared.isdigit() and int(declared) > limit
        received = 0

        async def counted() -> Message:
            nonlocal received
            if declared_too_large:
                raise BodyTooLarge(limit, what)
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit, what)
            return message

        await self.app(scope, counted, send)


@asynccontextmanager
async def read_form(request: Request, model: type[M], timeout_s: float) -> AsyncIterator[M]:
    """The request's multipart form validated as ``model``, its files open (spooled to disk
    past 1 MB) for the body of the ``async with``.

    Raises ``RequestValidationError`` (422) for missing or invalid fields, the framework's 400
    for a malformed multipart body, ``BodyTooLarge`` (413) and ``UploadTimeout`` (408).
    """
    try:
        async with asyncio.timeout(timeout_s):
            form = await request.form(max_files=1, max_fields=len(model.model_fields))
    except TimeoutError:
        raise UploadTimeout(f"the upload was not complete after {timeout_s:.0f} s") from None
    try:
        try:
            fields = model.model_validate(dict(form))
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                          for e in exc.errors(include_url=False, include_context=False)]) from None
        yield fields
    finally:
        await form.close()


def form_body(model: type[BaseModel]) -> dict:
    """``openapi_extra`` documenting ``model`` as the route's multipart/form-data body."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    schema["properties"] = {name: {**defs[p["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in p.items() if k != "$ref"}}
                            if "$ref" in p else p for name, p in schema["properties"].items()}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _size(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1024:.0f} KiB"
