"""The review dashboard: server-rendered pages under ``/review/`` for legal reviewers.

A sub-application mounted by ``service/api.py``. Pages need a session (``sessions.py``); every
POST needs the session's CSRF token. Errors become an HTML page with the right status, made
in ``refused_page``.
"""
from __future__ import annotations

import mimetypes
from datetime import date, datetime, time, timedelta, timezone
from enum import Enum
from pathlib import Path
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from detector.errors import AudioError
from detector.policy import Rights
from index.reviews import UNREVIEWED, QueueFilter, Review, ReviewConflict
from index.store import CatalogError, now
from service.auth import Forbidden, Role, Unauthenticated, authorize
from service.dashboard import evidence
from service.dashboard.errors import Refused, SignInRequired
from service.dashboard.sessions import (DASHBOARD_ROLES, SESSION_COOKIE, SIGN_IN_COOKIE, Session, close_session,
                                        current_session, new_token, open_session, verify_csrf)
from service.engine import Engine
from service.pool import Busy, WorkPool

HERE = Path(__file__).resolve().parent
MAX_TEXT = 4000              # characters of a reason or note
MAX_PAGE = 10 ** 6           # of the review queue; a larger number is refused, not sent to the database
EXCERPT_WORKERS = 2          # reference excerpts decoded at once (threads) ...
EXCERPT_QUEUE = 30           # ... and waiting; beyond, reviewers are answered 503


class Verdict(str, Enum):
    """What a reviewer decides about a check, and the review state it leaves the check in."""

    confirm = "confirm"      # confirm the block
    override = "override"    # override to allow: needs a reason
    escalate = "escalate"    # hand to counsel

    @property
    def state(self) -> str:
        return {"confirm": "blocked", "override": "allowed", "escalate": "escalated"}[self.value]


STATES = [UNREVIEWED, *(v.state for v in Verdict)]
DECISIONS = ["block", "review", "allow"]

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


