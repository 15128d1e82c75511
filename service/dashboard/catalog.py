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
    session.check_csrf(csrf)
    session.require(Role.catalog_admin)
    try:
        new = Rights(rights)
    except ValueError:
        raise Refused(400, f"'{rights}' is not a kind of rights") from None
    review(request).change_rights(external_id, new, actor=session.actor, note=text(note, "note"))
    return RedirectResponse(f"{request.scope['root_path']}/catalog?{urlencode({'q': external_id})}",
                            status_code=303)


@router.post("/catalog/works/rights")
def change_work_rights(request: Request, work_id: str = Form(...), rights: str = Form(...), note: str = Form(""),
                       csrf: str = Form(""), session: Session = Depends(signed_in)):
    session.check_csrf(csrf)
    session.require(Role.catalog_admin)
    try:
        new = WorkRights(rights)
    except ValueError:
        raise Refused(400, f"'{rights}' is not a kind of rights of a work") from None
    if engine_of(request).store.find_work(work_id) is None:
        raise Refused(404, f"no work with id '{work_id}'")
    review(request).put_work(work_id, rights=new, actor=session.actor, note=text(note, "note"))
    return RedirectResponse(f"{request.scope['root_path']}/catalog?{urlencode({'q': work_id})}#works",
                            status_code=303)


@router.post("/catalog/works")
def put_work(request: Request, work_id: str = Form(...), title: str = Form(""), owner: str = Form(""),
             rights: str = Form("unknown"), recordings: str = Form(""), note: str = Form(""), csrf: str = Form(""),
             session: Session = Depends(signed_in)):
    """Add a work or change its title, owner and rights, and name tracks that record it
    (``recordings``: external ids separated by commas or spaces), audited."""
    session.check_csrf(csrf)
    session.require(Role.catalog_admin)
    try:
        new = WorkRights(rights)
    except ValueError:
        raise Refused(400, f"'{rights}' is not a kind of rights of a work") from None
    tracks = recordings.replace(",", " ").split()
    store = engine_of(request).store
    missing = [t for t in tracks if store.find(t) is None]
    if missing:
        raise Refused(404, f"no track with external_id {', '.join(repr(t) for t in missing)}")
    note = text(note, "note")
    work = review(request).put_work(work_id, title=text(title, "title"), owner=text(owner, "owner"), rights=new,
                                    actor=session.actor, note=note)
    for track in tracks:
        review(request).link_work(track, work.external_id, actor=session.actor, note=note)
    return RedirectResponse(f"{request.scope['root_path']}/catalog?{urlencode({'q': work.external_id})}#works",
                            status_code=303)
