"""Requests from untrusted clients: a time limit on a request's head, a size cap enforced while
the body streams in, time limits on receiving an upload, a cap on the uploads one API key sends
at once, and multipart forms validated into typed models.

Upload routes parse their form themselves (``Uploads.read_form``) instead of declaring ``File()``
parameters, because FastAPI reads declared bodies before it runs dependencies: this way a
request is authenticated and counted against its key before a byte of its upload is stored.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import asynccontextmanager
from typing import AsyncIterator, TypeVar

import h11
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from detector.errors import ClearanceError
from service.settings import Settings

M = TypeVar("M", bound=BaseModel)

FORM_OVERHEAD = 64 * 1024
"""Bytes allowed on top of the upload cap for the multipart framing and the text fields."""


class BodyTooLarge(HTTPException):
    """A request body over its cap. An ``HTTPException`` because it is raised inside the
    framework's own body reading, which passes only those through unchanged."""

    def __init__(self, limit: int, what: str):
        super().__init__(413, f"the request body is larger than the {_size(limit)} limit for {what}")


class UploadTimeout(ClearanceError):
    """The client took longer than the upload time limit to send its body, or paused too long."""


class TooManyUploads(ClearanceError):
    """An API key is already sending as many uploads as it may at once."""


class HeadTimeoutH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection that has not sent a complete request
    head within ``head_timeout_s`` seconds of opening or of its previous response. uvicorn has no
    such limit: its keep-alive timer stops at the first byte, so a client that sends part of a
    head and then nothing would hold the connection for ever."""

    def __init__(self, *args, head_timeout_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        self.head_timer = self.loop.call_later(self.head_timeout_s, self._head_overdue)

    def _head_overdue(self) -> None:
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():   # no complete head yet
            self.transport.close()


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


class Uploads:
    """The uploads of one route: how many each API key is sending (at most
    ``max_uploads_per_key``) and the time limits on receiving them (``upload_timeout_s`` in all,
    ``upload_idle_timeout_s`` without a byte). A client that stalls its uploads thus holds at most
    its own few of them, and no work slot: those are taken once an upload has arrived.

    Counted on the event loop's thread only, so no lock.
    """

    def __init__(self, settings: Settings):
        self.per_key = settings.max_uploads_per_key
        self.timeout_s = settings.upload_timeout_s
        self.idle_s = settings.upload_idle_timeout_s
        self.receiving: Counter[str] = Counter()     # uploads being received, by API key id

    @asynccontextmanager
    async def read_form(self, request: Request, model: type[M], key_id: str) -> AsyncIterator[M]:
        """The request's multipart form validated as ``model``, its files open (spooled to disk
        past 1 MB) for the body of the ``async with``; the form counts against ``key_id`` until
        it has arrived.

        Raises ``TooManyUploads`` (429), ``RequestValidationError`` (422) for missing or invalid
        fields, the framework's 400 for a malformed multipart body, ``BodyTooLarge`` (413) and
        ``UploadTimeout`` (408).
        """
        if self.receiving[key_id] >= self.per_key:
            raise TooManyUploads(f"this key is already sending {self.per_key} uploads, the most it may send at "
                                 "once; wait for one to finish")
        self.receiving[key_id] += 1
        try:
            form = await self._receive(request, len(model.model_fields))
        finally:
            self.receiving[key_id] -= 1
        try:
            try:
                fields = model.model_validate(dict(form))
            except ValidationError as exc:
                raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                              for e in exc.errors(include_url=False, include_context=False)]) from None
            yield fields
        finally:
            await form.close()

    async def _receive(self, request: Request, max_fields: int) -> FormData:
        """The form, received within the time limits: the deadline moves on with each part of
        the body that arrives, never past ``timeout_s`` from now."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.timeout_s
        try:
            async with asyncio.timeout(min(end, loop.time() + self.idle_s)) as deadline:
                async def receive() -> Message:
                    message = await request.receive()
                    deadline.reschedule(min(end, loop.time() + self.idle_s))
                    return message

                return await Request(request.scope, receive).form(max_files=1, max_fields=max_fields)
        except TimeoutError:
            if deadline.when() >= end:
                raise UploadTimeout(f"the upload was not complete after {self.timeout_s:.0f} s") from None
            raise UploadTimeout(f"no data of the upload arrived for {self.idle_s:.0f} s") from None


def form_body(model: type[BaseModel]) -> dict:
    """``openapi_extra`` documenting ``model`` as the route's multipart/form-data body."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    schema["properties"] = {name: {**defs[p["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in p.items() if k != "$ref"}}
                            if "$ref" in p else p for name, p in schema["properties"].items()}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _size(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1024:.0f} KiB"
