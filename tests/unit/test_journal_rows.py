"""What the journal stores is what an ORM insert of the same deletion stores, byte for byte.

The journal hands each column's value to the driver itself (the per-chunk values
processed once), so this compares its rows with rows the ORM writes through the
models' own types, on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlmodel import Session, col

import state.journal
from state import NewRecord, OutcomeRecord, ReadWindow, RetryRule, Store
from state.models import Deletion

NOW = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))
COLUMNS = (
    "pipeline", "stream", "record_key", "fields", "seen_at", "run_id", "window_start",
    "window_end", "rejected", "origin", "origin_delivery_id", "echo_of_delivery_id",
)  # fmt: skip
FIELDS: dict[str, Any] = {
    "SYKEY": "u0-1",
    "name": 'Zoë "quoted" \\ 東京',
    "nested": {"list": [1, 2.5, None, True], "empty": {}},
    "big": 12345678901234567890,
    "float": 0.1,
}


def stored(store: Store, deletion_id: int) -> tuple[Any, ...]:
    """A deletion's columns as the database holds them: on SQLite, the raw values with
    their storage classes; on PostgreSQL, the server's text of each value."""
    with store.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            names = ", ".join(f"{c}, typeof({c})" for c in COLUMNS)
        else:
            names = ", ".join(f"CAST({c} AS TEXT)" for c in COLUMNS)
        row = conn.execute(
            text(f"SELECT {names} FROM deletion WHERE id = :id"), {"id": deletion_id}
        )
        return tuple(row.one())


def orm_copy(store: Store, deletion_id: int) -> int:
    """The same deletion written again by an ORM insert, from the values the journal was
    given (the ORM's own read-back of times is aware UTC, as any value the store gets)."""
    with Session(store.engine) as s:
        row = s.get(Deletion, deletion_id)
        assert row is not None
        copy = Deletion(**row.model_dump(exclude={"id"}))
        s.add(copy)
        s.commit()
        assert copy.id is not None
        return copy.id


def test_the_journal_stores_what_an_orm_insert_stores(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = store.journal(
        "up", "T", [NewRecord("a", {}), NewRecord("b", {})], cursor=None, targets=["t"],
        run_id=None,
    )  # fmt: skip
    assert upstream.new == 2
    first, second = store.claim("up", "t", 2, "run")
    store.record_outcomes(
        [OutcomeRecord(first.id, "done", effect="goose:X"), OutcomeRecord(second.id, "done")],
        RetryRule(),
    )
    monkeypatch.setattr(state.journal, "utcnow", lambda: NOW)
    window = ReadWindow(
        datetime(2026, 3, 29, 2, 0, tzinfo=PLUS_TWO),
        datetime(2026, 3, 29, 3, 59, 59, 999999, tzinfo=PLUS_TWO),
    )
    mixed = [
        NewRecord("u0-1", FIELDS),
        NewRecord("u0-2", {}, origin="goose:X"),
        NewRecord("u0-3", {"K": "c"}, origin="goose:Y", origin_delivery_id=second.id),
        NewRecord("malformed:1", {"SYKEY": None}, rejected="no RECORD_ID"),
    ]
    result = store.journal("p", "T", mixed, cursor={}, targets=["x", "y"], run_id=7, window=window)
    assert (result.new, result.echoes, result.rejected) == (2, 1, 1)
    plain = store.journal(
        "p", "U", [NewRecord("u1-1", {"K": "é"})], cursor={}, targets=["x"], run_id=None
    )
    assert plain.new == 1

    with Session(store.engine) as s:
        journaled = s.scalars(
            select(Deletion).where(col(Deletion.pipeline) == "p").order_by(col(Deletion.id))
        ).all()
        read_back = [row.model_dump(exclude={"id"}) for row in journaled]
    assert [r["record_key"] for r in read_back] == ["u0-1", "u0-2", "u0-3", "malformed:1", "u1-1"]
    assert read_back[0]["fields"] == FIELDS
    assert all(r["seen_at"] == NOW for r in read_back)
    assert read_back[0]["window_start"] == window.start
    assert read_back[0]["window_start"].tzinfo is UTC
    assert read_back[1]["echo_of_delivery_id"] == first.id
    assert read_back[2]["origin_delivery_id"] == second.id
    assert read_back[3]["rejected"] == "no RECORD_ID"
    assert (read_back[4]["run_id"], read_back[4]["window_end"]) == (None, None)

    for row in journaled:
        assert row.id is not None
        copy = orm_copy(store, row.id)
        assert stored(store, row.id) == stored(store, copy), row.record_key
