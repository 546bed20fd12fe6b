"""What an operator asks of the store itself: its schema revision, size and contents at
a glance, and a consistent copy of it while a daemon keeps writing.

Read-only except `backup`, which writes only its destination.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, inspect, literal, select, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from state.db import StoreError, describe, sqlite_path
from state.models import OPEN_PHASES
from state.schema import HEAD_REVISION, VERSION_TABLE


@dataclass(frozen=True)
class LeaseInfo:
    pipeline: str
    owner: str
    expires_at: datetime
    epoch: int


@dataclass(frozen=True)
class StoreInfo:
    where: str
    backend: str
    revision: str | None
    """The schema revision the store records (None: a database with no syncengine schema)."""
    head: str
    size_bytes: int | None
    deletions: int = 0
    deliveries: dict[str, int] = field(default_factory=dict)
    open_jobs: int = 0
    leases: list[LeaseInfo] = field(default_factory=list)

    @property
    def behind(self) -> bool:
        return self.revision != self.head


def revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        found = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
        return next(iter(found), None)


def store_info(engine: Engine) -> StoreInfo:
    """Counts come from the tables as they are, so `info` works on a store behind the
    code's schema too, as long as the tables it counts exist."""
    current = revision(engine)
    info = StoreInfo(
        where=describe(engine.url),
        backend=engine.dialect.name,
        revision=current,
        head=HEAD_REVISION,
        size_bytes=store_size(engine),
    )
    if current is None:
        return info
    tables = SQLModel.metadata.tables
    delivery, job, lock = tables["delivery"], tables["job"], tables["pipeline_lock"]
    with engine.connect() as connection:
        # A store behind the code's schema lacks what later migrations added: count what
        # it has (the job table came with 0002, the lease's epoch with 0006).
        present = set(inspect(connection).get_table_names())
        lock_columns = {c["name"] for c in inspect(connection).get_columns("pipeline_lock")}
        deletions = connection.execute(
            select(func.count()).select_from(tables["deletion"])
        ).scalar_one()
        statuses = connection.execute(
            select(delivery.c.status, func.count()).group_by(delivery.c.status)
        ).all()
        jobs = (
            connection.execute(
                select(func.count()).select_from(job).where(job.c.phase.in_(list(OPEN_PHASES)))
            ).scalar_one()
            if "job" in present
            else 0
        )
        epoch = lock.c.epoch if "epoch" in lock_columns else literal(0)
        leases = connection.execute(
            select(lock.c.pipeline, lock.c.owner, lock.c.expires_at, epoch).order_by(
                lock.c.pipeline
            )
        ).all()
    return StoreInfo(
        where=info.where,
        backend=info.backend,
        revision=current,
        head=HEAD_REVISION,
        size_bytes=info.size_bytes,
        deletions=int(deletions),
        deliveries={str(status): int(count) for status, count in statuses},
        open_jobs=int(jobs),
        leases=[LeaseInfo(p, o, e, int(n)) for p, o, e, n in leases],
    )


def store_size(engine: Engine) -> int | None:
    """The store's bytes on disk: a SQLite file with its WAL, or a PostgreSQL database."""
    path = sqlite_path(engine.url)
    if path is not None:
        return sum(
            Path(f"{path}{suffix}").stat().st_size
            for suffix in ("", "-wal")
            if Path(f"{path}{suffix}").exists()
        )
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            size = connection.execute(text("SELECT pg_database_size(current_database())"))
            return int(size.scalar_one())
    return None


def backup(engine: Engine, destination: Path) -> int:
    """A consistent copy of a SQLite store through SQLite's online backup API: it copies
    page by page and starts again when a writer changes a page it already copied, so a
    daemon may keep running. The copy is created owner-only, like the store. Returns
    its size in bytes."""
    source = sqlite_path(engine.url)
    if source is None:
        raise StoreError(
            f"{describe(engine.url)}: `state backup` copies SQLite files; back PostgreSQL up "
            "with its own tools (pg_dump --format=custom, or your provider's snapshots)"
        )
    if destination.exists():
        raise StoreError(f"{destination} exists; name a new file (a backup never overwrites)")
    try:
        destination.touch(mode=0o600, exist_ok=False)
    except OSError as exc:
        raise StoreError(f"{destination}: cannot create it ({exc.strerror})") from None
    try:
        with sqlite3.connect(source) as live, sqlite3.connect(destination) as copy:
            live.backup(copy, pages=1024)
    except sqlite3.Error as exc:
        destination.unlink(missing_ok=True)
        raise StoreError(f"backup of {describe(engine.url)} failed: {exc}") from None
    return destination.stat().st_size


__all__ = ["LeaseInfo", "StoreInfo", "backup", "revision", "store_info", "store_size"]
