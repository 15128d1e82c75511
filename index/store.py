"""The catalog database (SQLAlchemy; SQLite by default): tracks, their Chromaprint
fingerprints, stored check results and failed indexing attempts.

The database is the source of truth for which tracks exist; the vector index follows it
(``index/catalog.py`` reconciles the two after a crash).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import sqlalchemy as sa
from sqlalchemy import event

from detector.errors import ClearanceError
from detector.policy import Rights, TrackInfo

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
)

chromaprints = sa.Table(
    "chromaprints", metadata,
    sa.Column("track_id", sa.Integer, sa.ForeignKey("tracks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("fingerprint", sa.LargeBinary, nullable=False),   # little-endian uint32 array
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

failures = sa.Table(
    "failures", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


class CatalogError(ClearanceError):
    """A catalog operation that cannot be done as asked (unknown track, id clash)."""


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


def now() -> datetime:
    return datetime.now(timezone.utc)


def _row_to_track(r) -> Track:
    return Track(r.id, r.external_id, r.title, r.owner, Rights(r.rights), r.content_sha256, r.source_path,
                 r.duration_s, r.model, r.vectors, r.state)


class Store:
    """Typed access to the catalog database at ``url``."""

    def __init__(self, url: str):
        self.url = url
        self.engine = sa.create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    # --- tracks -------------------------------------------------------------------------
    def find_by_hash(self, sha256: str) -> Track | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(tracks).where(tracks.c.content_sha256 == sha256)).first()
        return _row_to_track(r) if r else None

    def find(self, external_id: str) -> Track | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(tracks).where(tracks.c.external_id == external_id)).first()
        return _row_to_track(r) if r else None

    def add_pending(self, *, external_id: str, title: str, owner: str, rights: Rights, sha256: str,
                    source_path: str, duration_s: float, model: str, vectors: int, fingerprint: np.ndarray) -> int:
        """Insert a track in state ``pending`` with its Chromaprint; returns its key."""
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
        return int(key)

    def mark_indexed(self, keys: list[int]) -> None:
        if keys:
            with self.engine.begin() as c:
                c.execute(tracks.update().where(tracks.c.id.in_(keys)).values(state="indexed", updated_at=now()))

    def delete(self, keys: list[int]) -> None:
        if keys:
            with self.engine.begin() as c:
                c.execute(chromaprints.delete().where(chromaprints.c.track_id.in_(keys)))
                c.execute(tracks.delete().where(tracks.c.id.in_(keys)))

    def set_rights(self, external_id: str, rights: Rights) -> Track:
        with self.engine.begin() as c:
            n = c.execute(tracks.update().where(tracks.c.external_id == external_id)
                          .values(rights=rights.value, updated_at=now())).rowcount
        if not n:
            raise CatalogError(f"no track with external_id '{external_id}'")
        return self.find(external_id)

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
        """Fingerprints of every indexed track, by track key."""
        q = sa.select(chromaprints).join(tracks).where(tracks.c.state == "indexed")
        with self.engine.connect() as c:
            return {r.track_id: np.frombuffer(r.fingerprint, "<u4").astype(np.uint32) for r in c.execute(q)}

    # --- checks -------------------------------------------------------------------------
    def save_check(self, result: dict, submitter: str | None = None, idempotency_key: str | None = None) -> None:
        with self.engine.begin() as c:
            c.execute(checks.insert().values(id=result["id"], created_at=now(), input=result["input"],
                                             decision=result["decision"], submitter=submitter,
                                             idempotency_key=idempotency_key, result=json.dumps(result)))

    def get_check(self, check_id: str) -> tuple[dict, str | None] | None:
        """(result, submitter) of a stored check."""
        with self.engine.connect() as c:
            r = c.execute(sa.select(checks.c.result, checks.c.submitter).where(checks.c.id == check_id)).first()
        return (json.loads(r.result), r.submitter) if r else None

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


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()
