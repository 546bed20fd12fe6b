"""What every part of the store shares: the engine, its transactions and its tables.

The hot path (journal, claims, outcomes) speaks SQLAlchemy Core to these tables:
one statement per batch, compiled once and cached, instead of an ORM object per
row. SQLModel stays for the schema, the migrations and the operator's reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, SQLModel

import state.models  # noqa: F401  (defines the tables in SQLModel.metadata)

DELETION = SQLModel.metadata.tables["deletion"]
DELIVERY = SQLModel.metadata.tables["delivery"]
PIPELINE_LOCK = SQLModel.metadata.tables["pipeline_lock"]


class StoreBase:
    """The engine and how a part of the store opens a transaction on it."""

    engine: Engine
    dialect: str
    locks_rows: bool
    """Whether a transaction locks the rows it must keep (PostgreSQL); SQLite serialises
    every write transaction already (BEGIN IMMEDIATE)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.locks_rows = self.dialect != "sqlite"

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _core(self) -> Iterator[Connection]:
        """A write transaction for Core statements (no ORM session to keep)."""
        with self.engine.begin() as connection:
            yield connection
