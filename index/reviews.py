"""The review of checks (service/dashboard), in the catalog database of a ``Store``: dashboard
sign-in sessions, verdicts on checks and rights changes made by people, and the review queue.

Verdicts and rights changes are appended to the audit log and never changed; on SQLite
triggers refuse UPDATE and DELETE of audit rows (``index/schema.py``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import sqlalchemy as sa

from detector.errors import Conflict, NotFound
from detector.policy import Rights, WorkInfo, WorkRights
from index.schema import api_keys, audit_log, checks, review_sessions, tracks, works
from index.store import (Store, Track, TrackState, insert_work, now, select_tracks, track_from_row, utc,
                         valid_work_id, work_from_row)

UNREVIEWED = "unreviewed"


class ReviewVerdict(str, Enum):
    """What a reviewer decides about a check (the audit log's ``action``), and the review state it
    leaves the check in (the audit log's ``new``)."""

    confirm = "confirm"      # confirm the block
    override = "override"    # override to allow: needs a reason
    escalate = "escalate"    # hand to counsel

    @property
    def state(self) -> str:
        return {"confirm": "blocked", "override": "allowed", "escalate": "escalated"}[self.value]


class ReviewConflict(Conflict):
    """A verdict recorded against a stale view: someone else reviewed the check meanwhile."""


@dataclass(frozen=True)
class Actor:
    """The person behind an audited change: their API key's id and name."""

    key_id: str
    name: str


@dataclass(frozen=True)
class ReviewSession:
    """A signed-in dashboard user: their active key and the session's CSRF token."""

    key_id: str
    name: str
    role: str
    csrf: str


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime                 # UTC
    actor: Actor
    subject: str                 # check | track
    subject_id: str
    action: str
    previous: str
    new: str
    reason: str
    note: str


@dataclass(frozen=True)
class CheckRecord:
    """A stored check with its review state (the latest verdict's, or ``unreviewed``)."""

    id: str
    created_at: datetime         # UTC
    submitter: str | None
    result: dict
    state: str
    last_audit_id: int           # 0 before the first verdict

    @property
    def top(self) -> dict | None:
        """The best match, if any."""
        return self.result["matches"][0] if self.result["matches"] else None


@dataclass(frozen=True)
class QueueFilter:
    """What the review queue shows. ``since``/``until`` are UTC instants (until exclusive);
    ``owner``, ``track``, ``kind`` (``copy`` or ``reperformance``), ``work`` and ``work_owner``
    select checks with any match of that owner, external id, kind, work id or work's rights
    holder (checks stored before works were recorded name no kind or work)."""

    decision: str | None = None
    state: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    owner: str | None = None
    track: str | None = None
    kind: str | None = None
    work: str | None = None
    work_owner: str | None = None


def _match_field(key: str, value: str):
    """``checks.result`` contains a match with ``key`` equal to ``value``. Matches are the only
    objects in a result with ``external_id``, ``owner``, ``kind`` and ``work_…`` keys, and ``save_check`` writes the
    result with ``json.dumps``' default separators, so the same encoder gives the exact text."""
    return checks.c.result.contains(json.dumps({key: value})[1:-1], autoescape=True)


def _latest_verdicts():
    """Subquery: the id of the latest audit entry of each check (column ``last``)."""
    return (sa.select(audit_log.c.subject_id.label("check_id"), sa.func.max(audit_log.c.id).label("last"))
            .where(audit_log.c.subject == "check").group_by(audit_log.c.subject_id).subquery())


def _queue_select(*columns, f: QueueFilter, skip: str = ""):
    """SELECT ``columns`` from checks joined with their latest verdict, filtered by ``f``
    except for the field named ``skip`` (to count by it)."""
    latest = _latest_verdicts()
    state = sa.func.coalesce(audit_log.c.new, UNREVIEWED).label("state")
    q = (sa.select(*columns, state, sa.func.coalesce(latest.c.last, 0).label("last"))
         .select_from(checks.outerjoin(latest, latest.c.check_id == checks.c.id)
                      .outerjoin(audit_log, audit_log.c.id == latest.c.last)))
    if f.decision and skip != "decision":
        q = q.where(checks.c.decision == f.decision)
    if f.state and skip != "state":
        q = q.where(state == f.state)
    if f.since:
        q = q.where(checks.c.created_at >= f.since)
    if f.until:
        q = q.where(checks.c.created_at < f.until)
    if f.owner:
        q = q.where(_match_field("owner", f.owner))
    if f.track:
        q = q.where(_match_field("external_id", f.track))
    if f.kind:
        q = q.where(_match_field("kind", f.kind))
    if f.work:
        q = q.where(_match_field("work_id", f.work))
    if f.work_owner:
        q = q.where(_match_field("work_owner", f.work_owner))
    return q


def _row_to_audit(r) -> AuditEntry:
    return AuditEntry(r.id, utc(r.at), Actor(r.actor_key_id, r.actor_name), r.subject, r.subject_id, r.action,
                      r.previous, r.new, r.reason, r.note)


def _row_to_check(r) -> CheckRecord:
    return CheckRecord(r.id, utc(r.created_at), r.submitter, json.loads(r.result), r.state, r.last)


class Review:
    """Typed access to the review tables in a ``Store``'s database: sessions, verdicts, audited
    rights changes and the review queue."""

    def __init__(self, store: Store):
        self.engine = store.engine

    # --- sessions ----------------------------------------------------------------------------
    def open_session(self, token_sha256: str, key_id: str, csrf: str, expires_at: datetime) -> None:
        with self.engine.begin() as c:
            c.execute(review_sessions.delete().where(review_sessions.c.expires_at < now()))
            c.execute(review_sessions.insert().values(token_sha256=token_sha256, key_id=key_id, csrf=csrf,
                                                      created_at=now(), expires_at=expires_at))

    def session(self, token_sha256: str) -> ReviewSession | None:
        """The live session with this token hash whose key is still active, or None."""
        q = (sa.select(api_keys.c.id, api_keys.c.name, api_keys.c.role, review_sessions.c.csrf)
             .select_from(review_sessions.join(api_keys))
             .where(review_sessions.c.token_sha256 == token_sha256, review_sessions.c.expires_at > now(),
                    api_keys.c.revoked_at.is_(None)))
        with self.engine.connect() as c:
            r = c.execute(q).first()
        return ReviewSession(r.id, r.name, r.role, r.csrf) if r else None

    def close_session(self, token_sha256: str) -> None:
        with self.engine.begin() as c:
            c.execute(review_sessions.delete().where(review_sessions.c.token_sha256 == token_sha256))

    # --- checks under review --------------------------------------------------------------
    def check_record(self, check_id: str) -> CheckRecord | None:
        q = _queue_select(checks.c.id, checks.c.created_at, checks.c.submitter, checks.c.result, f=QueueFilter())
        with self.engine.connect() as c:
            r = c.execute(q.where(checks.c.id == check_id)).first()
        return _row_to_check(r) if r else None

    def review_queue(self, f: QueueFilter, limit: int, offset: int = 0) -> tuple[list[CheckRecord], int]:
        """One page of checks, newest first, and how many match ``f`` in all."""
        q = _queue_select(checks.c.id, checks.c.created_at, checks.c.submitter, checks.c.result, f=f)
        with self.engine.connect() as c:
            total = c.execute(sa.select(sa.func.count()).select_from(q.subquery())).scalar_one()
            rows = c.execute(q.order_by(checks.c.created_at.desc(), checks.c.id).limit(limit).offset(offset))
            return [_row_to_check(r) for r in rows], total

    def review_counts(self, f: QueueFilter) -> tuple[dict[str, int], dict[str, int]]:
        """Checks matching ``f`` counted by decision (ignoring ``f.decision``) and by review
        state (ignoring ``f.state``)."""
        with self.engine.connect() as c:
            sub = _queue_select(checks.c.decision, f=f, skip="decision").subquery()
            by_decision = dict(c.execute(sa.select(sub.c.decision, sa.func.count()).group_by(sub.c.decision)).all())
            sub = _queue_select(checks.c.id, f=f, skip="state").subquery()
            by_state = dict(c.execute(sa.select(sub.c.state, sa.func.count()).group_by(sub.c.state)).all())
        return by_decision, by_state

    def record_verdict(self, check_id: str, verdict: ReviewVerdict, *, actor: Actor, reason: str, note: str,
                       seen_audit_id: int) -> AuditEntry:
        """Append a verdict on a check. ``seen_audit_id`` is the latest entry the reviewer saw
        (0: none); if another was added since, ``ReviewConflict`` is raised and nothing is written."""
        with self.engine.begin() as c:
            if not c.execute(sa.select(checks.c.id).where(checks.c.id == check_id)).first():
                raise NotFound(f"no check with id '{check_id}'")
            last = c.execute(sa.select(audit_log).where(audit_log.c.subject == "check",
                                                        audit_log.c.subject_id == check_id)
                             .order_by(audit_log.c.id.desc()).limit(1)).first()
            if (last.id if last else 0) != seen_audit_id:
                raise ReviewConflict(f"check '{check_id}' was reviewed by {last.actor_name} meanwhile "
                                     f"({last.action}); reload the page and decide again")
            return self._append(c, actor, "check", check_id, verdict.value, last.new if last else UNREVIEWED,
                                verdict.state, reason, note)

    def change_rights(self, external_id: str, rights: Rights, *, actor: Actor, note: str) -> AuditEntry:
        """Change a track's rights and audit it, in one transaction."""
        with self.engine.begin() as c:
            before = c.execute(sa.select(tracks.c.rights).where(tracks.c.external_id == external_id)).scalar()
            if before is None:
                raise NotFound(f"no track with external_id '{external_id}'")
            c.execute(tracks.update().where(tracks.c.external_id == external_id)
                      .values(rights=rights.value, updated_at=now()))
            return self._append(c, actor, "track", external_id, "rights", before, rights.value, "", note)

    def put_work(self, external_id: str, *, title: str | None = None, owner: str | None = None,
                 rights: WorkRights | None = None, actor: Actor, note: str = "") -> WorkInfo:
        """Add work ``external_id`` (rights unknown unless given), or change what is given of it,
        in one transaction; a new work, and a change of a work's rights, are audited."""
        external_id = valid_work_id(external_id)
        with self.engine.begin() as c:
            r = c.execute(sa.select(works).where(works.c.external_id == external_id)).first()
            if r is None:
                work = WorkInfo(external_id, title or "", owner or "", rights or WorkRights.unknown)
                insert_work(c, work)
                self._append(c, actor, "work", external_id, "rights", "", work.rights.value, "", note)
                return work
            before = work_from_row(r)
            work = WorkInfo(external_id, before.title if title is None else title,
                            before.owner if owner is None else owner, before.rights if rights is None else rights)
            c.execute(works.update().where(works.c.id == r.id).values(title=work.title, owner=work.owner,
                                                                      rights=work.rights.value, updated_at=now()))
            if work.rights is not before.rights:
                self._append(c, actor, "work", external_id, "rights", before.rights.value, work.rights.value, "", note)
            return work

    def link_work(self, track_id: str, work_id: str | None, *, actor: Actor, note: str = "") -> None:
        """Record that track ``track_id`` records work ``work_id`` (None: no work), audited."""
        with self.engine.begin() as c:
            before = c.execute(select_tracks().where(tracks.c.external_id == track_id)).first()
            if before is None:
                raise NotFound(f"no track with external_id '{track_id}'")
            key = None
            if work_id is not None:
                key = c.execute(sa.select(works.c.id).where(works.c.external_id == work_id)).scalar()
                if key is None:
                    raise NotFound(f"no work with id '{work_id}'; add it first")
            if before.work_key == key:
                return
            c.execute(tracks.update().where(tracks.c.id == before.id).values(work_key=key, updated_at=now()))
            self._append(c, actor, "track", track_id, "work", before.work_id or "", work_id or "", "", note)

    def audit_trail(self, subject: str, subject_id: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Entries about ``subject`` (one ``subject_id`` or all), oldest first for one subject,
        newest first for all."""
        q = sa.select(audit_log).where(audit_log.c.subject == subject)
        if subject_id is None:
            q = q.order_by(audit_log.c.id.desc())
        else:
            q = q.where(audit_log.c.subject_id == subject_id).order_by(audit_log.c.id)
        with self.engine.connect() as c:
            return [_row_to_audit(r) for r in c.execute(q.limit(limit))]

    def search_tracks(self, text: str = "", rights: Rights | None = None, limit: int = 200) -> list[Track]:
        """Indexed tracks whose external id, title or owner, or whose work's id, title or owner,
        contains ``text``."""
        q = (select_tracks().where(tracks.c.state == TrackState.indexed.value).order_by(tracks.c.external_id)
             .limit(limit))
        if text:
            q = q.where(sa.or_(*(col.contains(text, autoescape=True)
                                 for col in (tracks.c.external_id, tracks.c.title, tracks.c.owner,
                                             works.c.external_id, works.c.title, works.c.owner))))
        if rights:
            q = q.where(tracks.c.rights == rights.value)
        with self.engine.connect() as c:
            return [track_from_row(r) for r in c.execute(q)]

    def owners(self) -> list[str]:
        """Distinct owners of indexed tracks, for the queue's filter."""
        with self.engine.connect() as c:
            return list(c.execute(sa.select(tracks.c.owner).distinct().where(tracks.c.state == TrackState.indexed.value,
                                                                               tracks.c.owner != "")
                                  .order_by(tracks.c.owner)).scalars())

    def work_owners(self) -> list[str]:
        """Distinct rights holders of works, for the queue's filter."""
        with self.engine.connect() as c:
            return list(c.execute(sa.select(works.c.owner).distinct().where(works.c.owner != "")
                                  .order_by(works.c.owner)).scalars())

    @staticmethod
    def _append(c, actor: Actor, subject: str, subject_id: str, action: str, previous: str, new: str,
                reason: str, note: str) -> AuditEntry:
        values = dict(at=now(), actor_key_id=actor.key_id, actor_name=actor.name, subject=subject,
                      subject_id=subject_id, action=action, previous=previous, new=new, reason=reason, note=note)
        key = c.execute(audit_log.insert().values(**values)).inserted_primary_key[0]
        return AuditEntry(int(key), values["at"], actor, subject, subject_id, action, previous, new, reason, note)
