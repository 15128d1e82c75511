"""PostgreSQL: a private server on loopback; indexing jobs killed and run again, takedowns, and
the schema made by the migrations equal to ``index.schema.metadata``."""
from __future__ import annotations

import os
import shutil
import subprocess

import sqlalchemy as sa

from index.store import Store
from tests.index.conftest import CLEARANCE, assert_complete, kill_at_random_points, seen
from tests.index.test_migrations import assert_schema_is_metadata, assert_upgrades_a_catalog_made_before_works, reset


def test_killed_jobs_on_postgresql_finish_every_track_once(pg_url, excerpts, embedder, tmp_path):
    reset(pg_url)
    folder = tmp_path / "in"
    folder.mkdir()
    for f in sorted(excerpts.iterdir())[:14]:
        shutil.copy(f, folder / f.name)
    home = tmp_path / "home"
    kill_at_random_points(folder, home, pg_url, embedder, 2, 5)
    env = {**os.environ, "CLEARANCE_HOME": str(home), "CLEARANCE_INDEX_WORKERS": "2"}
    p = subprocess.run([*CLEARANCE, "--db", pg_url, "index", str(folder), "--rights", "protected"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    assert_complete(seen(home, pg_url, embedder), home, embedder, 14)
    assert not (home / "catalog.db").exists()                     # everything went to PostgreSQL
    gone = sorted(folder.iterdir())[0].stem
    r = subprocess.run([*CLEARANCE, "--db", pg_url, "remove", gone], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    after = seen(home, pg_url, embedder)
    assert gone not in {t.external_id for t in after.rows.values()}
    assert_complete(after, home, embedder, 13)


def test_migrations_make_the_schema_of_the_metadata_on_postgresql(pg_url):
    reset(pg_url)
    assert_schema_is_metadata(pg_url)
    Store(pg_url)                         # opening a migrated database changes nothing
    assert_schema_is_metadata(pg_url, migrate_first=False)
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    engine.dispose()


def test_a_catalog_made_before_works_is_upgraded_on_postgresql(pg_url):
    reset(pg_url)
    assert_upgrades_a_catalog_made_before_works(pg_url)
