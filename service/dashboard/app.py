"""The review dashboard: server-rendered pages under ``/review/`` for legal reviewers.

A sub-application mounted by ``service/api.py``, assembled here from one router per page group:
``signin.py`` (sessions, ``sessions.py``), ``checks.py`` (the queue, a check, its verdicts and
report), ``audio.py`` (a check's output and reference excerpts) and ``catalog.py`` (tracks and
their rights); what they share is in ``pages.py``. Pages need a session; every POST needs the
session's CSRF token. Errors become an HTML page with the right status, made in ``refused_page``.
"""
from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from detector.errors import AudioError, ClearanceError
from service.dashboard import audio, catalog, checks, signin
from service.dashboard.errors import Refused, SignInRequired
from service.dashboard.pages import HERE, render, session_of
from service.engine import Engine
from service.problems import status_of

# Pages may load only their own scripts, styles (wavesurfer adds inline ones), audio and images,
# and may not be framed, so a verdict button cannot be clicked through another site.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; media-src 'self' blob:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def create_dashboard(engine: Engine) -> FastAPI:
    app = FastAPI(title="Clearance review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.excerpts = audio.excerpt_pool()
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.middleware("http")(security_headers)
    for error, handler in ERROR_PAGES.items():
        app.add_exception_handler(error, handler)
    for group in (signin, checks, audio, catalog):
        app.include_router(group.router)
    return app


async def security_headers(request: Request, call_next):
    response = await call_next(request)
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    return response


# --- errors: an HTML page with the status, or the sign-in page ------------------------------
async def to_sign_in(request: Request, _exc: SignInRequired):
    root = request.scope["root_path"]
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = f"{root}/sign-in" + (f"?next={quote(here)}" if request.method == "GET" else "")
    return RedirectResponse(target, status_code=303)


async def refused_page(request: Request, exc: Refused):
    return render(request, "error.html", session_of(request), exc.status, status=exc.status, message=exc.message)


async def clearance_error(request: Request, exc: ClearanceError):     # NotFound, Conflict, Busy…
    status, _title, headers = status_of(exc)        # the status the API answers (service/problems.py)
    response = await refused_page(request, Refused(status, str(exc)))
    response.headers.update(headers)
    return response


async def audio_error(request: Request, exc: AudioError):       # a catalog reference: the server's fault
    return await refused_page(request, Refused(500, f"the audio cannot be read: {exc}"))


async def http_error(request: Request, exc: HTTPException):      # no such page (404), wrong method (405)
    response = await refused_page(request, Refused(exc.status_code, str(exc.detail)))
    response.headers.update(exc.headers or {})
    return response


async def invalid(request: Request, exc: RequestValidationError):
    return await refused_page(request, Refused(422, "; ".join(
        f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())))


ERROR_PAGES = {SignInRequired: to_sign_in, Refused: refused_page, ClearanceError: clearance_error,
               AudioError: audio_error, HTTPException: http_error, RequestValidationError: invalid}
