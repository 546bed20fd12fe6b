"""A synchronous target with no mass-delete limit is pushed while the pull journals
the rest of a streamed answer; a target with a limit waits for the whole answer, so
its guard weighs everything due; a pull that fails mid-answer stops the pushes with
every claimed delivery either recorded or released."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import Any

import pytest

from connectors.contract import (
    EXACT_KEYS,
    Delivery,
    FatalError,
    InFlightCall,
    Outcome,
    SourceCall,
    SourcePage,
    SourceRecord,
)
from state import RunOutcome, Store
from state.models import DeliveryStatus
from syncengine.config.models import GuardSettings
from syncengine.engine import pull as pull_module
from syncengine.engine.feed import JournalFeed
from syncengine.engine.pipeline import run_pipeline
from syncengine.engine.runtime import PipelineRuntime
from syncengine.engine.stop import StopToken
from tests.unit.fake_runtime import fake_runtime

PAGE = 4
SAFETY = 10.0
"""Seconds a gate waits before giving up: only a broken engine ever waits that long."""


class PagedSource:
    """Two pages of one answer; the second is handed over only once `release` is set
    (or after `wait` seconds), and `sent_before_last_page` says whether a delivery of
    the first page had been sent by then."""

    def __init__(
        self, target: RecordingTarget, fail_after_first: bool = False, wait: float = SAFETY
    ) -> None:
        self.target = target
        self.wait = wait
        self.fail_after_first = fail_after_first
        self.sent_before_last_page: bool | None = None

    def streams(self) -> Sequence[str]:
        return ["T"]

    def plan(
        self, stream: str, cursor: Any, interrupted: InFlightCall | None, now: datetime
    ) -> SourceCall:
        return SourceCall(stream, {"from": "latest"}, now)

    async def fetch(self, call: SourceCall) -> SourcePage:
        raise AssertionError("a streaming source is read through fetch_pages")

    async def fetch_pages(self, call: SourceCall) -> AsyncGenerator[SourcePage, None]:
        yield SourcePage(records(0, PAGE), cursor=None, partial=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.target.first_send.wait(), self.wait)
        self.sent_before_last_page = self.target.first_send.is_set()
        if self.fail_after_first:
            raise FatalError("source credentials rejected", connection="src")
        yield SourcePage(records(PAGE, 2 * PAGE), cursor={"done": True})

    async def aclose(self) -> None:
        return None


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


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    return sqlite_store


def pipeline(source: PagedSource, target: RecordingTarget, guard: GuardSettings) -> PipelineRuntime:
    return fake_runtime(target, source=source, guard=guard)[0]


def statuses(store: Store) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row, _ in store.deliveries(pipeline="p", target="t"):
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


def test_the_first_page_is_sent_while_the_pull_reads_the_rest(store: Store) -> None:
    target = RecordingTarget()
    source = PagedSource(target)
    report = asyncio.run(
        run_pipeline(store, pipeline(source, target, GuardSettings()), StopToken())
    )

    assert source.sent_before_last_page is True
    assert report.outcome is RunOutcome.OK
    assert sorted(target.sent, key=int) == [str(i) for i in range(2 * PAGE)]
    assert report.targets["t"].done == 2 * PAGE
    assert statuses(store) == {DeliveryStatus.DONE: 2 * PAGE}


def test_a_mass_delete_limit_waits_for_the_whole_answer(store: Store) -> None:
    """Sent alongside, the first page (4 due, under the limit of 6) would go out before
    the second made 8 due; waiting, the guard sees 8 and holds them all. The source
    gives a push that would run alongside a second to send before the last page."""
    target = RecordingTarget()
    source = PagedSource(target, wait=1.0)
    pipe = pipeline(source, target, GuardSettings(max_per_run=PAGE + 2))
    report = asyncio.run(run_pipeline(store, pipe, StopToken()))

    assert source.sent_before_last_page is False
    assert target.sent == []
    assert report.targets["t"].held == 2 * PAGE


def test_a_pull_failing_mid_answer_stops_the_push_and_loses_nothing(store: Store) -> None:
    target = RecordingTarget()
    source = PagedSource(target, fail_after_first=True)
    report = asyncio.run(
        run_pipeline(store, pipeline(source, target, GuardSettings()), StopToken())
    )

    assert report.outcome is RunOutcome.FAILED and report.fatal
    counts = statuses(store)
    assert sum(counts.values()) == PAGE, "the first page stays journaled"
    assert DeliveryStatus.IN_FLIGHT not in counts, "every claimed delivery recorded or released"
    assert counts.get(DeliveryStatus.DONE, 0) == len(target.sent) > 0
    assert report.targets["t"].done == len(target.sent), "the run's summary counts them"
    rest = asyncio.run(
        run_pipeline(store, pipeline(PagedSource(target), target, GuardSettings()), StopToken())
    )
    assert rest.outcome is RunOutcome.OK
    assert sorted(set(target.sent), key=int) == [str(i) for i in range(2 * PAGE)]
    assert len(target.sent) == len(set(target.sent)), "nothing sent twice"


def test_a_page_journaled_during_a_claim_wakes_the_push() -> None:
    async def scenario() -> list[str]:
        feed = JournalFeed()
        seen: list[str] = []
        mark = feed.mark()  # a claim starts, and finds nothing due
        feed.journaled()  # a page is committed while it runs
        await asyncio.wait_for(feed.wait(mark), SAFETY)
        seen.append("woken by the page")
        mark = feed.mark()
        waiter = asyncio.create_task(feed.wait(mark))
        other = feed.mark()  # another target's claim cannot make this one miss a page
        await asyncio.sleep(0)
        assert not waiter.done()
        feed.close()
        await asyncio.wait_for(waiter, SAFETY)
        seen.append("woken by the end of the pull")
        assert feed.mark().pull_over and not other.pull_over
        return seen

    assert asyncio.run(scenario()) == ["woken by the page", "woken by the end of the pull"]


class Crash(BaseException):
    """A process dying mid-journal, as far as the run can tell."""


def test_a_crash_between_journal_slices_loses_nothing_and_sends_nothing_twice(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pushed alongside, a page goes in slices of SLICE records, each committed on its
    own: a crash after some slices of the last page leaves the call in flight, and the
    next run's re-read takes what was journaled for duplicates."""
    monkeypatch.setattr(pull_module, "SLICE", 2)
    journal = store.journal
    calls = 0

    def crashing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 4:  # the second slice of the last page: the one that moves the cursor
            raise Crash
        return journal(*args, **kwargs)

    target = RecordingTarget()
    monkeypatch.setattr(store, "journal", crashing)
    with pytest.raises(Crash):
        asyncio.run(
            run_pipeline(store, pipeline(PagedSource(target), target, GuardSettings()), StopToken())
        )
    assert calls == 4
    assert store.cursor("p", "T").in_flight is not None, "the call stays in flight"
    assert len(store.deliveries(pipeline="p", target="t")) == PAGE + 2

    monkeypatch.setattr(store, "journal", journal)
    again = asyncio.run(
        run_pipeline(store, pipeline(PagedSource(target), target, GuardSettings()), StopToken())
    )
    assert again.outcome is RunOutcome.OK
    assert again.pull.duplicates == PAGE + 2
    assert sorted(target.sent, key=int) == [str(i) for i in range(2 * PAGE)], "each once"
    assert statuses(store) == {DeliveryStatus.DONE: 2 * PAGE}
    assert store.cursor("p", "T").in_flight is None


class RejectingTarget(RecordingTarget):
    async def send(self, batch: Sequence[Delivery]) -> list[Outcome]:
        self.first_send.set()
        raise FatalError("credentials rejected", connection="c")


def test_a_target_failing_alongside_the_pull_leaves_the_answer_journaled(store: Store) -> None:
    target = RejectingTarget()
    pipe = pipeline(PagedSource(target), target, GuardSettings())
    report = asyncio.run(run_pipeline(store, pipe, StopToken()))

    assert report.outcome is RunOutcome.FAILED and report.fatal
    assert "credentials rejected" in report.error
    assert store.cursor("p", "T").in_flight is None, "the whole answer was journaled"
    assert statuses(store) == {DeliveryStatus.PENDING: 2 * PAGE}, "released for the next run"