def _when(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clock(seconds: float) -> str:
    """Seconds as m:ss.s."""
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(when=_when, clock=_clock)


def _text(value: str, what: str) -> str:
    value = value.strip()
    if len(value) > MAX_TEXT:
        raise Refused(400, f"the {what} is longer than {MAX_TEXT} characters")
    return value


def _day(value: str, what: str, later: int = 0) -> datetime | None:
    """The midnight (UTC) ``later`` days after date ``value``; None for no date."""
    if not value:
        return None
    try:
        return datetime.combine(date.fromisoformat(value) + timedelta(days=later), time(), timezone.utc)
    except ValueError:
        raise Refused(400, f"the {what} date '{value}' is not a date like 2026-01-31") from None
    except OverflowError:
        raise Refused(400, f"the {what} date '{value}' is out of range") from None


def _safe_next(root: str, target: str | None) -> str:
    """Only paths of the dashboard itself are followed after sign-in (no open redirect)."""
    if target and target.startswith(root + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return root + "/"


def create_dashboard(engine: Engine) -> FastAPI:
    app = FastAPI(title="Clearance review", docs_url=None, redoc_url=None, openapi_url=None)
    excerpts = WorkPool("excerpts", EXCERPT_WORKERS, EXCERPT_QUEUE)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def review() -> Review:
        return Review(engine.store)

    def render(request: Request, name: str, session: Session | None, code: int = 200, **context) -> Response:
        root = request.scope["root_path"]
        home = root + "/catalog" if session and not session.principal.can(Role.reviewer) else root + "/"
        return templates.TemplateResponse(request, name, {"root": root, "home": home, "session": session,
                                                          "Role": Role, **context}, status_code=code)

    def signed_in(request: Request) -> Session:
        session = current_session(review(), request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise SignInRequired()
        return session

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(SignInRequired)
    async def to_sign_in(request: Request, _exc: SignInRequired):
        root = request.scope["root_path"]
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target = f"{root}/sign-in" + (f"?next={quote(here)}" if request.method == "GET" else "")
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(Refused)
    async def refused_page(request: Request, exc: Refused):
        session = current_session(review(), request.cookies.get(SESSION_COOKIE))
        return render(request, "error.html", session, exc.status, status=exc.status, message=exc.message)

    @app.exception_handler(ReviewConflict)
    async def conflict(request: Request, exc: ReviewConflict):
        return await refused_page(request, Refused(409, str(exc)))

    @app.exception_handler(CatalogError)
    async def catalog_error(request: Request, exc: CatalogError):
        return await refused_page(request, Refused(404, str(exc)))

    @app.exception_handler(AudioError)
    async def audio_error(request: Request, exc: AudioError):
        return await refused_page(request, Refused(500, f"the audio cannot be read: {exc}"))

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        response = await refused_page(request, Refused(503, str(exc)))
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.exception_handler(HTTPException)        # no such page (404), wrong method (405)
    async def http_error(request: Request, exc: HTTPException):
        response = await refused_page(request, Refused(exc.status_code, str(exc.detail)))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return await refused_page(request, Refused(422, "; ".join(
            f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())))

    # --- sign-in -------------------------------------------------------------------------
    @app.get("/sign-in")
    def sign_in_page(request: Request, next: str | None = None):
        if current_session(review(), request.cookies.get(SESSION_COOKIE)):
            return RedirectResponse(_safe_next(request.scope["root_path"], next), status_code=303)
        return _sign_in_form(request, next)

    def _sign_in_form(request: Request, next: str | None, status: int = 200, error: str = "") -> Response:
        token = request.cookies.get(SIGN_IN_COOKIE) or new_token()     # one per browser, so two tabs both work
        response = render(request, "sign_in.html", None, status, csrf=token, next=next or "", error=error)
        response.set_cookie(SIGN_IN_COOKIE, token, max_age=3600, path=request.scope["root_path"], httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.post("/sign-in")
    def sign_in(request: Request, key: str = Form(""), csrf: str = Form(""), next: str = Form("")):
        verify_csrf(request.cookies.get(SIGN_IN_COOKIE), csrf)
        root = request.scope["root_path"]
        try:
            principal = authorize(engine.store, key.strip(), DASHBOARD_ROLES)
        except Unauthenticated as exc:
            return _sign_in_form(request, next, 401, str(exc))
        except Forbidden as exc:
            return _sign_in_form(request, next, 403, f"{exc}; the review dashboard is for people")
        token = open_session(review(), principal, engine.settings.review_session_hours)
        landing = root + "/catalog" if not principal.can(Role.reviewer) else _safe_next(root, next)
        response = RedirectResponse(landing, status_code=303)
        response.set_cookie(SESSION_COOKIE, token, max_age=int(engine.settings.review_session_hours * 3600),
                            path=root, httponly=True, samesite="lax", secure=request.url.scheme == "https")
        response.delete_cookie(SIGN_IN_COOKIE, path=root)
        return response

    @app.post("/sign-out")
    def sign_out(request: Request, csrf: str = Form(""), session: Session = Depends(signed_in)):
        session.check_csrf(csrf)
        close_session(review(), request.cookies[SESSION_COOKIE])
        response = RedirectResponse(request.scope["root_path"] + "/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=request.scope["root_path"])
        return response

    # --- the queue ---------------------------------------------------------------------------
    @app.get("/")
    def queue(request: Request, decision: str = "", state: str = "", since: str = "", until: str = "",
              owner: str = "", track: str = "", page: int = 1, session: Session = Depends(signed_in)):
        session.require(Role.reviewer)
        if page > MAX_PAGE:
            raise Refused(400, f"page {page} is out of range (1 to {MAX_PAGE})")
        f = QueueFilter(decision=decision if decision in DECISIONS else None,
                        state=state if state in STATES else None,
                        since=_day(since, "from"), until=_day(until, "to", later=1),     # the whole 'to' day
                        owner=owner.strip() or None, track=track.strip() or None)
        size = engine.settings.review_page_size
        page = max(page, 1)
        rows, total = review().review_queue(f, size, (page - 1) * size)
        by_decision, by_state = review().review_counts(f)
        params = {k: v for k, v in dict(decision=decision, state=state, since=since, until=until, owner=owner,
                                        track=track).items() if v}

        def link(**change) -> str:
            merged = {k: v for k, v in {**params, **change}.items() if v}
            return "?" + urlencode(merged) if merged else "./"

        return render(request, "queue.html", session, rows=rows, total=total, page=page,
                      pages=max(1, -(-total // size)), by_decision=by_decision, by_state=by_state, params=params,
                      decisions=DECISIONS, states=STATES, link=link, owners=review().owners())

    # --- a check -----------------------------------------------------------------------------
    def reviewer_view(check_id: str, session: Session) -> evidence.CheckView:
        session.require(Role.reviewer)
        return evidence.check_view(engine, review(), check_id)

    @app.get("/checks/{check_id}")
    def check_page(request: Request, check_id: str, session: Session = Depends(signed_in)):
        view = reviewer_view(check_id, session)
        return render(request, "check.html", session, view=view, verdicts=list(Verdict))

    @app.get("/checks/{check_id}/output")
    def output_audio(check_id: str, session: Session = Depends(signed_in)):
        view = reviewer_view(check_id, session)
        if view.output is None:
            raise Refused(404, "the output's audio was not kept for this check")
        return FileResponse(view.output, media_type=mimetypes.guess_type(view.output.name)[0]
                            or "application/octet-stream")

    def reference_excerpt(check_id: str, number: int, session: Session) -> bytes:
        view = reviewer_view(check_id, session)
        if not 1 <= number <= len(view.matches):
            raise Refused(404, f"check '{check_id}' has no match {number}")
        return evidence.reference_excerpt(engine, view.matches[number - 1])

    @app.get("/checks/{check_id}/matches/{number}/reference")
    async def reference_audio(check_id: str, number: int, session: Session = Depends(signed_in)):
        async with excerpts.slot():
            audio = await excerpts.run(reference_excerpt, check_id, number, session)
        return Response(audio, media_type="audio/ogg")

    @app.post("/checks/{check_id}/verdicts")
    def record_verdict(request: Request, check_id: str, action: str = Form(""), reason: str = Form(""),
                       note: str = Form(""), seen: int = Form(0), csrf: str = Form(""),
                       session: Session = Depends(signed_in)):
        session.check_csrf(csrf)
        session.require(Role.reviewer)
        try:
            verdict = Verdict(action)
        except ValueError:
            raise Refused(400, f"'{action}' is not a verdict; choose one of "
                               f"{', '.join(v.value for v in Verdict)}") from None
        reason, note = _text(reason, "reason"), _text(note, "note")
        if verdict is Verdict.override and not reason:
            raise Refused(400, "an override to allow needs a reason")
        review().record_verdict(check_id, verdict.value, verdict.state, actor=session.actor, reason=reason,
                                note=note, seen_audit_id=seen)
        return RedirectResponse(f"{request.scope['root_path']}/checks/{quote(check_id)}#audit", status_code=303)

    @app.get("/checks/{check_id}/report")
    def report(request: Request, check_id: str, session: Session = Depends(signed_in)):
        view = reviewer_view(check_id, session)
        images = evidence.report_images(engine, view)       # refuses when the output was not kept
        response = render(request, "report.html", session, view=view, images=images,
                          output_sha256=evidence.sha256_of(view.output), generated_at=now(),
                          margin=engine.settings.review_excerpt_margin_s)
        response.headers["Content-Disposition"] = f'attachment; filename="clearance-evidence-{check_id}.html"'
        return response

    # --- the catalog -------------------------------------------------------------------------
    @app.get("/catalog")
    def catalog(request: Request, q: str = "", rights: str = "", session: Session = Depends(signed_in)):
        session.require(Role.reviewer, Role.catalog_admin)
        chosen = Rights(rights) if rights in {r.value for r in Rights} else None
        return render(request, "catalog.html", session, q=q, rights=rights, all_rights=[r.value for r in Rights],
                      tracks=review().search_tracks(q.strip(), chosen),
                      changes=review().audit_trail("track", limit=50),
                      can_edit=session.principal.can(Role.catalog_admin))

    @app.post("/catalog/rights")
    def change_rights(request: Request, external_id: str = Form(...), rights: str = Form(...), note: str = Form(""),
                      csrf: str = Form(""), session: Session = Depends(signed_in)):
        session.check_csrf(csrf)
        session.require(Role.catalog_admin)
        try:
            new = Rights(rights)
        except ValueError:
            raise Refused(400, f"'{rights}' is not a kind of rights") from None
        review().change_rights(external_id, new, actor=session.actor, note=_text(note, "note"))
        return RedirectResponse(f"{request.scope['root_path']}/catalog?{urlencode({'q': external_id})}",
                                status_code=303)

    return app
