"""An answer that contradicts itself (`MalformedAnswer`, raised by a streamed answer's
pages): nothing more from it is journaled or sent, in this run or a later one. What it
journaled and has not sent is withdrawn (dead, with the reason), what pushes running
alongside had sent is counted in the run's error, and its cursor does not move."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import Any

from structlog.testing import capture_logs

from connectors.contract import (
    EXACT_KEYS,
    Delivery,
    InFlightCall,
    MalformedAnswer,
    Outcome,
    SourceCall,
    SourcePage,
    SourceRecord,
)
from state import NewRecord, OutcomeRecord, RetryRule, RunOutcome, Store
from state.models import DeliveryStatus
from syncengine.engine.pipeline import run_pipeline
from syncengine.engine.stop import StopToken
from tests.unit.fake_runtime import fake_runtime

PAGE = 4
SAFETY = 10.0
"""Seconds a gate waits before giving up: only a broken engine ever waits that long."""
CONTRADICTION = "Goose: the envelope gives `status` twice (OK, then error)"


def records(start: int, end: int) -> list[SourceRecord]:
    return [SourceRecord("T", str(i), {"K": str(i)}) for i in range(start, end)]


class RecordingTarget:
    key_match = EXACT_KEYS

    def __init__(self) -> None:
        self.batch_size = 2
        self.sent: list[str] = []
        self.first_send = asyncio.Event()

    async def send(self, batch: Sequence[Delivery]) -> list[Outcome]:
        self.sent.extend(d.key for d in batch)
        self.first_send.set()
        await asyncio.sleep(0)
        return [Outcome.done(d.delivery_id) for d in batch]

    async def aclose(self) -> None:
        return None


class StreamedAnswer:
    """`pages` pages of PAGE records each, handed over as a streamed answer; after the
    first, it waits until the target has sent something (pushes alongside). It then
    ends malformed, or (`good`) with its last page."""

    def __init__(self, target: RecordingTarget, pages: int, *, good: bool = False) -> None:
        self.target = target
        self.pages = pages
        self.good = good

    def streams(self) -> Sequence[str]:
        return ["T"]

    def plan(
        self, stream: str, cursor: Any, interrupted: InFlightCall | None, now: datetime
    ) -> SourceCall:
        return SourceCall(stream, {"from": "latest"}, now)

    async def fetch(self, call: SourceCall) -> SourcePage:
        raise AssertionError("a streaming source is read through fetch_pages")

    async def fetch_pages(self, call: SourceCall) -> AsyncGenerator[SourcePage, None]:
        for n in range(self.pages):
            last = self.good and n == self.pages - 1
            rows = records(n * PAGE, (n + 1) * PAGE)
            yield SourcePage(rows, cursor={"done": True} if last else None, partial=not last)
            if n == 0 and self.pages > 1:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.target.first_send.wait(), SAFETY)
        if not self.good:
            raise MalformedAnswer(CONTRADICTION, connection="src")

    async def aclose(self) -> None:
        return None


def run(store: Store, source: StreamedAnswer, target: RecordingTarget) -> Any:
    pipe = fake_runtime(target, source=source)[0]
    return asyncio.run(run_pipeline(store, pipe, StopToken()))


def by_status(store: Store) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for delivery, deletion in store.deliveries(pipeline="p", target="t"):
        found.setdefault(delivery.status, []).append((deletion.record_key, delivery.last_error))
    return found


def test_pages_sent_alongside_are_counted_and_the_rest_is_withdrawn(sqlite_store: Store) -> None:
    store = sqlite_store
    target = RecordingTarget()
    report = run(store, StreamedAnswer(target, pages=3), target)

    assert report.outcome is RunOutcome.FAILED
    assert CONTRADICTION in report.error
    sent = sorted(set(target.sent), key=int)
    assert len(sent) == len(target.sent) >= 2, "the first page went out alongside the pull"
    assert f"{len(sent)} of its deliveries were already sent" in report.error
    statuses = by_status(store)
    assert set(statuses) == {DeliveryStatus.DONE, DeliveryStatus.DEAD}, "nothing left to send"
    assert sorted((k for k, _ in statuses[DeliveryStatus.DONE]), key=int) == sent
    dead = statuses[DeliveryStatus.DEAD]
    assert len(dead) == 3 * PAGE - len(sent) >= 2
    assert f"{len(dead)} withdrawn (dead, never sent)" in report.error
    for _, reason in dead:
        assert reason.startswith("withdrawn: the answer of run 1's call 1 (")
        assert f"to stream T was malformed ({CONTRADICTION})" in reason
    cursor = store.cursor("p", "T")
    assert cursor.value is None and cursor.in_flight is not None, "the cursor stays put"
    assert store.cursors("p")[0].consecutive_errors == 1
    assert store.malformed_counts("p") == {}, "its records were well formed: not malformed"
    assert store.deletion_count("p") == 3 * PAGE

    # The next run reads the same answer again: its records are duplicates, nothing is sent.
    again = run(store, StreamedAnswer(target, pages=3), target)
    assert again.outcome is RunOutcome.FAILED
    assert "0 of its deliveries were already sent, 0 withdrawn" in again.error
    assert sorted(target.sent, key=int) == sent
    assert by_status(store) == statuses

    # Fixed, the server answers well: the withdrawn records stay dead, and it is told.
    with capture_logs() as logs:
        fixed = run(store, StreamedAnswer(target, pages=3, good=True), target)
    assert fixed.outcome is RunOutcome.OK
    assert sorted(target.sent, key=int) == sent, "a withdrawn record is never sent silently"
    assert by_status(store) == statuses
    told = [e for e in logs if e["event"] == "withdrawn_reported_again"]
    assert sum(e["count"] for e in told) == 3 * PAGE
    assert store.cursor("p", "T").value == {"done": True}


def test_a_one_page_answer_sends_nothing(sqlite_store: Store) -> None:
    """The page is journaled, and the contradiction read before any push claims it."""
    store = sqlite_store
    target = RecordingTarget()
    report = run(store, StreamedAnswer(target, pages=1), target)

    assert report.outcome is RunOutcome.FAILED
    assert target.sent == []
    assert f"0 of its deliveries were already sent, {PAGE} withdrawn" in report.error
    assert list(by_status(store)) == [DeliveryStatus.DEAD]
    assert store.cursor("p", "T").in_flight is not None


def test_an_answer_malformed_before_its_first_page_journals_nothing(sqlite_store: Store) -> None:
    store = sqlite_store
    target = RecordingTarget()
    report = run(store, StreamedAnswer(target, pages=0), target)

    assert report.outcome is RunOutcome.FAILED
    assert "0 of its deliveries were already sent, 0 withdrawn" in report.error
    assert target.sent == [] and by_status(store) == {}


def test_a_claim_made_before_the_withdrawal_is_never_sent_again(store: Store) -> None:
    """A claim in progress finishes its send, and counts as sent; if that send fails, or
    the batch is released, or its run dies, the next claim makes it dead, not due (on
    SQLite and PostgreSQL)."""
    after = store.last_deletion_id()
    store.journal(
        "p", "T", [NewRecord(str(i), {}) for i in range(4)], cursor=None, targets=["t"],
        run_id=1, advance_cursor=False,
    )  # fmt: skip
    claimed = [c.id for c in store.claim("p", "t", 2, "run-1")]
    withdrawal = store.withdraw(
        "p", "T", run_id=1, after_id=after, reason="withdrawn: the answer of call 1 was malformed"
    )
    assert (withdrawal.sent, withdrawal.withdrawn) == (2, 2)
    store.record_outcomes([OutcomeRecord(claimed[0], "retry", reason="503")], RetryRule(10, 0, 0))
    store.release([claimed[1]], "run interrupted")

    assert store.claim("p", "t", 10, "run-2") == []
    dead = store.deliveries(pipeline="p", status=DeliveryStatus.DEAD)
    assert len(dead) == 4
    assert {d.last_error for d, _ in dead} == {"withdrawn: the answer of call 1 was malformed"}

    # An operator who checked them with the source may send them after all.
    assert store.retry_dead([d.id for d, _ in dead if d.id is not None]) == 4
    assert len(store.claim("p", "t", 10, "run-3")) == 4
