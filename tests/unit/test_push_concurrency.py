"""Push as a pipeline: `concurrency` sends in flight and never one more, the next batch
claimed while one is sent, one outcome per delivery whatever the sends answer, and
every claimed batch recorded or released when a run stops, fails or is cancelled."""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.contract import (
    EXACT_KEYS,
    ConnectorError,
    Delivery,
    FatalError,
    Outcome,
    OutcomeKind,
    RetriableError,
)
from state import ClaimedDelivery, LeaseLost, NewRecord, Store
from state.models import DeliveryStatus, utcnow
from syncengine.engine import push as push_module
from syncengine.engine.push import INTERRUPTED, REJECTED, push
from syncengine.engine.runtime import PipelineRuntime, TargetRuntime
from syncengine.engine.stop import StopToken
from tests.unit.fake_runtime import fake_runtime

Answer = Callable[[int, Sequence[Delivery]], list[Outcome]]


def all_done(index: int, batch: Sequence[Delivery]) -> list[Outcome]:
    return [Outcome.done(d.delivery_id) for d in batch]


class GatedTarget:
    """Each send waits for its gate (by the order sends started) unless `free`."""

    key_match = EXACT_KEYS

    def __init__(self, batch_size: int = 2, answer: Answer = all_done) -> None:
        self.batch_size = batch_size
        self.answer = answer
        self.free = False
        self.active = 0
        self.peak = 0
        self.started: list[list[int]] = []
        self.gates: dict[int, asyncio.Event] = {}

    def gate(self, index: int) -> asyncio.Event:
        return self.gates.setdefault(index, asyncio.Event())

    def open(self, index: int) -> None:
        self.gate(index).set()

    def open_all(self) -> None:
        self.free = True
        for gate in self.gates.values():
            gate.set()

    async def send(self, batch: Sequence[Delivery]) -> list[Outcome]:
        index = len(self.started)
        self.started.append([d.delivery_id for d in batch])
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if not self.free:
                await self.gate(index).wait()
        finally:
            self.active -= 1
        return self.answer(index, batch)

    async def aclose(self) -> None:
        return None


def journal(store: Store, count: int) -> None:
    records = [NewRecord(str(i), {"K": str(i)}) for i in range(count)]
    store.journal("p", "T", records, cursor={}, targets=["t"], run_id=None)


def runtime(target: Any, concurrency: int) -> tuple[PipelineRuntime, TargetRuntime]:
    pipe, target_runtime = fake_runtime(target)
    target_runtime.config = target_runtime.config.model_copy(update={"concurrency": concurrency})
    return pipe, target_runtime


def statuses(store: Store) -> dict[int, str]:
    return {d.id or 0: d.status for d, _ in store.deliveries(pipeline="p")}


def count(store: Store, status: str) -> int:
    return sum(1 for s in statuses(store).values() if s == status)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Polls the event loop until `condition` holds; the bound only ends a hung test."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
def store(tmp_path: Path) -> Any:
    opened = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    yield opened
    opened.close()


@pytest.mark.parametrize("width", [1, 3])
async def test_n_sends_in_flight_never_one_more_and_the_next_batch_claimed_meanwhile(
    store: Store, width: int
) -> None:
    batches = width + 3
    journal(store, 2 * batches)
    target = GatedTarget()
    pipe, target_runtime = runtime(target, width)
    running = asyncio.create_task(push(store, pipe, target_runtime, 1, utcnow(), StopToken()))

    await wait_until(
        lambda: (
            target.active == width and count(store, DeliveryStatus.IN_FLIGHT) == 2 * (width + 1)
        ),
        f"{width} sends blocked and one more batch claimed ahead",
    )
    assert len(target.started) == width, "the batch claimed ahead waits for a free slot"

    target.open(0)
    await wait_until(
        lambda: count(store, DeliveryStatus.DONE) == 2 and target.active == width,
        "the first outcome recorded while the next sends are under way",
    )
    assert len(target.started) == width + 1

    target.open_all()
    report = await running
    assert target.peak == width
    assert report.done == 2 * batches and report.batches == batches
    assert set(statuses(store).values()) == {DeliveryStatus.DONE}


