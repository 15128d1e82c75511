"""The catalog page: reviewers search the tracks and the works they record; catalog admins
change the rights of both, audited."""
from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse

from detector.policy import Rights, WorkRights
from service.auth import Role
from service.dashboard.errors import Refused
from service.dashboard.pages import engine_of, render, review, signed_in, text
from service.dashboard.sessions import Session

router = APIRouter()


@router.get("/catalog")
def catalog(request: Request, q: str = "", rights: str = "", session: Session = Depends(signed_in)):
    session.require(Role.reviewer, Role.catalog_admin)
    chosen = Rights(rights) if rights in {r.value for r in Rights} else None
    changes = review(request).audit_trail("track", limit=50) + review(request).audit_trail("work", limit=50)
    return render(request, "catalog.html", session, q=q, rights=rights, all_rights=[r.value for r in Rights],
                  work_rights=[r.value for r in WorkRights],
                  tracks=review(request).search_tracks(q.strip(), chosen),
                  works=engine_of(request).store.list_works(text=q.strip(), limit=200),
                  changes=sorted(changes, key=lambda e: -e.id)[:50],
                  can_edit=session.principal.can(Role.catalog_admin))


@router.post("/catalog/rights")
def change_rights(request: Request, external_id: str = Form(...), rights: str = Form(...), note: str = Form(""),
                  csrf: str = Form(""), session: Session = Depends(signed_in)):
    _admin(session, csrf)
    review(request).change_rights(external_id, _choice(Rights, rights, "a recording's rights"), actor=session.actor,
                                  note=text(note, "note"))
    return _back(request, external_id)


@router.post("/catalog/works")
def put_work(request: Request, work_id: str = Form(...), title: str = Form(""), owner: str = Form(""),
             rights: str = Form(...), recordings: str = Form(""), note: str = Form(""), csrf: str = Form(""),
             session: Session = Depends(signed_in)):
    """Add a work or change its rights (and title and owner, where not empty), and name tracks that
    record it (``recordings``: external ids separated by commas or spaces), audited."""
    _admin(session, csrf)
    new = _choice(WorkRights, rights, "a work's rights")
    tracks = recordings.replace(",", " ").split()
    store = engine_of(request).store
    missing = [t for t in tracks if store.find(t) is None]
    if missing:
        raise Refused(404, f"no track with external_id {', '.join(repr(t) for t in missing)}")
    note = text(note, "note")
    work = review(request).put_work(work_id, title=text(title, "title") or None, owner=text(owner, "owner") or None,
                                    rights=new, actor=session.actor, note=note)
    for track in tracks:
        review(request).link_work(track, work.external_id, actor=session.actor, note=note)
    return _back(request, work.external_id, "#works")


def _admin(session: Session, csrf: str) -> None:
    session.check_csrf(csrf)
    session.require(Role.catalog_admin)


def _choice(kind, value: str, what: str):
    try:
        return kind(value)
    except ValueError:
        raise Refused(400, f"'{value}' is not one of {what}: {', '.join(k.value for k in kind)}") from None


def _back(request: Request, q: str, anchor: str = "") -> RedirectResponse:
    """To the catalog page searching for ``q``."""
    return RedirectResponse(f"{request.scope['root_path']}/catalog?{urlencode({'q': q})}{anchor}", status_code=303)
