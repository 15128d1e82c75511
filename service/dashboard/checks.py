"""The review queue and a check's pages: the evidence, the verdict form and the evidence report."""
from __future__ import annotations

from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from detector.policy import Verdict
from index.reviews import UNREVIEWED, QueueFilter, ReviewVerdict
from index.store import now
from service.auth import Role
from service.dashboard import evidence
from service.dashboard.errors import Refused
from service.dashboard.pages import day, engine_of, render, review, reviewer_view, signed_in, text
from service.dashboard.sessions import Session
from service.pool import WorkPool

MAX_PAGE = 10 ** 6           # of the review queue; a larger number is refused, not sent to the database

router = APIRouter()


STATES = [UNREVIEWED, *(v.state for v in ReviewVerdict)]
DECISIONS = [v.value for v in Verdict]
KINDS = {"copy": "copy of a recording", "reperformance": "re-performance of a work"}     # the layers a match is from


@router.get("/")
def queue(request: Request, decision: str = "", state: str = "", since: str = "", until: str = "",
          owner: str = "", track: str = "", kind: str = "", work: str = "", work_owner: str = "", page: int = 1,
          session: Session = Depends(signed_in)):
    session.require(Role.reviewer)
    if page > MAX_PAGE:
        raise Refused(400, f"page {page} is out of range (1 to {MAX_PAGE})")
    f = QueueFilter(decision=decision if decision in DECISIONS else None,
                    state=state if state in STATES else None,
                    since=day(since, "from"), until=day(until, "to", later=1),     # the whole 'to' day
                    owner=owner.strip() or None, track=track.strip() or None, kind=kind if kind in KINDS else None,
                    work=work.strip() or None, work_owner=work_owner.strip() or None)
    size = engine_of(request).settings.review_page_size
    page = max(page, 1)
    rows, total = review(request).review_queue(f, size, (page - 1) * size)
    by_decision, by_state = review(request).review_counts(f)
    params = {k: v for k, v in dict(decision=decision, state=state, since=since, until=until, owner=owner,
                                    track=track, kind=kind, work=work, work_owner=work_owner).items() if v}

    def link(**change) -> str:
        merged = {k: v for k, v in {**params, **change}.items() if v}
        return "?" + urlencode(merged) if merged else "./"

    return render(request, "queue.html", session, rows=rows, total=total, page=page,
                  pages=max(1, -(-total // size)), by_decision=by_decision, by_state=by_state, params=params,
                  decisions=DECISIONS, states=STATES, kinds=KINDS, link=link, owners=review(request).owners(),
                  work_owners=review(request).work_owners())


@router.get("/checks/{check_id}")
async def check_page(request: Request, check_id: str, session: Session = Depends(signed_in)):
    view = await run_in_threadpool(reviewer_view, request, check_id, session)
    pictures = {}
    if any(m.is_reperformance for m in view.matches):      # decoded in the excerpts' bounded pool
        excerpts: WorkPool = request.app.state.excerpts
        async with excerpts.slot():
            pictures = await excerpts.run(_reperformances, engine_of(request), view)
    return render(request, "check.html", session, view=view, verdicts=list(ReviewVerdict), pictures=pictures)


def _reperformances(engine, view: evidence.CheckView) -> dict:
    """Match number → the view of each re-performance that can be drawn."""
    drawn = {m.number: evidence.reperformance_view(engine, view, m) for m in view.matches if m.is_reperformance}
    return {n: v for n, v in drawn.items() if v is not None}


@router.post("/checks/{check_id}/verdicts")
def record_verdict(request: Request, check_id: str, action: str = Form(""), reason: str = Form(""),
                   note: str = Form(""), seen: int = Form(0), csrf: str = Form(""),
                   session: Session = Depends(signed_in)):
    session.check_csrf(csrf)
    session.require(Role.reviewer)
    try:
        verdict = ReviewVerdict(action)
    except ValueError:
        raise Refused(400, f"'{action}' is not a verdict; choose one of "
                           f"{', '.join(v.value for v in ReviewVerdict)}") from None
    reason, note = text(reason, "reason"), text(note, "note")
    if verdict is ReviewVerdict.override and not reason:
        raise Refused(400, "an override to allow needs a reason")
    review(request).record_verdict(check_id, verdict, actor=session.actor, reason=reason, note=note,
                                   seen_audit_id=seen)
    return RedirectResponse(f"{request.scope['root_path']}/checks/{quote(check_id)}#audit", status_code=303)


@router.get("/checks/{check_id}/report")
def report(request: Request, check_id: str, session: Session = Depends(signed_in)):
    engine = engine_of(request)
    view = reviewer_view(request, check_id, session)
    images = evidence.report_images(engine, view)       # refuses when the output was not kept
    response = render(request, "report.html", session, view=view, images=images,
                      output_sha256=evidence.sha256_of(view.output), generated_at=now(),
                      margin=engine.settings.review_excerpt_margin_s)
    response.headers["Content-Disposition"] = f'attachment; filename="clearance-evidence-{check_id}.html"'
    return response
