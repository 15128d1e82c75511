"""Errors of the HTTP service, the one mapping of Clearance's errors to HTTP statuses
(``status_of``, shared with the dashboard's HTML pages), and their translation into
``application/problem+json`` (RFC 9457): ``{"type", "title", "status", "detail"}``, plus
``errors`` for invalid requests.

Everything that goes wrong in a request ends here: Clearance's own errors (``ClearanceError``
and subclasses, by the table ``STATUS``), the framework's (unknown route 404, wrong method
405, malformed multipart 400, body over its cap 413), invalid parameters (422) and bugs (500).
"""
from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from detector.errors import AudioError, Busy, ClearanceError, Conflict, InvalidRequest, NotFound, Unavailable
from service.auth import Forbidden, Unauthenticated
from service.uploads import TooManyUploads, UploadTimeout


STATUS: list[tuple[type[ClearanceError], int, str | None]] = [   # (error, status, title); the first match wins
    (Unauthenticated, 401, None),
    (Forbidden, 403, None),
    (NotFound, 404, None),
    (UploadTimeout, 408, None),
    (Conflict, 409, None),
    (InvalidRequest, 422, "Invalid request"),
    (TooManyUploads, 429, None),
    (Busy, 503, None),
    (Unavailable, 503, None),
]
"""Other ``ClearanceError``s are answered 500; titles default to the status's phrase."""


def status_of(exc: ClearanceError) -> tuple[int, str | None, dict[str, str]]:
    """The HTTP status, title (None: the status's phrase) and headers that answer ``exc``, over
    the API and in the dashboard alike."""
    if isinstance(exc, AudioError):
        return (413, "Audio too large", {}) if exc.too_large else (422, "Unreadable audio", {})
    status, title = next(((code, title) for cls, code, title in STATUS if isinstance(exc, cls)), (500, None))
    headers = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, Busy) and exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    return status, title, headers


def problem(status: int, detail: str, *, title: str | None = None, headers: dict[str, str] | None = None,
            **extensions) -> JSONResponse:
    """The one error response of the service."""
    body = {"type": "about:blank", "title": title or HTTPStatus(status).phrase, "status": status, "detail": detail,
            **extensions}
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/problem+json")


async def clearance_error(_request: Request, exc: ClearanceError) -> JSONResponse:
    status, title, headers = status_of(exc)
    return problem(status, str(exc), title=title, headers=headers)


async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    return problem(exc.status_code, str(exc.detail), headers=exc.headers)


async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
    return problem(422, detail, title="Invalid request", errors=errors)


async def client_gone(_request: Request, _exc: ClientDisconnect) -> JSONResponse:
    # nobody reads this answer; it keeps a dropped upload out of the error log
    return problem(400, "the client closed the connection before the request body was complete")


async def internal_error(_request: Request, _exc: Exception) -> JSONResponse:
    return problem(500, "an internal error occurred; it is in the server's log")


def install(app: FastAPI) -> None:
    """Route every error of ``app`` through ``problem``."""
    app.add_exception_handler(ClearanceError, clearance_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, internal_error)
