"""A run never blocks the event loop on the store, and stops sending at once when
another process has taken its pipeline over."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from connectors.contract import EXACT_KEYS, Delivery, Outcome
from state import ClaimedDelivery, Lease, LeaseLost, NewRecord, Store
from state.models import DeliveryStatus, PipelineLock, utcnow
from syncengine.engine.lease import LeaseKeeper
from syncengine.engine.push import push
from syncengine.engine.stop import StopToken
from tests.unit.fake_runtime import fake_runtime


class RecordingTarget:
    batch_size = 2
    key_match = EXACT_KEYS

    def __init__(self) -> None:
        self.sent: list[list[int]] = []
        self.on_send: Any = None

    async def send(self, batch: Sequence[Delivery]) -> list[Outcome]:
        self.sent.append([d.delivery_id for d in batch])
        if self.on_send is not None:
            self.on_send()
        return [Outcome.done(d.delivery_id) for d in batch]

    async def aclose(self) -> None:
        return None


def journal(store: Store, count: int) -> None:
    records = [NewRecord(str(i), {"K": str(i)}) for i in range(count)]
    store.journal("p", "T", records, cursor={}, targets=["t"], run_id=None)


class GatedStore(Store):
    """A store whose claim holds until the event loop has shown it is free."""

    gate = threading.Event()

    def claim(self, *args: Any, **kwargs: Any) -> list[ClaimedDelivery]:
        if not self.gate.wait(timeout=30):
            raise AssertionError("the event loop never ran while a store call was in progress")
        return super().claim(*args, **kwargs)


async def test_the_event_loop_runs_while_a_store_call_is_in_progress(tmp_path: Path) -> None:
    store = GatedStore.open(f"sqlite:///{tmp_path / 's.db'}")
    try:
        journal(store, 3)
        target = RecordingTarget()
        pipe, target_runtime = fake_runtime(target)

        async def open_the_gate() -> None:
            store.gate.set()

        opener = asyncio.create_task(open_the_gate())
        report = await push(store, pipe, target_runtime, 1, utcnow(), StopToken())
        await opener
        assert report.done == 3
    finally:
        store.close()


async def test_a_run_that_lost_its_lease_sends_and_records_nothing_more(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    try:
        journal(store, 6)
        lease = store.acquire_lock("p", "me", 30)
        assert lease is not None
        target = RecordingTarget()

        def taken_over() -> None:
            later = utcnow() + timedelta(seconds=60)
            assert store.acquire_lock("p", "another", 30, now=later) is not None

        target.on_send = taken_over
        pipe, target_runtime = fake_runtime(target)
        with pytest.raises(LeaseLost):
            await push(store, pipe, target_runtime, 1, utcnow(), StopToken(), lease=lease)
        assert len(target.sent) == 1, "nothing sent after the lease was lost"
        statuses = sorted(d.status for d, _ in store.deliveries(pipeline="p"))
        assert statuses == [DeliveryStatus.IN_FLIGHT] * 2 + [DeliveryStatus.PENDING] * 4, (
            "the batch under way has no outcome written; the new owner sends it again"
        )
    finally:
        store.close()


def expires_at(store: Store) -> datetime:
    with Session(store.engine) as s:
        row = s.get(PipelineLock, "p")
        assert row is not None
        return row.expires_at


async def test_the_keeper_renews_the_lease_and_reports_its_loss(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    try:
        lease = store.acquire_lock("p", "me", 0.6)
        assert lease is not None
        first = expires_at(store)
        lost = threading.Event()
        keeper = LeaseKeeper(store, lease, 0.6, lambda reason: lost.set())
        keeper.start()
        try:
            for _ in range(300):
                if expires_at(store) > first:
                    break
                await asyncio.sleep(0.1)
            assert expires_at(store) > first, "renewed by the keeper"
            later = utcnow() + timedelta(seconds=60)
            taken = store.acquire_lock("p", "another", 30, now=later)
            assert taken == Lease("p", "another", lease.epoch + 1)
            assert await asyncio.to_thread(lost.wait, 30), "the keeper told the run"
        finally:
            keeper.stop()
    finally:
        store.close()
