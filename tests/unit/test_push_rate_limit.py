"""Concurrent batches of one target share its connection's one HTTP client, so its
rate limit holds for all of them together.

The run goes on an event loop whose clock is virtual: time moves only when every task
waits for a timer, by exactly that wait. The limiter reads that clock, so the calls'
times below are what the limiter saw, whatever the machine's speed."""

from __future__ import annotations

import asyncio
import itertools
import selectors
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from connectors.contract import EXACT_KEYS, Delivery, Outcome
from connectors.kit.http import HttpClient
from state import NewRecord, Store
from state.models import DeliveryStatus, utcnow
from syncengine.engine.push import push
from syncengine.engine.stop import StopToken
from tests.unit.fake_runtime import fake_runtime

CALLS_PER_SECOND = 20
LATENCY = 0.3
"""Each answer takes this long (virtual), longer than the spacing of calls, so several
batches are under way at once and compete for the limiter."""


TICK = 1e-6
"""What one turn of the loop costs in virtual time: like a real clock, time always moves
on (a limiter waking a hair early must find time passed when it looks again)."""


class TimeTravel(selectors.DefaultSelector):
    """While a thread works (a store call), waits for it for real: store calls take no
    virtual time. Otherwise, rather than wait for the next timer, jumps the clock to it."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.threads = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        self.now += TICK
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None or self.threads:
            return super().select(None)
        self.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.travel = TimeTravel()
        super().__init__(selector=self.travel)

    def time(self) -> float:
        return self.travel.now

    def run_in_executor(  # type: ignore[override]  # counts threads; same call as the base
        self, executor: Any, func: Any, *args: Any
    ) -> asyncio.Future[Any]:
        future = super().run_in_executor(executor, func, *args)
        self.travel.threads += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, future: asyncio.Future[Any]) -> None:
        self.travel.threads -= 1


class TwoCallTarget:
    """A send is a lookup then a delete, like Mongoose's, through one shared client."""

    key_match = EXACT_KEYS
    batch_size = 3

    def __init__(self, http: HttpClient) -> None:
        self.http = http
        self.active = 0
        self.peak = 0

    async def send(self, batch: Sequence[Delivery]) -> list[Outcome]:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.http.request("GET", "/lookup", idempotent=True)
            await self.http.request("POST", "/delete", idempotent=False)
        finally:
            self.active -= 1
        return [Outcome.done(d.delivery_id) for d in batch]

    async def aclose(self) -> None:
        await self.http.aclose()


def test_four_batches_in_flight_keep_the_connections_rate_limit(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    records = [NewRecord(str(i), {"K": str(i)}) for i in range(60)]
    store.journal("p", "T", records, cursor={}, targets=["t"], run_id=None)
    calls: list[float] = []
    loop = VirtualTimeLoop()

    async def answer(request: httpx.Request) -> httpx.Response:
        calls.append(loop.time())
        await asyncio.sleep(LATENCY)
        return httpx.Response(200, json={})

    async def main() -> Any:
        http = HttpClient(
            connection="erp",
            base_url="http://erp.invalid",
            calls_per_second=CALLS_PER_SECOND,
            transport=httpx.MockTransport(answer),
        )
        target = TwoCallTarget(http)
        pipe, target_runtime = fake_runtime(target)
        target_runtime.config = target_runtime.config.model_copy(update={"concurrency": 4})
        try:
            return target, await push(store, pipe, target_runtime, 1, utcnow(), StopToken())
        finally:
            await target.aclose()

    try:
        target, report = loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_default_executor())
        assert {d.status for d, _ in store.deliveries(pipeline="p")} == {DeliveryStatus.DONE}
    finally:
        loop.close()
        store.close()

    assert report.done == 60 and len(calls) == 2 * 20
    assert target.peak == 4, "four batches were under way at once"
    spacing = 1 / CALLS_PER_SECOND
    gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
    assert min(gaps) >= spacing * (1 - 1e-9), "calls evenly spaced, never in a burst"
    for start in calls:
        in_window = [t for t in calls if start <= t < start + 1.0 - 1e-9]
        assert len(in_window) <= CALLS_PER_SECOND, f"{len(in_window)} calls in 1 s from {start}"
