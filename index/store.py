"""The catalog database (SQLAlchemy; SQLite by default): tracks, their Chromaprint
fingerprints, stored check results and failed indexing attempts.

The database is the source of truth for which tracks exist; the vector index follows it
(``index/catalog.py`` reconciles the two after a crash).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np
import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event

from detector.errors import ClearanceError, StorageError
from detector.policy import Rights, TrackInfo
from index import migrate

metadata = sa.MetaData()

tracks = sa.Table(
    "tracks", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("external_id", sa.String(512), nullable=False, unique=True),
    sa.Column("title", sa.String(1024), nullable=False, default=""),
    sa.Column("owner", sa.String(512), nullable=False, default=""),
    sa.Column("rights", sa.String(16), nullable=False),
    sa.Column("content_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("source_path", sa.Text, nullable=False, default=""),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("vectors", sa.Integer, nullable=False, default=0),
    sa.Column("state", sa.String(16), nullable=False),        # pending | indexed
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # keys are never reused: vector ids and stored shards name tracks by key
    sqlite_autoincrement=True,
)

chromaprints = sa.Table(
    "chromaprints", metadata,
    sa.Column("track_id", sa.Integer, sa.ForeignKey("tracks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("fingerprint", sa.LargeBinary, nullable=False),   # little-endian uint32 array
)

landmarks = sa.Table(
    "landmarks", metadata,
    sa.Column("track_id", sa.Integer, sa.ForeignKey("tracks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("peaks", sa.LargeBinary, nullable=False),         # little-endian uint32 array
)

checks = sa.Table(
    "checks", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("decision", sa.String(16), nullable=False, index=True),
    sa.Column("submitter", sa.String(64), nullable=True, index=True),
    sa.Column("idempotency_key", sa.String(256), nullable=True),
    sa.Column("result", sa.Text, nullable=False),
    sa.UniqueConstraint("submitter", "idempotency_key"),
)

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.String(16), primary_key=True),          # public key id: the prefix of the key
    sa.Column("name", sa.String(256), nullable=False, default=""),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

failures = sa.Table(                 # files an indexing job could not index, and why
    "failures", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
)


class CatalogError(ClearanceError):
    """A catalog operation that cannot be done as asked (unknown track, id clash)."""


class DuplicateCheck(ClearanceError):
    """A submitter stored a second check under an idempotency key it had used already."""


@dataclass(frozen=True)
class Track:
    id: int
    external_id: str
    title: str
    owner: str
    rights: Rights
    content_sha256: str
    source_path: str
    duration_s: float
    model: str
    vectors: int
    state: str

    @property
    def info(self) -> TrackInfo:
        return TrackInfo(self.external_id, self.title, self.owner, self.rights)

    def to_dict(self) -> dict:
        return {"external_id": self.external_id, "title": self.title, "owner": self.owner,
                "rights": self.rights.value, "duration_s": round(self.duration_s, 2),
                "sha256": self.content_sha256, "model": self.model, "vectors": self.vectors,
                "source_path": self.source_path}


@dataclass(frozen=True)
class StoredCheck:
    """A stored check: its result (as ``service.engine.result_json`` made it), when it was made
    (UTC) and the id of the API key that submitted it (None from the CLI)."""

    result: dict
    created_at: datetime
    submitter: str | None


def now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(t: datetime) -> datetime:
    """``t`` in UTC; naive times (SQLite hands them back so) are taken to be UTC already."""
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _row_to_track(r) -> Track:
    return Track(r.id, r.external_id, r.title, r.owner, Rights(r.rights), r.content_sha256, r.source_path,
                 r.duration_s, r.model, r.vectors, r.state)


class Store:
    """Typed access to the catalog database at ``url``, its schema brought to the newest.

    ``read_only``: for commands that only read, so they work where this user may not write:
    nothing is written, not even a file beside an SQLite database, and the schema is not
    upgraded (``StorageError`` when it is not the newest, or the database does not exist).
    """

    def __init__(self, url: str, *, read_only: bool = False):
        self.url = url
        self.engine = connect(url, read_only=read_only)
        if read_only:
            _require_newest_schema(self.engine)
        else:
            migrate.ensure_schema(self.engine, metadata)

    def check_writable(self) -> None:
        """Raise ``StorageError`` unless this process may write the database (tried with a write
        that is rolled back), so that a command that changes the catalog stops before its work."""
        with self.engine.connect() as c:
            c.execute(sa.text("UPDATE alembic_version SET version_num = version_num"))
            c.rollback()

    # --- tracks -------------------------------------------------------------------------
    def find_by_hash(self, sha256: str) -> Track | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(tracks).where(tracks.c.content_sha256 == sha256)).first()
        return _row_to_track(r) if r else None

    def external_ids_by_hash(self, hashes: Iterable[str]) -> dict[str, str]:
        """Content sha256 → external id, for the tracks (in any state) whose content is among ``hashes``."""
        with self.engine.connect() as c:
            return {sha: eid for part in _chunks(set(hashes)) for sha, eid in c.execute(
                sa.select(tracks.c.content_sha256, tracks.c.external_id).where(tracks.c.content_sha256.in_(part)))}

    def find(self, external_id: str) -> Track | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(tracks).where(tracks.c.external_id == external_id)).first()
        return _row_to_track(r) if r else None

    def add_pending(self, *, external_id: str, title: str, owner: str, rights: Rights, sha256: str,
                    source_path: str, duration_s: float, model: str, vectors: int, fingerprint: np.ndarray,
                    peaks: np.ndarray) -> int:
        """Insert a track in state ``pending`` with its Chromaprint and landmark peaks; returns its key."""
        t = now()
        with self.engine.begin() as c:
            if c.execute(sa.select(tracks.c.id).where(tracks.c.external_id == external_id)).first():
                raise CatalogError(f"external_id '{external_id}' is already used by another recording; "
                                   "remove it first or give this file another id")
            key = c.execute(tracks.insert().values(
                external_id=external_id, title=title, owner=owner, rights=rights.value, content_sha256=sha256,
                source_path=source_path, duration_s=duration_s, model=model, vectors=vectors, state="pending",
                created_at=t, updated_at=t)).inserted_primary_key[0]
            c.execute(chromaprints.insert().values(track_id=key, fingerprint=fingerprint.astype("<u4").tobytes()))
            c.execute(landmarks.insert().values(track_id=key, peaks=peaks.astype("<u4").tobytes()))
        return int(key)

    def mark_indexed(self, keys: list[int]) -> None:
        with self.engine.begin() as c:
            for part in _chunks(map(int, keys)):
                c.execute(tracks.update().where(tracks.c.id.in_(part)).values(state="indexed", updated_at=now()))

    def delete(self, keys: list[int]) -> None:
        with self.engine.begin() as c:
            for part in _chunks(map(int, keys)):
                c.execute(chromaprints.delete().where(chromaprints.c.track_id.in_(part)))
                c.execute(landmarks.delete().where(landmarks.c.track_id.in_(part)))
                c.execute(tracks.delete().where(tracks.c.id.in_(part)))

    def set_vectors(self, counts: dict[int, int], model: str) -> None:
        """Record, in one transaction, that tracks (key → vector count) now have vectors of
        ``model`` (a rebuild with another model)."""
        with self.engine.begin() as c:
            for key, n in counts.items():
                c.execute(tracks.update().where(tracks.c.id == key).values(vectors=n, model=model, updated_at=now()))

    def list_tracks(self, state: str | None = "indexed") -> list[Track]:
        q = sa.select(tracks).order_by(tracks.c.external_id)
        if state:
            q = q.where(tracks.c.state == state)
        with self.engine.connect() as c:
            return [_row_to_track(r) for r in c.execute(q)]

    def infos(self, keys) -> dict[int, TrackInfo]:
        """Current catalog entries of indexed tracks among ``keys``."""
        keys = [int(k) for k in set(keys)]
        if not keys:
            return {}
        with self.engine.connect() as c:
            rows = c.execute(sa.select(tracks).where(tracks.c.id.in_(keys), tracks.c.state == "indexed"))
            return {r.id: _row_to_track(r).info for r in rows}

    def chromaprints(self) -> dict[int, np.ndarray]:
        """Chromaprint sub-fingerprints of every indexed track, by track key."""
        return self._uint32_arrays(chromaprints.c.fingerprint)

    def landmarks(self) -> dict[int, np.ndarray]:
        """Landmark peaks of every indexed track, by track key."""
        return self._uint32_arrays(landmarks.c.peaks)

    def _uint32_arrays(self, column: sa.Column) -> dict[int, np.ndarray]:
        """A per-track array column (little-endian uint32) of every indexed track."""
        q = sa.select(column.table.c.track_id, column).join(tracks).where(tracks.c.state == "indexed")
        with self.engine.connect() as c:
            return {key: np.frombuffer(blob, "<u4").astype(np.uint32) for key, blob in c.execute(q)}

    # --- checks -------------------------------------------------------------------------
    def save_check(self, result: dict, submitter: str | None = None, idempotency_key: str | None = None) -> None:
        """Store a check result. Raises ``DuplicateCheck`` when ``submitter`` already stored a
        check under ``idempotency_key`` (two identical requests raced)."""
        try:
            with self.engine.begin() as c:
                c.execute(checks.insert().values(id=result["id"], created_at=now(), input=result["input"],
                                                 decision=result["decision"], submitter=submitter,
                                                 idempotency_key=idempotency_key, result=json.dumps(result)))
        except sa.exc.IntegrityError:
            if idempotency_key is None:
                raise
            raise DuplicateCheck(f"a check with idempotency key {idempotency_key!r} is already stored") from None

    def get_check(self, check_id: str) -> tuple[dict, str | None] | None:
        """(result, submitter) of a stored check."""
        with self.engine.connect() as c:
            r = c.execute(sa.select(checks.c.result, checks.c.submitter).where(checks.c.id == check_id)).first()
        return (json.loads(r.result), r.submitter) if r else None

    def find_idempotent(self, submitter: str | None, idempotency_key: str) -> dict | None:
        """The result that ``submitter`` stored under ``idempotency_key``, if any."""
        with self.engine.connect() as c:
            r = c.execute(sa.select(checks.c.result).where(checks.c.submitter == submitter,
                                                           checks.c.idempotency_key == idempotency_key)).first()
        return json.loads(r.result) if r else None

    def list_checks(self, *, decision: str | None = None, since: datetime | None = None,
                    submitter: str | None = None, before: tuple[datetime, str] | None = None,
                    limit: int = 50) -> list[StoredCheck]:
        """Stored checks, newest first: at most ``limit``, made at or after ``since``, with this
        ``decision`` and ``submitter`` where given, and strictly after the ``before`` position
        (the ``(created_at, id)`` of the last check of the previous page) in that order."""
        q = sa.select(checks).order_by(checks.c.created_at.desc(), checks.c.id.desc()).limit(limit)
        if decision is not None:
            q = q.where(checks.c.decision == decision)
        if since is not None:
            q = q.where(checks.c.created_at >= _utc(since))
        if submitter is not None:
            q = q.where(checks.c.submitter == submitter)
        if before is not None:
            at, check_id = _utc(before[0]), before[1]
            q = q.where(sa.or_(checks.c.created_at < at, sa.and_(checks.c.created_at == at, checks.c.id < check_id)))
        with self.engine.connect() as c:
            return [StoredCheck(json.loads(r.result), _utc(r.created_at), r.submitter) for r in c.execute(q)]

    # --- API keys (only hashes are stored) -------------------------------------------------
    def add_key(self, key_id: str, name: str, role: str, key_sha256: str) -> None:
        with self.engine.begin() as c:
            c.execute(api_keys.insert().values(id=key_id, name=name, role=role, key_sha256=key_sha256,
                                               created_at=now(), revoked_at=None))

    def key_by_hash(self, key_sha256: str):
        """The active key row with this hash, or None."""
        with self.engine.connect() as c:
            return c.execute(sa.select(api_keys).where(api_keys.c.key_sha256 == key_sha256,
                                                       api_keys.c.revoked_at.is_(None))).first()

    def list_keys(self) -> list:
        with self.engine.connect() as c:
            return list(c.execute(sa.select(api_keys).order_by(api_keys.c.created_at)))

    def revoke_key(self, key_id: str) -> None:
        with self.engine.begin() as c:
            n = c.execute(api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                          .values(revoked_at=now())).rowcount
        if not n:
            raise CatalogError(f"no active key with id '{key_id}'")

    # --- failures -----------------------------------------------------------------------
    def record_failure(self, path: str, reason: str) -> None:
        with self.engine.begin() as c:
            c.execute(failures.insert().values(path=path, reason=reason, created_at=now()))

    def list_failures(self) -> list[tuple[str, str, datetime]]:
        """(path, reason, when) of every recorded indexing failure, oldest first."""
        with self.engine.connect() as c:
            return [(r.path, r.reason, _utc(r.created_at))
                    for r in c.execute(sa.select(failures).order_by(failures.c.id))]


def connect(url: str, *, read_only: bool = False) -> sa.Engine:
    """An SQLAlchemy engine for a database URL: SQLite (WAL, foreign keys, waits for locks; a
    file it may not open or write raises ``StorageError``) or PostgreSQL (``postgresql://…`` is
    driven by psycopg 3). ``read_only``: SQLite connections that never write (``_open_read_only``);
    the file must exist."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise ClearanceError(f"cannot use the database URL ({url.split('://')[0]}://…): {exc}") from None
    if engine.dialect.name == "sqlite":
        if read_only:
            if not Path(engine.url.database or "").is_file():
                raise StorageError(_name(engine.url), "no such catalog database (nothing has been indexed into "
                                                      "this home, or --home or --db names another place)")
            event.listen(engine, "do_connect", _open_read_only)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "handle_error", lambda ctx: _sqlite_access_error(ctx, _name(engine.url)))
    return engine


