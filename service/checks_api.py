"""``/v1/checks``: check a generated output, and read stored checks (a submitter only its own)."""
from __future__ import annotations

import base64
import binascii
import time
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field

from detector.errors import AudioError, InvalidRequest, NotFound
from detector.policy import Verdict
from index.store import DuplicateCheck, StoredCheck
from service.auth import Principal, Role, require
from service.engine import Engine
from service.metrics import Metrics
from service.pool import WorkPool
from service.uploads import Uploads, form_body

CHECKS = "/v1/checks"


def _in_utc(at: datetime) -> datetime:
    """``at`` in UTC. An offset can take a time past the last or before the first date there
    (9999-12-31T23:59:59-23:59): ``ValueError``, so that it is an invalid request, not a crash."""
    try:
        return at.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{at.isoformat()} is out of the range of dates in UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class CheckForm(BaseModel):
    audio: UploadFile = Field(description="the generated output to check: any format FFmpeg reads")


def checks_router(engine: Engine, pool: WorkPool, metrics: Metrics) -> APIRouter:
    """The routes of ``/v1/checks``; checks run in ``pool`` and are counted in ``metrics``."""
    router = APIRouter(tags=["checks"])
    uploads = Uploads(engine.settings)

    @router.post(CHECKS, summary="Check a generated output against the catalog", openapi_extra=form_body(CheckForm),
                 responses={200: {"description": "the check result, stored; also the stored result of an earlier "
                                                 "request with the same Idempotency-Key"}})
    async def create_check(request: Request, principal: Principal = Depends(require(Role.submitter)),
                           idempotency_key: str | None = Header(
                               None, min_length=1, max_length=256,
                               description="repeat a request with the same key (per API key) to get the stored "
                                           "result instead of a second check")) -> JSONResponse:
        """Answered when the check is done (outputs up to `max_audio_s`, 10 min by default)."""
        if idempotency_key:
            stored = await run_in_threadpool(engine.store.find_idempotent, principal.key_id, idempotency_key)
            if stored is not None:
                return replayed(stored)
        async with uploads.read_form(request, CheckForm, principal.key_id) as form, pool.slot():
            try:
                return JSONResponse(await pool.run(run_check, engine, metrics, form.audio, principal.key_id,
                                                   idempotency_key))
            except DuplicateCheck:    # the same key, sent twice at once: the first stored wins
                return replayed(await run_in_threadpool(engine.store.find_idempotent, principal.key_id,
                                                        idempotency_key))

    @router.get(CHECKS, summary="Stored checks, newest first, a page at a time")
    def list_checks(principal: Principal = Depends(require(Role.submitter, Role.reviewer)),
                    decision: Verdict | None = Query(None, description="only checks with this decision"),
                    since: UtcDatetime | None = Query(None, description="only checks made at or after this "
                                                                        "ISO 8601 time, with its offset: "
                                                                        "2026-05-01T00:00:00Z"),
                    limit: int = Query(50, ge=1, le=500, description="checks per page"),
                    cursor: str | None = Query(None, description="`next_cursor` of the previous page")) -> dict:
        """A submitter sees the checks made with its own key; reviewers and admins see all."""
        rows = engine.store.list_checks(
            decision=decision.value if decision else None, since=since,
            submitter=principal.key_id if principal.own_checks_only else None,
            before=_read_cursor(cursor) if cursor else None, limit=limit + 1)
        return {"checks": [{"created_at": r.created_at.isoformat(), "submitter": r.submitter, "result": r.result}
                           for r in rows[:limit]],
                "next_cursor": _cursor(rows[limit - 1]) if len(rows) > limit else None}

    @router.get(CHECKS + "/{check_id}", summary="One stored check result")
    def get_check(check_id: str, principal: Principal = Depends(require(Role.submitter, Role.reviewer))) -> dict:
        found = engine.store.get_check(check_id)
        if found is None or (principal.own_checks_only and found[1] != principal.key_id):
            raise NotFound(f"no check with id '{check_id}'")
        return found[0]

    return router


def run_check(engine: Engine, metrics: Metrics, upload: UploadFile, submitter: str,
              idempotency_key: str | None) -> dict:
    """Check an upload (on a worker thread) and count the outcome."""
    t0 = time.perf_counter()
    try:
        result = engine.check(upload.file.read(), upload.filename or "upload", submitter=submitter,
                              idempotency_key=idempotency_key)
    except AudioError as exc:
        metrics.decode_failures.labels("too_large" if exc.too_large else "unreadable").inc()
        raise
    metrics.check_seconds.observe(time.perf_counter() - t0)
    metrics.checks.labels(result["decision"]).inc()
    return result


def replayed(result: dict) -> JSONResponse:
    """A stored result answered again for a repeated Idempotency-Key."""
    return JSONResponse(result, headers={"Idempotent-Replayed": "true"})


def _cursor(last: StoredCheck) -> str:
    """An opaque position after ``last`` in the newest-first order."""
    return base64.urlsafe_b64encode(f"{last.created_at.isoformat()}|{last.result['id']}".encode()).decode()


def _read_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, check_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return _in_utc(datetime.fromisoformat(at)), check_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest(f"cursor {cursor!r} is not one this service gave out") from None