def random_answer(rng: random.Random) -> Answer:
    """Per batch: an error for all of it, or per delivery done, retry, dead or nothing."""

    def answer(index: int, batch: Sequence[Delivery]) -> list[Outcome]:
        fate = rng.random()
        if fate < 0.15:
            raise RetriableError("busy", retry_after=5)
        if fate < 0.25:
            raise ConnectorError("broken answer")
        outcomes: list[Outcome] = []
        for d in batch:
            kind = rng.choice(["done", "done", "retry", "dead", "missing"])
            if kind == "done":
                outcomes.append(Outcome.done(d.delivery_id))
            elif kind == "retry":
                outcomes.append(Outcome.retry(d.delivery_id, "try later"))
            elif kind == "dead":
                outcomes.append(Outcome.dead(d.delivery_id, "refused"))
        outcomes.append(Outcome.done(10**9))  # an id that is not in the batch is ignored
        rng.shuffle(outcomes)
        return outcomes

    return answer


class ShuffledTarget(GatedTarget):
    """Sends that finish in a random order, answering at random."""

    def __init__(self, batch_size: int, rng: random.Random) -> None:
        super().__init__(batch_size, random_answer(rng))
        self.rng = rng
        self.free = True
        self.answers: dict[int, DeliveryStatus] = {}

    async def send(self, batch: Sequence[Delivery]) -> list[Outcome]:
        for _ in range(self.rng.randrange(6)):
            await asyncio.sleep(0)
        try:
            outcomes = await super().send(batch)
        except ConnectorError:
            self.answers.update({d.delivery_id: DeliveryStatus.FAILED for d in batch})
            raise
        kinds = {o.delivery_id: o.kind for o in outcomes}
        expected = {OutcomeKind.DONE: DeliveryStatus.DONE, OutcomeKind.DEAD: DeliveryStatus.DEAD}
        for d in batch:
            kind = kinds.get(d.delivery_id, OutcomeKind.RETRY)
            self.answers[d.delivery_id] = expected.get(kind, DeliveryStatus.FAILED)
        return outcomes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 5),
    batch_size=st.integers(1, 4),
    records=st.integers(0, 24),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_outcome_per_delivery_under_concurrency(
    width: int, batch_size: int, records: int, seed: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = Store.open(f"sqlite:///{Path(folder) / 's.db'}")
        try:
            journal(store, records)
            target = ShuffledTarget(batch_size, random.Random(seed))
            pipe, target_runtime = runtime(target, width)
            report = asyncio.run(push(store, pipe, target_runtime, 1, utcnow(), StopToken()))
            rows = {d.id or 0: d for d, _ in store.deliveries(pipeline="p")}
        finally:
            store.close()
    sent = [i for batch in target.started for i in batch]
    assert sorted(sent) == sorted(rows), "every delivery sent once in the run"
    assert target.peak <= width
    assert {i: DeliveryStatus(d.status) for i, d in rows.items()} == target.answers
    assert all(d.attempts == 1 for d in rows.values()), "one outcome recorded per delivery"
    assert report.done + report.retried + report.dead == records
    assert report.batches == len(target.started)


async def test_a_stop_releases_what_is_claimed_ahead_and_records_the_sends_under_way(
    store: Store,
) -> None:
    journal(store, 10)
    target = GatedTarget()
    pipe, target_runtime = runtime(target, 3)
    stop = StopToken()
    running = asyncio.create_task(push(store, pipe, target_runtime, 1, utcnow(), stop))
    await wait_until(
        lambda: target.active == 3 and count(store, DeliveryStatus.IN_FLIGHT) == 8,
        "three sends blocked, a fourth batch claimed ahead",
    )
    stop.request("SIGTERM received")
    target.open_all()
    report = await running

    assert len(target.started) == 3, "nothing sent after the stop"
    sent = {i for batch in target.started for i in batch}
    rows = {d.id or 0: d for d, _ in store.deliveries(pipeline="p")}
    assert {i for i, d in rows.items() if d.status == DeliveryStatus.DONE} == sent
    unsent = {i: d for i, d in rows.items() if i not in sent}
    assert all(d.status == DeliveryStatus.PENDING and d.attempts == 0 for d in unsent.values())
    assert [d.last_error for d in unsent.values()].count(INTERRUPTED) == 2, "claimed, released"
    assert report.done == 6


class GatedClaims(Store):
    """A store whose claims wait, from the n-th on, until the test lets them through."""

    hold_from = 10**9
    claims = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import threading

        self.gate = threading.Event()
        self.waiting = threading.Event()

    def claim(self, *args: Any, **kwargs: Any) -> list[ClaimedDelivery]:
        self.claims += 1
        if self.claims >= self.hold_from:
            self.waiting.set()
            assert self.gate.wait(30), "the test never let the claim through"
        return super().claim(*args, **kwargs)


async def test_cancelled_mid_flight_nothing_is_left_in_flight_or_both_released_and_done(
    tmp_path: Path,
) -> None:
    store = cast(GatedClaims, GatedClaims.open(f"sqlite:///{tmp_path / 's.db'}"))
    try:
        journal(store, 10)
        target = GatedTarget()
        store.hold_from = 4  # claims 1-3 fill the slots; the 4th (ahead) hangs in the store
        pipe, target_runtime = runtime(target, 3)
        running = asyncio.create_task(push(store, pipe, target_runtime, 1, utcnow(), StopToken()))
        await wait_until(
            lambda: target.active == 3 and store.waiting.is_set(), "three sends, a claim pending"
        )
        target.open(0)
        await wait_until(lambda: target.active == 2, "the first send answered")
        running.cancel()
        await asyncio.sleep(0)
        store.gate.set()  # the claim under way finishes in its thread: it must be released
        with pytest.raises(asyncio.CancelledError):
            await running

        rows = {d.id or 0: d for d, _ in store.deliveries(pipeline="p")}
        first = set(target.started[0])
        assert {i for i, d in rows.items() if d.status == DeliveryStatus.DONE} == first
        assert all(rows[i].attempts == 1 for i in first), "the answered batch recorded once"
        rest = [d for i, d in rows.items() if i not in first]
        assert all(d.status == DeliveryStatus.PENDING and d.attempts == 0 for d in rest), (
            "cut sends and the batch claimed ahead released, none recorded"
        )
        assert [d.last_error for d in rest].count(INTERRUPTED) == 6
    finally:
        store.close()


async def test_a_fatal_error_releases_unsent_batches_and_records_the_other_sends(
    store: Store,
) -> None:
    journal(store, 10)

    def second_is_rejected(index: int, batch: Sequence[Delivery]) -> list[Outcome]:
        if index == 1:
            raise FatalError("401: credentials rejected")
        return all_done(index, batch)

    target = GatedTarget(answer=second_is_rejected)
    pipe, target_runtime = runtime(target, 3)
    running = asyncio.create_task(push(store, pipe, target_runtime, 1, utcnow(), StopToken()))
    await wait_until(
        lambda: target.active == 3 and count(store, DeliveryStatus.IN_FLIGHT) == 8,
        "three sends blocked, a fourth batch claimed ahead",
    )
    target.open(1)
    await wait_until(lambda: count(store, DeliveryStatus.PENDING) == 6, "two batches released")
    target.open_all()
    with pytest.raises(FatalError):
        await running

    assert len(target.started) == 3, "nothing sent after the fatal error"
    rows = {d.id or 0: d for d, _ in store.deliveries(pipeline="p")}
    answered = set(target.started[0]) | set(target.started[2])
    assert {i for i, d in rows.items() if d.status == DeliveryStatus.DONE} == answered
    rejected = [rows[i] for i in target.started[1]]
    assert all(d.status == DeliveryStatus.PENDING and d.last_error == REJECTED for d in rejected)
    assert count(store, DeliveryStatus.IN_FLIGHT) == 0
    assert all(d.attempts == 0 for d in rows.values() if d.status == DeliveryStatus.PENDING)


async def test_a_batch_claimed_ahead_is_not_sent_once_the_lease_is_lost(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process is paused (SIGSTOP) past its lease while a batch waits in hand:
    another process takes over; on waking, that batch is not sent."""
    clock = [0.0]
    monkeypatch.setattr(push_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    points: list[str] = []
    monkeypatch.setattr(push_module, "failpoints", SimpleNamespace(hit=points.append))
    journal(store, 12)
    lease = store.acquire_lock("p", "me", 30)
    assert lease is not None
    target = GatedTarget()
    pipe, target_runtime = runtime(target, 3)
    running = asyncio.create_task(
        push(store, pipe, target_runtime, 1, utcnow(), StopToken(), lease=lease)
    )
    await wait_until(
        lambda: target.active == 3 and points.count("after_claim") == 4,
        "three sends blocked, a fourth batch claimed ahead",
    )
    clock[0] += 60  # paused for longer than the lease (30 s)
    later = utcnow() + timedelta(seconds=60)
    assert store.acquire_lock("p", "another", 30, now=later) is not None
    target.open_all()
    with pytest.raises(LeaseLost):
        await running
    assert len(target.started) == 3, "nothing sent once the lease is lost"
    assert count(store, DeliveryStatus.DONE) == 0, "no outcome written by the stale holder"
    assert count(store, DeliveryStatus.IN_FLIGHT) == 8, "left for the new owner to release"
