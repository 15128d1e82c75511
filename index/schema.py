"""The tables of the catalog database, in one SQLAlchemy ``metadata``: the catalog's (works,
tracks, their Chromaprint fingerprints, landmark peaks and pitch classes, stored checks, API keys, failed indexing
attempts; ``index/store.py``) and the review's (dashboard sessions, the audit log;
``index/reviews.py``).

``tests/index/test_migrations.py`` fails when these tables and the migrations differ.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import event

metadata = sa.MetaData()
WORK_ID_MAX = 32            # characters of a work's id: it is also what an audited change of a track's work records

works = sa.Table(                   # the songs that recordings record: a right of their own
    "works", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("external_id", sa.String(WORK_ID_MAX), nullable=False, unique=True),   # an ISWC or the catalog's own id
    sa.Column("title", sa.String(1024), nullable=False, default=""),
    sa.Column("owner", sa.String(512), nullable=False, default=""),          # the work's rights holder
    sa.Column("rights", sa.String(16), nullable=False),                      # protected | licensed | unknown
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

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
    sa.Column("work_key", sa.Integer, sa.ForeignKey("works.id"), nullable=True, index=True),   # the work it records
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
    # how they were picked (``detector.landmarks.PEAKS``); rows from before it was recorded: peaks-v1
    sa.Column("version", sa.String(16), nullable=False, server_default="peaks-v1"),
)

pitch_classes = sa.Table(           # the version layer's (detector/version.py)
    "pitch_classes", metadata,
    sa.Column("track_id", sa.Integer, sa.ForeignKey("tracks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("classes", sa.LargeBinary, nullable=False),       # little-endian float16 (12, frames), row-major
    sa.Column("version", sa.String(16), nullable=False),        # detector.version_model.PITCH_CLASSES
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

# =======================================================================================
# Review (index/reviews.py): dashboard sign-in sessions and the append-only audit log.
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
    sa.Column("subject", sa.String(16), nullable=False),          # check | track | work
    sa.Column("subject_id", sa.String(512), nullable=False),      # check id | track or work external_id
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
