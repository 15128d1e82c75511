"""The catalog database (SQLAlchemy; SQLite by default): works, tracks, their Chromaprint
fingerprints, stored check results, API keys and failed indexing attempts. The tables are in
``index/schema.py``; the review's (sessions, verdicts, audit) are read and written by
``index/reviews.py``.

The database is the source of truth for which tracks exist; the vector index follows it
(``index/catalog.py`` reconciles the two after a crash).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from urllib.parse import quote

import numpy as np
import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event

from detector.errors import ClearanceError, Conflict, InvalidRequest, NotFound, StorageError
from detector.policy import Rights, TrackInfo, WorkInfo, WorkRights
from index import migrate
from index.schema import (WORK_ID_MAX, api_keys, checks, chromaprints, failures, landmarks, metadata, pitch_classes,
                          tracks, works)


class DuplicateCheck(Conflict):
    """A submitter stored a second check under an idempotency key it had used already."""


class TrackState(str, Enum):
    """Where a track is in indexing (the ``tracks.state`` column): ``pending`` from its insert
    until the index holding its vectors is published, then ``indexed``; readers see only
    ``indexed`` tracks."""

    pending = "pending"
    indexed = "indexed"


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
    state: TrackState
    work: WorkInfo | None = None         # the work it records, if the catalog names one

    @property
    def info(self) -> TrackInfo:
        return TrackInfo(self.external_id, self.title, self.owner, self.rights, self.work)

    def to_dict(self) -> dict:
        return {"external_id": self.external_id, "title": self.title, "owner": self.owner,
                "rights": self.rights.value, "work": work_dict(self.work), "duration_s": round(self.duration_s, 2),
                "sha256": self.content_sha256, "model": self.model, "vectors": self.vectors,
                "source_path": self.source_path}


def work_dict(work: WorkInfo | None, recordings: list[str] | None = None) -> dict | None:
    """A work as the API and the CLI's JSON show it, with the tracks that record it where given."""
    if work is None:
        return None
    shown = {"work_id": work.external_id, "title": work.title, "owner": work.owner, "rights": work.rights.value}
    return shown if recordings is None else {**shown, "recordings": recordings}


@dataclass(frozen=True)
class StoredCheck:
    """A stored check: its result (as ``service.engine.result_json`` made it), when it was made
    (UTC) and the id of the API key that submitted it (None from the CLI)."""

    result: dict
    created_at: datetime
    submitter: str | None


def now() -> datetime:
    return datetime.now(timezone.utc)


def utc(t: datetime) -> datetime:
    """``t`` in UTC; naive times (SQLite hands them back so) are taken to be UTC already."""
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def select_tracks():
    """SELECT tracks with the work each records (``track_from_row`` reads the rows)."""
    return (sa.select(tracks, works.c.external_id.label("work_id"), works.c.title.label("work_title"),
                      works.c.owner.label("work_owner"), works.c.rights.label("work_rights"))
            .select_from(tracks.outerjoin(works, tracks.c.work_key == works.c.id)))


def track_from_row(r) -> Track:
    work = WorkInfo(r.work_id, r.work_title, r.work_owner, WorkRights(r.work_rights)) if r.work_id else None
    return Track(r.id, r.external_id, r.title, r.owner, Rights(r.rights), r.content_sha256, r.source_path,
                 r.duration_s, r.model, r.vectors, TrackState(r.state), work)


def work_from_row(r) -> WorkInfo:
    return WorkInfo(r.external_id, r.title, r.owner, WorkRights(r.rights))


def insert_work(c: sa.Connection, work: WorkInfo) -> int:
    """Add ``work`` to the catalog in ``c``'s transaction; its key."""
    return int(c.execute(works.insert().values(external_id=work.external_id, title=work.title, owner=work.owner,
                                               rights=work.rights.value, created_at=now(), updated_at=now())
                         ).inserted_primary_key[0])


