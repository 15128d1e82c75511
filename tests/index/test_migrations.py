"""Schema migrations (alembic): the migration scripts make exactly the schema of
``index.schema.metadata``, and every way a database can be found is brought to it."""
from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from detector.policy import WorkInfo, WorkRights
from index import migrate
from index.reviews import Actor, Review
from index.schema import metadata
from index.store import Store, connect


def reset(url: str) -> None:
    """Drop everything in the database at ``url``."""
    engine = connect(url)
    with engine.begin() as c:
        if c.dialect.name == "postgresql":
            c.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        else:
            metadata.drop_all(c)
            c.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


def assert_schema_is_metadata(url: str, migrate_first: bool = True) -> None:
    """Run every migration on the (empty) database at ``url``, then compare it with the metadata:
    a table or column added to index/schema.py without a migration fails here."""
    engine = connect(url)
    with engine.begin() as c:
        if migrate_first:
            command.upgrade(migrate.config(c), "head")
        ctx = MigrationContext.configure(c, opts={"compare_type": True})
        assert ctx.get_current_revision() == migrate.head()
        diff = compare_metadata(ctx, metadata)
    engine.dispose()
    assert diff == [], f"index/schema.py and the migrations differ; run `python -m index.migrate revision -m …`: {diff}"


def test_migrations_make_the_schema_of_the_metadata(tmp_path):
    assert_schema_is_metadata(f"sqlite:///{tmp_path / 'migrated.db'}")


def test_new_and_premigration_databases_are_brought_to_the_newest_revision(tmp_path):
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    Store(fresh)
    assert_schema_is_metadata(fresh, migrate_first=False)
    # a database made by create_all before there were migrations, without some tables
    old = f"sqlite:///{tmp_path / 'old.db'}"
    engine = connect(old)
    metadata.create_all(engine, tables=[metadata.tables["tracks"], metadata.tables["chromaprints"]])
    engine.dispose()
    Store(old)
    assert_schema_is_metadata(old, migrate_first=False)


def test_landmark_peaks_stored_before_their_version_was_recorded_are_marked_for_a_rebuild(tmp_path):
    url = f"sqlite:///{tmp_path / 'at-0002.db'}"
    engine = connect(url)
    with engine.begin() as c:
        command.upgrade(migrate.config(c), "0002")
        c.execute(sa.text("INSERT INTO tracks (id, external_id, title, owner, rights, content_sha256, source_path, "
                          "duration_s, model, vectors, state, created_at, updated_at) VALUES (1, 'old', '', '', "
                          "'protected', :sha, '', 1.0, 'm', 0, 'indexed', '2026-11-30', '2026-11-30')"), {"sha": "0" * 64})
        c.execute(sa.text("INSERT INTO landmarks (track_id, peaks) VALUES (1, :p)"), {"p": b"\x01\x00\x00\x00"})
    engine.dispose()
    store = Store(url)
    assert store.stale_peaks("peaks-v2") == [1] and store.stale_peaks("peaks-v1") == []
    assert store.landmarks()[1].tolist() == [1]
    # and no pitch classes (the version layer's): the same rebuild takes them
    assert store.stale_pitch_classes("pc-v1") == [1] and store.pitch_classes() == {}
    store.set_pitch_classes({1: np.ones((12, 3), np.float16)}, "pc-v1")
    assert store.stale_pitch_classes("pc-v1") == [] and store.pitch_classes()[1].shape == (12, 3)


def test_a_catalog_made_before_works_keeps_its_tracks_and_fingerprints_and_gains_works(tmp_path):
    assert_upgrades_a_catalog_made_before_works(f"sqlite:///{tmp_path / 'at-0004.db'}")


def assert_upgrades_a_catalog_made_before_works(url: str) -> None:
    """A catalog at revision 0004 with a track and its fingerprint, opened by this version: the
    track and fingerprint stay, the track names no work, works can be added and named, audited."""
    engine = connect(url)
    with engine.begin() as c:
        command.upgrade(migrate.config(c), "0004")
        c.execute(sa.text("INSERT INTO tracks (id, external_id, title, owner, rights, content_sha256, source_path, "
                          "duration_s, model, vectors, state, created_at, updated_at) VALUES (1, 'old', 'Old', 'Label', "
                          "'licensed', :sha, '', 1.0, 'm', 0, 'indexed', '2026-12-01', '2026-12-01')"), {"sha": "0" * 64})
        c.execute(sa.text("INSERT INTO chromaprints (track_id, fingerprint) VALUES (1, :f)"), {"f": b"\x07\x00\x00\x00"})
    engine.dispose()
    store = Store(url)                   # upgrades in place: the tracks' rows and fingerprints stay
    assert_schema_is_metadata(url, migrate_first=False)
    [track] = store.list_tracks()
    assert (track.external_id, track.rights.value, track.work) == ("old", "licensed", None)
    assert store.chromaprints()[1].tolist() == [7]
    assert store.list_works() == []
    review, actor = Review(store), Actor("test", "Test")
    review.put_work("T-345.246.800-1", title="The Song", owner="Publisher", rights=WorkRights.protected, actor=actor)
    review.link_work("old", "T-345.246.800-1", actor=actor, note="cue sheet")
    assert store.find("old").info.work == WorkInfo("T-345.246.800-1", "The Song", "Publisher", WorkRights.protected)
    assert [(e.subject, e.action, e.previous, e.new) for e in review.audit_trail("work") + review.audit_trail("track")] \
        == [("work", "rights", "", "protected"), ("track", "work", "", "T-345.246.800-1")]