def _name(url: sa.URL) -> str:
    """The database at ``url`` as a person names it: an SQLite file's path, else the URL without password."""
    return url.database if url.get_backend_name() == "sqlite" else url.render_as_string(hide_password=True)


def _require_newest_schema(engine: sa.Engine) -> None:
    """Refuse (``StorageError``) a database whose schema a reader would have to upgrade first."""
    with engine.connect() as c:
        current = MigrationContext.configure(c).get_current_revision()
    if current != (newest := migrate.head()):
        raise StorageError(_name(engine.url), f"the schema is at revision {current}, this version of Clearance "
                                              f"reads {newest}; a command that only reads does not upgrade it: "
                                              "run one that changes the catalog, as a user who may write it")


def _open_read_only(dialect, _record, cargs, cparams):
    """A connection to the SQLite file ``cargs[0]`` that cannot write. SQLite reads a WAL
    database through a ``-shm`` file beside it, which it cannot create in a folder this user may
    not write: there, when no ``-wal`` file exists (no writer has the database open, so the file
    holds every commit), the database is read as immutable, without locks."""
    sqlite3, uri = dialect.loaded_dbapi, f"file:{quote(cargs[0])}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, **cparams)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master")
    except sqlite3.OperationalError as exc:
        conn.close()
        if exc.sqlite_errorname != "SQLITE_READONLY_DIRECTORY" or Path(cargs[0] + "-wal").exists():
            raise
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, **cparams)
    return conn