def valid_work_id(work_id: str) -> str:
    """``work_id`` stripped; ``InvalidRequest`` unless it is 1 to ``WORK_ID_MAX`` characters."""
    work_id = work_id.strip()
    if not 0 < len(work_id) <= WORK_ID_MAX:
        raise InvalidRequest(f"a work id is 1 to {WORK_ID_MAX} characters (an ISWC such as T-345.246.800-1, or the "
                             f"catalog's own id); got {work_id[:80]!r}")
    return work_id


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
            r = c.execute(select_tracks().where(tracks.c.content_sha256 == sha256)).first()
        return track_from_row(r) if r else None

    def external_ids_by_hash(self, hashes: Iterable[str]) -> dict[str, str]:
        """Content sha256 → external id, for the tracks (in any state) whose content is among ``hashes``."""
        with self.engine.connect() as c:
            return {sha: eid for part in _chunks(set(hashes)) for sha, eid in c.execute(
                sa.select(tracks.c.content_sha256, tracks.c.external_id).where(tracks.c.content_sha256.in_(part)))}

    def find(self, external_id: str) -> Track | None:
        with self.engine.connect() as c:
            r = c.execute(select_tracks().where(tracks.c.external_id == external_id)).first()
        return track_from_row(r) if r else None

    # --- works --------------------------------------------------------------------------
    def find_work(self, external_id: str) -> WorkInfo | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(works).where(works.c.external_id == external_id)).first()
        return work_from_row(r) if r else None

    def list_works(self, external_id: str | None = None, text: str = "", limit: int | None = None
                   ) -> list[tuple[WorkInfo, list[str]]]:
        """Every work (or the one ``external_id``, or the first ``limit`` whose id, title or owner
        contains ``text``) with the external ids of the indexed tracks that record it, by work id."""
        q = (sa.select(works, tracks.c.external_id.label("track"))
             .select_from(works.outerjoin(tracks, sa.and_(tracks.c.work_key == works.c.id,
                                                          tracks.c.state == TrackState.indexed.value)))
             .order_by(works.c.external_id, tracks.c.external_id))
        chosen = sa.select(works.c.id).order_by(works.c.external_id).limit(limit)
        if external_id is not None:
            chosen = chosen.where(works.c.external_id == external_id)
        if text:
            chosen = chosen.where(sa.or_(*(col.contains(text, autoescape=True)
                                           for col in (works.c.external_id, works.c.title, works.c.owner))))
        q = q.where(works.c.id.in_(chosen))
        out: dict[str, tuple[WorkInfo, list[str]]] = {}
        with self.engine.connect() as c:
            for r in c.execute(q):
                _, recordings = out.setdefault(r.external_id, (work_from_row(r), []))
                if r.track:
                    recordings.append(r.track)
        return list(out.values())

    def add_pending(self, *, external_id: str, title: str, owner: str, rights: Rights, sha256: str,
                    source_path: str, duration_s: float, model: str, vectors: int, fingerprint: np.ndarray,
                    peaks: np.ndarray, peaks_version: str, classes: np.ndarray, classes_version: str,
                    work: WorkInfo | None = None) -> int:
        """Insert a track in state ``pending`` with its Chromaprint, landmark peaks (picked as
        ``peaks_version`` says) and pitch classes (``classes_version``), recording the work it
        records if given: the catalog's work of that id, or ``work`` added as it says where the
        catalog has none (a work already there keeps what it has: its rights change only through
        ``Review.put_work``, audited), in the same transaction: a track refused leaves no work
        behind. Returns the track's key."""
        if work:
            valid_work_id(work.external_id)
        t = now()
        with self.engine.begin() as c:
            if c.execute(sa.select(tracks.c.id).where(tracks.c.external_id == external_id)).first():
                raise Conflict(f"external_id '{external_id}' is already used by another recording; "
                               "remove it first or give this file another id")
            work_key = None
            if work:
                r = c.execute(sa.select(works.c.id).where(works.c.external_id == work.external_id)).first()
                work_key = int(r.id) if r else insert_work(c, work)
            key = c.execute(tracks.insert().values(
                external_id=external_id, title=title, owner=owner, rights=rights.value, content_sha256=sha256,
                source_path=source_path, duration_s=duration_s, model=model, vectors=vectors,
                state=TrackState.pending.value, created_at=t, updated_at=t, work_key=work_key)).inserted_primary_key[0]
            c.execute(chromaprints.insert().values(track_id=key, fingerprint=fingerprint.astype("<u4").tobytes()))
            c.execute(landmarks.insert().values(track_id=key, peaks=peaks.astype("<u4").tobytes(),
                                                version=peaks_version))
            c.execute(pitch_classes.insert().values(track_id=key, classes=classes.astype("<f2").tobytes(),
                                                    version=classes_version))
        return int(key)

    def mark_indexed(self, keys: list[int]) -> None:
        with self.engine.begin() as c:
            for part in _chunks(map(int, keys)):
                c.execute(tracks.update().where(tracks.c.id.in_(part))
                          .values(state=TrackState.indexed.value, updated_at=now()))

    def delete(self, keys: list[int]) -> None:
        with self.engine.begin() as c:
            for part in _chunks(map(int, keys)):
                c.execute(chromaprints.delete().where(chromaprints.c.track_id.in_(part)))
                c.execute(landmarks.delete().where(landmarks.c.track_id.in_(part)))
                c.execute(pitch_classes.delete().where(pitch_classes.c.track_id.in_(part)))
                c.execute(tracks.delete().where(tracks.c.id.in_(part)))

    def set_vectors(self, counts: dict[int, int], model: str) -> None:
        """Record, in one transaction, that tracks (key → vector count) now have vectors of
        ``model`` (a rebuild with another model)."""
        with self.engine.begin() as c:
            for key, n in counts.items():
                c.execute(tracks.update().where(tracks.c.id == key).values(vectors=n, model=model, updated_at=now()))

    def list_tracks(self, state: TrackState | None = TrackState.indexed) -> list[Track]:
        q = select_tracks().order_by(tracks.c.external_id)
        if state:
            q = q.where(tracks.c.state == TrackState(state).value)
        with self.engine.connect() as c:
            return [track_from_row(r) for r in c.execute(q)]

    def infos(self, keys) -> dict[int, TrackInfo]:
        """Current catalog entries of indexed tracks among ``keys``."""
        keys = [int(k) for k in set(keys)]
        if not keys:
            return {}
        with self.engine.connect() as c:
            rows = c.execute(select_tracks().where(tracks.c.id.in_(keys), tracks.c.state == TrackState.indexed.value))
            return {r.id: track_from_row(r).info for r in rows}

    def chromaprints(self, keys: Iterable[int] | None = None) -> dict[int, np.ndarray]:
        """Chromaprint sub-fingerprints of every indexed track, or of the tracks ``keys``
        (whatever their state), by track key."""
        return self._arrays(chromaprints.c.fingerprint, keys)

    def landmarks(self, keys: Iterable[int] | None = None) -> dict[int, np.ndarray]:
        """Landmark peaks of every indexed track, or of the tracks ``keys`` (whatever their
        state), by track key."""
        return self._arrays(landmarks.c.peaks, keys)

    def pitch_classes(self, keys: Iterable[int] | None = None) -> dict[int, np.ndarray]:
        """Pitch-class power, (12, frames) float16, of every indexed track that has it, or of
        the tracks ``keys``, by track key."""
        return {k: a.reshape(12, -1) for k, a in self._arrays(pitch_classes.c.classes, keys, "<f2").items()}

    def stale_pitch_classes(self, version: str) -> list[int]:
        """Keys of indexed tracks with no pitch classes, or pitch classes computed otherwise than
        ``version``."""
        q = (sa.select(tracks.c.id).outerjoin(pitch_classes)
             .where(tracks.c.state == TrackState.indexed.value,
                    sa.or_(pitch_classes.c.version.is_(None), pitch_classes.c.version != version)))
        with self.engine.connect() as c:
            return [key for key, in c.execute(q)]

    def set_pitch_classes(self, classes: dict[int, np.ndarray], version: str) -> None:
        """Replace, in one transaction, the pitch classes of tracks (key → (12, frames))."""
        with self.engine.begin() as c:
            for key, a in classes.items():
                c.execute(pitch_classes.delete().where(pitch_classes.c.track_id == key))
                c.execute(pitch_classes.insert().values(track_id=key, classes=a.astype("<f2").tobytes(),
                                                        version=version))

    def stale_peaks(self, version: str) -> list[int]:
        """Keys of indexed tracks whose landmark peaks were picked otherwise than ``version``."""
        q = (sa.select(landmarks.c.track_id).join(tracks)
             .where(tracks.c.state == TrackState.indexed.value, landmarks.c.version != version))
        with self.engine.connect() as c:
            return [key for key, in c.execute(q)]

    def set_peaks(self, peaks: dict[int, np.ndarray], version: str) -> None:
        """Replace, in one transaction, the landmark peaks of tracks (key → peaks picked as ``version``)."""
        with self.engine.begin() as c:
            for key, p in peaks.items():
                c.execute(landmarks.update().where(landmarks.c.track_id == key)
                          .values(peaks=p.astype("<u4").tobytes(), version=version))

    def _arrays(self, column: sa.Column, keys: Iterable[int] | None = None, dtype: str = "<u4") -> dict[int, np.ndarray]:
        """A per-track array column (little-endian ``dtype``) of every indexed track, or of ``keys``."""
        q = sa.select(column.table.c.track_id, column).join(tracks)
        queries = [q.where(tracks.c.state == TrackState.indexed.value)] if keys is None else \
            [q.where(tracks.c.id.in_(some)) for some in _chunks(keys)]
        with self.engine.connect() as c:
            return {key: np.frombuffer(blob, dtype).astype(np.dtype(dtype).newbyteorder("="))
                    for q in queries for key, blob in c.execute(q)}

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
            q = q.where(checks.c.created_at >= utc(since))
        if submitter is not None:
            q = q.where(checks.c.submitter == submitter)
        if before is not None:
            at, check_id = utc(before[0]), before[1]
            q = q.where(sa.or_(checks.c.created_at < at, sa.and_(checks.c.created_at == at, checks.c.id < check_id)))
        with self.engine.connect() as c:
            return [StoredCheck(json.loads(r.result), utc(r.created_at), r.submitter) for r in c.execute(q)]

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
            raise NotFound(f"no active key with id '{key_id}'")

    # --- failures -----------------------------------------------------------------------
    def record_failure(self, path: str, reason: str) -> None:
        with self.engine.begin() as c:
            c.execute(failures.insert().values(path=path, reason=reason, created_at=now()))

    def list_failures(self) -> list[tuple[str, str, datetime]]:
        """(path, reason, when) of every recorded indexing failure, oldest first."""
        with self.engine.connect() as c:
            return [(r.path, r.reason, utc(r.created_at))
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
