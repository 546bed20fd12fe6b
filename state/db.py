"""Opening the store: engine, SQLite durability settings, file permissions, migrations."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext, make_url
from sqlalchemy.exc import NoSuchModuleError
from sqlmodel import create_engine

from state.schema import HEAD_REVISION, VERSION_TABLE

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 0x5E11C0DE  # advisory lock id: one migrating process at a time
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
log = logging.getLogger(__name__)
IDLE_IN_TRANSACTION_MS = 10_000


class StoreError(Exception):
    """The store cannot be opened or written; the message says where and why."""


def sqlite_path(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _make_private(path: Path) -> None:
    """Create the database file as 0600 before SQLite does, and make an existing one (and
    its -wal, -shm and -journal) 0600 too.

    The store holds every record a source deleted and every error a server
    sent. SQLite gives the -wal and -shm files the mode of the database file,
    so a new file created owner-only keeps all of them private; a file made
    earlier by hand, a restore or another tool may not be, and is fixed here or
    refused when this user cannot change it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    fixed: list[str] = []
    for file in (path, *(path.with_name(path.name + s) for s in SQLITE_SIDE_FILES)):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        try:
            file.chmod(0o600)
        except PermissionError:
            raise StoreError(
                f"state.url: {file} can be read or written by other users (mode {mode:03o}) "
                f"and this user cannot change that; run `chmod 600 {file}` as its owner, "
                "or point state.url at a file of your own"
            ) from None
        fixed.append(f"{file} ({mode:03o})")
    if fixed:
        log.warning(
            "state files were open to other users; made them private (0600): %s",
            ", ".join(fixed),
        )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own
        # transaction handling defers it and cannot take the write lock early).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        if not cursor.execute("PRAGMA page_count").fetchone()[0]:
            # A new file, before WAL writes its header: the only moment SQLite takes it
            # without a VACUUM. Pages freed by pruning can then be given back to the file
            # system a few at a time (state/retention.py); an older store gets it from
            # `state prune --vacuum`.
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
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
        # Neither the URL nor SQLAlchemy's message (which quotes it): it may hold a password.
        raise StoreError(
            f"state.url is not a database URL ({type(exc).__name__}); write "
            "sqlite:///path/to/file.db or postgresql://user@host/db"
        ) from None
    path = sqlite_path(url)
    if path is not None:
        try:
            _make_private(path)
        except OSError as exc:
            raise StoreError(f"state.url: cannot create {path}: {exc.strerror}") from None
    backend, _, driver = url.drivername.partition("+")
    if backend == "postgres":  # the name most tools take; SQLAlchemy knows only postgresql
        backend = "postgresql"
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(
            f"state.url: {backend!r} is not supported: the store runs on SQLite or "
            "PostgreSQL; write sqlite:///path/to/file.db or postgresql://user@host/db"
        )
    if backend == "postgresql":
        url = url.set(drivername=f"postgresql+{driver or 'psycopg'}")
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
        # A holder paused (SIGSTOP) inside a transaction would keep its row locks, and so
        # keep every other daemon from taking its lease over, for as long as it is
        # paused: the server ends such a transaction instead (ours never idle that long).
        kwargs["connect_args"] = {
            "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
        }
    try:
        engine = create_engine(url, **kwargs)
    except (ImportError, NoSuchModuleError) as error:
        raise StoreError(
            f"state.url: the {url.drivername} driver is not installed ({error}); write "
            f"{backend}:// to use the one syncengine brings"
        ) from None
    if backend == "sqlite":
        _configure_sqlite(engine)
        _refuse_damaged_files(engine)
    return engine


def describe(url: URL) -> str:
    """`state.url` and what it points at, without a password."""
    path = sqlite_path(url)
    shown = str(path) if path is not None else url.render_as_string(hide_password=True)
    return f"state.url ({shown})"


