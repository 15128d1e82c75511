"""alembic's environment: migrations run on the connection ``index.migrate`` hands over, or on
``sqlalchemy.url`` (``alembic -x db=URL …`` from the command line)."""
from alembic import context

from index.schema import metadata
from index.store import connect

cfg = context.config


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if cfg.attributes.get("connection") is not None:
    run(cfg.attributes["connection"])
else:
    url = context.get_x_argument(as_dictionary=True).get("db") or cfg.get_main_option("sqlalchemy.url")
    with connect(url).begin() as connection:
        run(connection)
