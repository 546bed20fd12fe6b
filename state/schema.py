"""Is the store's schema at the newest migration? Answered without importing alembic.

Importing alembic costs about a third of the command's start-up, and nearly every
start finds the schema already migrated; so the revision is read with a plain query
and alembic is loaded only when there is something to migrate.
"""

from __future__ import annotations

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

# The newest revision in state/migrations/versions; tests/unit/test_schema.py fails
# when a migration is added without moving this.
HEAD_REVISION = "0010"
VERSION_TABLE = "alembic_version"


def at_head(engine: Engine) -> bool:
    """True when the store records exactly the newest revision (so nothing to migrate).

    Anything else (a new database, an older revision, a revision this code does not
    know) is left to alembic, which migrates or explains.
    """
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return False
        revisions = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
        return list(revisions) == [HEAD_REVISION]
