"""Signing in and out of the dashboard with a person's API key (sessions in ``sessions.py``)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from service.auth import Forbidden, Role, Unauthenticated, authorize
from service.dashboard.pages import engine_of, render, review, session_of, signed_in
from service.dashboard.sessions import (DASHBOARD_ROLES, SESSION_COOKIE, SIGN_IN_COOKIE, Session, close_session,
                                        new_token, open_session, verify_csrf)

router = APIRouter()


def _safe_next(root: str, target: str | None) -> str:
    """Only paths of the dashboard itself are followed after sign-in (no open redirect)."""
    if target and target.startswith(root + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return root + "/"


@router.get("/sign-in")
def sign_in_page(request: Request, next: str | None = None):
    if session_of(request):
        return RedirectResponse(_safe_next(request.scope["root_path"], next), status_code=303)
    return _sign_in_form(request, next)


def _sign_in_form(request: Request, next: str | None, status: int = 200, error: str = "") -> Response:
    token = request.cookies.get(SIGN_IN_COOKIE) or new_token()     # one per browser, so two tabs both work
    response = render(request, "sign_in.html", None, status, csrf=token, next=next or "", error=error)
    response.set_cookie(SIGN_IN_COOKIE, token, max_age=3600, path=request.scope["root_path"], httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/sign-in")
def sign_in(request: Request, key: str = Form(""), csrf: str = Form(""), next: str = Form("")):
    verify_csrf(request.cookies.get(SIGN_IN_COOKIE), csrf)
    root = request.scope["root_path"]
    engine = engine_of(request)
    try:
        principal = authorize(engine.store, key.strip(), DASHBOARD_ROLES)
    except Unauthenticated as exc:
        return _sign_in_form(request, next, 401, str(exc))
    except Forbidden as exc:
        return _sign_in_form(request, next, 403, f"{exc}; the review dashboard is for people")
    token = open_session(review(request), principal, engine.settings.review_session_hours)
    landing = root + "/catalog" if not principal.can(Role.reviewer) else _safe_next(root, next)
    response = RedirectResponse(landing, status_code=303)
    response.set_cookie(SESSION_COOKIE, token, max_age=int(engine.settings.review_session_hours * 3600),
                        path=root, httponly=True, samesite="lax", secure=request.url.scheme == "https")
    response.delete_cookie(SIGN_IN_COOKIE, path=root)
    return response


@router.post("/sign-out")
def sign_out(request: Request, csrf: str = Form(""), session: Session = Depends(signed_in)):
    session.check_csrf(csrf)
    close_session(review(request), request.cookies[SESSION_COOKIE])
    response = RedirectResponse(request.scope["root_path"] + "/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=request.scope["root_path"])
    return response
