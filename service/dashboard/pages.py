"""What every dashboard page uses: the templates, ``render``, the engine and review store of the
request's app, the signed-in session, and the checks of form and query values."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

from index.reviews import Review
from service.auth import Role
from service.dashboard import evidence
from service.dashboard.errors import Refused, SignInRequired
from service.dashboard.sessions import SESSION_COOKIE, Session, current_session
from service.engine import Engine

HERE = Path(__file__).resolve().parent
MAX_TEXT = 4000              # characters of a reason or note


def _when(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clock(seconds: float) -> str:
    """Seconds as m:ss.s."""
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(when=_when, clock=_clock)


def engine_of(request: Request) -> Engine:
    """The engine ``create_dashboard`` was given."""
    return request.app.state.engine


def review(request: Request) -> Review:
    return Review(engine_of(request).store)


def render(request: Request, name: str, session: Session | None, code: int = 200, **context) -> Response:
    root = request.scope["root_path"]
    home = root + "/catalog" if session and not session.principal.can(Role.reviewer) else root + "/"
    return templates.TemplateResponse(request, name, {"root": root, "home": home, "session": session,
                                                      "Role": Role, **context}, status_code=code)


def session_of(request: Request) -> Session | None:
    """The request's live session, if any."""
    return current_session(review(request), request.cookies.get(SESSION_COOKIE))


def signed_in(request: Request) -> Session:
    """The request's session; without one, the browser is sent to sign in (a dependency)."""
    session = session_of(request)
    if session is None:
        raise SignInRequired()
    return session


def text(value: str, what: str) -> str:
    value = value.strip()
    if len(value) > MAX_TEXT:
        raise Refused(400, f"the {what} is longer than {MAX_TEXT} characters")
    return value


def day(value: str, what: str, later: int = 0) -> datetime | None:
    """The midnight (UTC) ``later`` days after date ``value``; None for no date."""
    if not value:
        return None
    try:
        return datetime.combine(date.fromisoformat(value) + timedelta(days=later), time(), timezone.utc)
    except ValueError:
        raise Refused(400, f"the {what} date '{value}' is not a date like 2026-01-31") from None
    except OverflowError:
        raise Refused(400, f"the {what} date '{value}' is out of range") from None


def reviewer_view(request: Request, check_id: str, session: Session) -> evidence.CheckView:
    """What a reviewer sees of check ``check_id``; refused to anyone else."""
    session.require(Role.reviewer)
    return evidence.check_view(engine_of(request), review(request), check_id)
