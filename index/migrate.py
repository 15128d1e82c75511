"""Schema migrations of the catalog database (alembic; scripts in ``index/migrations``).

``ensure_schema`` runs whenever a ``Store`` opens a database: an empty database gets the whole
schema of ``index.schema.metadata`` and is stamped with the newest revision; a database at an
older revision is upgraded; one made before migrations existed gets its missing tables and is
stamped. To add a migration after changing ``index/schema.py``::

    python -m index.migrate revision -m "add the review tables"

which upgrades a scratch SQLite database through every migration and writes the difference
between it and ``metadata`` as a new script in ``index/migrations/versions/`` (read it: alembic
does not see triggers, server defaults on SQLite or renames). ``python -m index.migrate
baseline`` throws the scripts away and writes one baseline from an empty database.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
_ADVISORY_LOCK = 0x436C6561   # 'Clea': one schema change at a time on PostgreSQL


def config(connection: sa.Connection | None = None, url: str | None = None) -> Config:
    """An alembic configuration running on ``connection`` (or opening ``url``)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str | None:
    """The newest revision of the migration scripts."""
    return ScriptDirectory.from_config(config()).get_current_head()


def ensure_schema(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """Bring the database to the newest schema (see the module docstring)."""
    newest = head()
    for attempt in range(2):
        try:
            with engine.begin() as c:
                if c.dialect.name == "postgresql":
                    c.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})
                current = MigrationContext.configure(c).get_current_revision()
                if current == newest:
                    return
                if current is None:
                    # empty, or made by create_all before migrations: create what is missing
                    metadata.create_all(c)
                    command.stamp(config(c), "head")
                else:
                    command.upgrade(config(c), "head")
            return
        except sa.exc.IntegrityError:
            if attempt:            # two processes stamped a new SQLite database at once: one won
                raise


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="write a migration from the difference with index.schema.metadata")
    rev.add_argument("-m", "--message", required=True)
    sub.add_parser("baseline", help="replace every migration by one baseline of index.schema.metadata")
    args = ap.parse_args(argv)
    if args.cmd == "baseline":
        for old in (MIGRATIONS / "versions").glob("*.py"):
            old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/scratch.db"
        cfg = config(url=url)
        command.upgrade(cfg, "head")
        message = "baseline" if args.cmd == "baseline" else args.message
        command.revision(cfg, message=message, autogenerate=True,
                         rev_id=f"{len(list((MIGRATIONS / 'versions').glob('*.py'))) + 1:04d}")


if __name__ == "__main__":
    main()