def _sqlite_access_error(ctx: sa.engine.ExceptionContext, database: str) -> None:
    """SQLite's refusals to open or write its file, as a ``StorageError`` naming the ``database``."""
    name = getattr(ctx.original_exception, "sqlite_errorname", "")
    if name == "SQLITE_CANTOPEN":
        reason = "cannot open it: the file or its folder is missing, or this user may not read it"
    elif name == "SQLITE_READONLY_DIRECTORY":
        reason = "this user may not write in its folder, where SQLite keeps the write-ahead log"
    elif name.startswith("SQLITE_READONLY"):
        reason = "this user may not write it"
    else:
        return
    raise StorageError(database, f"{reason} ({ctx.original_exception})")


def _chunks(values: Iterable, size: int = 10_000) -> list[list]:
    """``values`` in parts small enough for one ``IN (…)`` on every database."""
    values = list(values)
    return [values[i:i + size] for i in range(0, len(values), size)]


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


# =======================================================================================
# Review: dashboard sign-in sessions and the append-only audit log (service/dashboard).
# Verdicts on checks and rights changes made by people are appended here and never changed;
# on SQLite triggers refuse UPDATE and DELETE of audit rows.
# =======================================================================================

review_sessions = sa.Table(
    "review_sessions", metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),   # the cookie's token is never stored
    sa.Column("key_id", sa.String(16), sa.ForeignKey("api_keys.id"), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
)

audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor_key_id", sa.String(16), nullable=False),
    sa.Column("actor_name", sa.String(256), nullable=False),
    sa.Column("subject", sa.String(16), nullable=False),          # check | track
    sa.Column("subject_id", sa.String(512), nullable=False),      # check id | track external_id
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("previous", sa.String(32), nullable=False),         # review state or rights before
    sa.Column("new", sa.String(32), nullable=False),              # … and after
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Index("audit_log_subject", "subject", "subject_id", "id"),
)

for _verb in ("UPDATE", "DELETE"):
    event.listen(audit_log, "after_create", sa.DDL(
        f"CREATE TRIGGER IF NOT EXISTS audit_log_no_{_verb.lower()} BEFORE {_verb} ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END").execute_if(dialect="sqlite"))

UNREVIEWED = "unreviewed"


class ReviewConflict(ClearanceError):
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
    ``owner`` and ``track`` select checks with any match of that owner or external id."""

    decision: str | None = None
    state: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    owner: str | None = None
    track: str | None = None


def _match_field(key: str, value: str):
    """``checks.result`` contains a match with ``key`` equal to ``value``. Matches are the only
    objects in a result with ``external_id`` and ``owner`` keys, and ``save_check`` writes the
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
    return q


def _row_to_audit(r) -> AuditEntry:
    return AuditEntry(r.id, _utc(r.at), Actor(r.actor_key_id, r.actor_name), r.subject, r.subject_id, r.action,
                      r.previous, r.new, r.reason, r.note)


