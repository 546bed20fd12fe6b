"""One bad row never stops a stream, and one failing stream never stops the others.

A record the store cannot hold (a NUL, a lone surrogate, a number JSON cannot write)
is a dead letter with its reason and its fields escaped, by one rule on SQLite and
PostgreSQL; the rest of its page goes on. Any unexpected error while a stream is read
is that stream's failure: counted, told in one line (never a statement or its
parameters), alerted like a source's failure, and the next stream is still read."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
from structlog.testing import capture_logs

from connectors.contract import (
    EXACT_KEYS,
    Delivery,
    InFlightCall,
    Outcome,
    SourceCall,
    SourcePage,
    SourceRecord,
)
from state import RunOutcome, Store
from state.models import DeliveryStatus
from syncengine.engine.pipeline import run_pipeline
from syncengine.engine.stop import StopToken
from tests.unit.fake_runtime import fake_runtime


class RecordingTarget:
    key_match = EXACT_KEYS
    batch_size = 10

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, batch: Sequence[Delivery]) -> list[Outcome]:
        self.sent.extend(d.key for d in batch)
        return [Outcome.done(d.delivery_id) for d in batch]

    async def aclose(self) -> None:
        return None


class Source:
    """Streams whose answer is one page of `answers[stream]`, or which raise it."""

    def __init__(self, answers: dict[str, list[SourceRecord] | Exception]) -> None:
        self.answers = answers

    def streams(self) -> Sequence[str]:
        return list(self.answers)

    def plan(
        self, stream: str, cursor: Any, interrupted: InFlightCall | None, now: datetime
    ) -> SourceCall:
        return SourceCall(stream, {"from": "latest"}, now)

    async def fetch(self, call: SourceCall) -> SourcePage:
        answer = self.answers[call.stream]
        if isinstance(answer, Exception):
            raise answer
        return SourcePage(answer, cursor={"read": True})

    async def aclose(self) -> None:
        return None


def run(store: Store, source: Source, target: RecordingTarget) -> Any:
    pipe = fake_runtime(target, source=source)[0]
    return asyncio.run(run_pipeline(store, pipe, StopToken()))


def record(key: str, **fields: Any) -> SourceRecord:
    return SourceRecord("T", key, {"K": key, **fields})


def check_bad_rows_are_dead_letters(store: Store, bad: list[SourceRecord], why: list[str]) -> None:
    target = RecordingTarget()
    good = [record("1"), record("2")]
    report = run(store, Source({"T": [good[0], *bad, good[1]]}), target)

    assert report.outcome is RunOutcome.OK, report.error
    assert target.sent == ["1", "2"], "the rest of the page went on"
    assert store.cursor("p", "T").value == {"read": True}
    dead = store.dead_letters(pipeline="p")
    assert sorted(d.last_error.split(";")[0] for d, _ in dead) == sorted(
        f"malformed record: {reason}, which no store can hold" for reason in why
    )
    assert report.pull.malformed == {"T": len(bad)}
    # Read again (a recovery re-read), they are duplicates: the stream is not stuck.
    again = run(store, Source({"T": [good[0], *bad, good[1]]}), target)
    assert again.outcome is RunOutcome.OK and again.pull.duplicates == len(good) + len(bad)
    return None


def test_a_lone_surrogate_is_a_dead_letter_and_the_stream_goes_on(sqlite_store: Store) -> None:
    check_bad_rows_are_dead_letters(
        sqlite_store,
        [record("\udc00x"), record("3", NAME="a\ud800b")],
        ["a lone surrogate (U+DC00) in its key", "a lone surrogate (U+D800) in field 'NAME'"],
    )
    dead = {e.fields["record_key"] for _, e in sqlite_store.dead_letters(pipeline="p")}
    assert dead == {"\\udc00x", "3"}, "kept escaped, naming exactly what the source sent"


@pytest.mark.postgres
def test_a_nul_is_a_dead_letter_and_the_stream_goes_on_on_postgresql(pg_url: str) -> None:
    store = Store.open(pg_url)
    try:
        check_bad_rows_are_dead_letters(
            store,
            [record("\x00a"), record("3", NAME="a\x00b"), record("4", SIZE=float("inf"))],
            [
                "a NUL character in its key",
                "a NUL character in field 'NAME'",
                "a number JSON cannot hold (inf) in field 'SIZE'",
            ],
        )
        dead = {e.fields["record_key"] for _, e in store.dead_letters(pipeline="p")}
        assert dead == {"\\x00a", "3", "4"}
    finally:
        store.close()


def test_an_unexpected_error_fails_its_stream_and_the_next_is_still_read(
    sqlite_store: Store,
) -> None:
    """What a database error would say through SQLAlchemy quotes the statement and its
    parameters (a source's data); the stream's error is the driver's one line."""
    refused = sqlalchemy.exc.DataError(
        "INSERT INTO deletion (record_key) VALUES (%(record_key)s)",
        {"record_key": "a\x00b"},
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
    )
    target = RecordingTarget()
    source = Source({"A": refused, "B": [SourceRecord("B", "9", {})]})
    for attempt in (1, 2, 3):
        with capture_logs() as logs:
            report = run(sqlite_store, source, target)
        assert report.outcome is RunOutcome.PARTIAL
        error = "DataError: PostgreSQL text fields cannot contain NUL (0x00) bytes"
        assert report.error == f"A: {error}"
        failed = [e for e in logs if e["event"] == "stream_failed"]
        assert failed == [
            {
                "pipeline": "p",
                "run": report.run_id,
                "event": "stream_failed",
                "log_level": "error",
                "stream": "A",
                "error": error,
                "consecutive": attempt,
            }
        ], "told once, in one line, without a traceback"
        alerts = [e for e in logs if e["event"] == "alert_source_failing"]
        assert len(alerts) == (1 if attempt == 3 else 0), "alerted as for any source failure"
        assert not [e for e in logs if e["event"] == "run_crashed"]
        errors = {c.stream: c.consecutive_errors for c in sqlite_store.cursors("p")}
        assert errors == {"A": attempt, "B": 0}
    assert target.sent == ["9"], "the next stream was read and sent"
    assert sqlite_store.cursor("p", "A").in_flight is not None, "retried by the next run"
    assert sqlite_store.deliveries(status=DeliveryStatus.DONE)
