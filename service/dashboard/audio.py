"""A check's audio: the output as it was kept, and each match's reference excerpt, decoded in a
bounded pool of its own (``excerpts``, made by ``create_dashboard``)."""
from __future__ import annotations

import mimetypes

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response

from service.dashboard import evidence
from service.dashboard.errors import Refused
from service.dashboard.pages import engine_of, reviewer_view, signed_in
from service.dashboard.sessions import Session
from service.pool import WorkPool

EXCERPT_WORKERS = 2          # reference excerpts decoded at once (threads) ...
EXCERPT_QUEUE = 30           # ... and waiting; beyond, reviewers are answered 503

router = APIRouter()


def excerpt_pool() -> WorkPool:
    return WorkPool("excerpts", EXCERPT_WORKERS, EXCERPT_QUEUE)


@router.get("/checks/{check_id}/output")
def output_audio(request: Request, check_id: str, session: Session = Depends(signed_in)):
    view = reviewer_view(request, check_id, session)
    if view.output is None:
        raise Refused(404, "the output's audio was not kept for this check")
    return FileResponse(view.output, media_type=mimetypes.guess_type(view.output.name)[0]
                        or "application/octet-stream")


def _reference_excerpt(request: Request, check_id: str, number: int, shift: int, session: Session) -> bytes:
    view = reviewer_view(request, check_id, session)
    if not 1 <= number <= len(view.matches):
        raise Refused(404, f"check '{check_id}' has no match {number}")
    return evidence.reference_excerpt(engine_of(request), view.matches[number - 1], shift)


@router.get("/checks/{check_id}/matches/{number}/reference")
async def reference_audio(request: Request, check_id: str, number: int,
                          shift: int = Query(0, ge=-11, le=11, description="transpose by this many semitones"),
                          session: Session = Depends(signed_in)):
    excerpts: WorkPool = request.app.state.excerpts
    async with excerpts.slot():
        audio = await excerpts.run(_reference_excerpt, request, check_id, number, shift, session)
    return Response(audio, media_type="audio/ogg")
