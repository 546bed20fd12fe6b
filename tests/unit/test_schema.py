"""Store.open skips alembic only when the store is at the newest revision, and
migrates a store left at an older one."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from state import Store
from state.db import MIGRATIONS
from state.schema import HEAD_REVISION, at_head


def test_head_revision_is_the_newest_migration() -> None:
    """Store.open trusts HEAD_REVISION to skip alembic; a new migration must move it."""
    assert ScriptDirectory(str(MIGRATIONS)).get_heads() == [HEAD_REVISION]


def downgrade(store: Store, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def deletion_columns(store: Store) -> set[str]:
    return {column["name"] for column in inspect(store.engine).get_columns("deletion")}


def test_a_store_behind_head_is_migrated_on_open(store: Store) -> None:
    assert at_head(store.engine)
    downgrade(store, "0003")
    assert not at_head(store.engine)
    assert "origin" not in deletion_columns(store), "0004 added deletion.origin"

    again = Store.open(store.url)
    try:
        assert at_head(again.engine)
        assert "origin" in deletion_columns(again)
    finally:
        again.close()


def test_a_new_database_is_not_at_head(store: Store) -> None:
    downgrade(store, "base")
    assert not at_head(store.engine)
