"""Opening the store: engine, SQLite durability settings, file permissions, migrations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlmodel import create_engine

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 0x5E11C0DE  # advisory lock id: one migrating process at a time


class StoreError(Exception):
    """The store cannot be opened or written; the message says where and why."""


def sqlite_path(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _create_private_file(path: Path) -> None:
    """Create the database file as 0600 before SQLite does.

    SQLite gives the -wal and -shm files the mode of the database file, so
    creating the main file owner-only keeps all three private.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own
        # transaction handling defers it and cannot take the write lock early).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so two processes never
        # deadlock upgrading a read transaction to a write.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url_text: str) -> Engine:
    try:
        url = make_url(url_text)
    except Exception as exc:  # sqlalchemy raises ArgumentError and ValueError here
        raise StoreError(f"state.url {url_text!r} is not a database URL: {exc}") from None
    path = sqlite_path(url)
    if path is not None:
        try:
            _create_private_file(path)
        except OSError as exc:
            raise StoreError(f"state.url: cannot create {path}: {exc.strerror}") from None
    backend = url.get_backend_name()
    if backend == "postgresql" and url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if backend == "sqlite":
        _configure_sqlite(engine)
    return engine


def upgrade(engine: Engine) -> None:
    """Create or upgrade the schema to the newest revision; safe to call every start."""
    from alembic import command  # alembic is slow to import and needed only to migrate
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_MIGRATION_LOCK}
            )
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