def _row_to_check(r) -> CheckRecord:
    return CheckRecord(r.id, _utc(r.created_at), r.submitter, json.loads(r.result), r.state, r.last)


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

    def record_verdict(self, check_id: str, action: str, new_state: str, *, actor: Actor, reason: str, note: str,
                       seen_audit_id: int) -> AuditEntry:
        """Append a verdict on a check. ``seen_audit_id`` is the latest entry the reviewer saw
        (0: none); if another was added since, ``ReviewConflict`` is raised and nothing is written."""
        with self.engine.begin() as c:
            if not c.execute(sa.select(checks.c.id).where(checks.c.id == check_id)).first():
                raise CatalogError(f"no check with id '{check_id}'")
            last = c.execute(sa.select(audit_log).where(audit_log.c.subject == "check",
                                                        audit_log.c.subject_id == check_id)
                             .order_by(audit_log.c.id.desc()).limit(1)).first()
            if (last.id if last else 0) != seen_audit_id:
                raise ReviewConflict(f"check '{check_id}' was reviewed by {last.actor_name} meanwhile "
                                     f"({last.action}); reload the page and decide again")
            return self._append(c, actor, "check", check_id, action, last.new if last else UNREVIEWED,
                                new_state, reason, note)

    def change_rights(self, external_id: str, rights: Rights, *, actor: Actor, note: str) -> AuditEntry:
        """Change a track's rights and audit it, in one transaction."""
        with self.engine.begin() as c:
            before = c.execute(sa.select(tracks.c.rights).where(tracks.c.external_id == external_id)).scalar()
            if before is None:
                raise CatalogError(f"no track with external_id '{external_id}'")
            c.execute(tracks.update().where(tracks.c.external_id == external_id)
                      .values(rights=rights.value, updated_at=now()))
            return self._append(c, actor, "track", external_id, "rights", before, rights.value, "", note)

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
        """Indexed tracks whose external id, title or owner contains ``text``."""
        q = sa.select(tracks).where(tracks.c.state == "indexed").order_by(tracks.c.external_id).limit(limit)
        if text:
            q = q.where(sa.or_(*(col.contains(text, autoescape=True)
                                 for col in (tracks.c.external_id, tracks.c.title, tracks.c.owner))))
        if rights:
            q = q.where(tracks.c.rights == rights.value)
        with self.engine.connect() as c:
            return [_row_to_track(r) for r in c.execute(q)]

    def owners(self) -> list[str]:
        """Distinct owners of indexed tracks, for the queue's filter."""
        with self.engine.connect() as c:
            return list(c.execute(sa.select(tracks.c.owner).distinct().where(tracks.c.state == "indexed",
                                                                               tracks.c.owner != "")
                                  .order_by(tracks.c.owner)).scalars())

    @staticmethod
    def _append(c, actor: Actor, subject: str, subject_id: str, action: str, previous: str, new: str,
                reason: str, note: str) -> AuditEntry:
        values = dict(at=now(), actor_key_id=actor.key_id, actor_name=actor.name, subject=subject,
                      subject_id=subject_id, action=action, previous=previous, new=new, reason=reason, note=note)
        key = c.execute(audit_log.insert().values(**values)).inserted_primary_key[0]
        return AuditEntry(int(key), values["at"], actor, subject, subject_id, action, previous, new, reason, note)