def _refuse_damaged_files(engine: Engine) -> None:
    """A file that is not a database, or a damaged one, is one `StoreError` naming the file
    and the fix, wherever it is found (opening, or a page read in the middle of a run)."""
    where = describe(engine.url)
    path = sqlite_path(engine.url)

    @event.listens_for(engine, "handle_error")
    def on_error(context: ExceptionContext) -> None:
        error = context.original_exception
        code = getattr(error, "sqlite_errorcode", None)
        if not isinstance(code, int):
            return
        if code & 0xFF == sqlite3.SQLITE_NOTADB:
            raise StoreError(
                f"{where} is not a syncengine store ({error}); point state.url at the store's "
                "file, or restore that file from a backup"
            )
        if code & 0xFF == sqlite3.SQLITE_CORRUPT:
            raise StoreError(
                f"{where}: the store is damaged ({error}); stop every syncengine using it, then "
                f"restore it from a backup, or salvage what is readable with "
                f"`sqlite3 {path} .recover`"
            )


def upgrade(engine: Engine) -> None:
    """Create or upgrade the schema to the newest revision; safe to call every start.

    A store written by a newer syncengine, or a SQLite file of another
    program, is refused before anything is written to it.
    """
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_MIGRATION_LOCK}
            )
        if not inspect(connection).get_table_names():
            create_at_head(connection)
            return
        from alembic import command  # slow to import, and needed only to migrate
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        _check_ours(connection, ScriptDirectory.from_config(config), describe(engine.url))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def refuse_old_schema(engine: Engine) -> None:
    """Raise unless the store is new (no tables yet): its schema is behind the code's."""
    with engine.connect() as connection:
        if not inspect(connection).get_table_names():
            return
        found: list[str] = []
        if inspect(connection).has_table(VERSION_TABLE):
            found = list(
                connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
            )
    at = found[0] if found else "none"
    raise StoreError(
        f"{describe(engine.url)}: the store's schema is at revision {at} "
        f"and this syncengine needs {HEAD_REVISION}; back the store up, then run "
        "`syncengine state migrate` (state.migrate is manual)"
    )


def create_at_head(connection: Connection) -> None:
    """A new, empty database gets the newest schema at once, stamped with its revision.

    Running every migration instead would import alembic and copy tables a migration
    alters (SQLite's batch mode), which is most of a first run's start-up; the result is
    the same schema (tests/unit/test_lineage.py compares the migrations with the models).
    """
    from sqlalchemy import MetaData
    from sqlmodel import SQLModel

    import state.models  # noqa: F401  (the tables SQLModel.metadata holds)

    # A copy per creation: after a create_all on PostgreSQL, whose ALTER adds the
    # deletion -> delivery constraints (use_alter), a create_all of the same metadata on
    # SQLite left them out (in one process; tests/unit/test_lineage.py found it).
    schema = MetaData()
    for table in SQLModel.metadata.tables.values():
        table.to_metadata(schema)
    schema.create_all(connection)
    connection.execute(
        text(
            f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
            f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"
        )
    )
    connection.execute(
        text(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES (:head)"), {"head": HEAD_REVISION}
    )


def _check_ours(connection: Connection, script: ScriptDirectory, where: str) -> None:
    from alembic.runtime.migration import MigrationContext

    current = MigrationContext.configure(connection).get_current_heads()
    known = {revision.revision for revision in script.walk_revisions()}
    newer = [revision for revision in current if revision not in known]
    if newer:
        raise StoreError(
            f"{where}: the store was written by a newer syncengine (schema revision "
            f"{newer[0]}; this version knows up to {script.get_current_head()}); upgrade "
            "syncengine"
        )
    if not current and connection.dialect.name == "sqlite":
        tables = inspect(connection).get_table_names()
        if tables:
            raise StoreError(
                f"{where} holds tables of another program ({', '.join(tables[:5])}) and no "
                "syncengine schema; point state.url at the store's file, or at a new file"
            )
