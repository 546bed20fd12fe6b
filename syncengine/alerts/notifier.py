"""Sends the alerts the store queued, beside the pipelines and never in their way.

The outbox (`state.alerts`) is written when a condition opens or resolves; this
takes due notices from it, each claimed for a while so two daemons never send the
same one, and sends each to its sink. Each sink has its own lane (one task, one
notice at a time, in order, so "recovered" never overtakes its alert): a sink
that is down or slow holds up only its own lane, every attempt is bounded by the
delivery timeout, and a failure is tried again with backoff until
`alerts.delivery.max_attempts`. A notice whose claim would run out before its
attempt could end is left for the next claim, whoever makes it: delivery is at
least once, and `alert_id` lets a receiver drop the rare duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from connectors.kit import redact
from state.alerts import backoff
from state.models import utcnow
from syncengine.alerts.sinks import Sender, SendFailed, build_senders
from syncengine.alerts.text import fallback_command, summary
from syncengine.logs import SECRETS, get_logger

if TYPE_CHECKING:
    from state import Store
    from state.alerts import Notice
    from syncengine.config import Config
    from syncengine.engine.stop import StopToken

POLL = 5.0
"""Seconds between looks at the outbox (`wake()` looks at once)."""
BATCH = 20
MARGIN = 5.0
"""Seconds kept between an attempt's end and its claim's, for marking it sent."""
BACKSTOP = 1.0
"""Seconds past the delivery timeout an attempt is cut at, if the sink did not end it."""
STOP_GRACE = 5.0
"""Seconds a stopping daemon gives the alerts under way and those just queued."""
RUN_ONCE_MOST = 30.0


def once_deadline(config: Config) -> float:
    """How long `run --once` waits for its alerts: a few attempts' worth, at most 30 s."""
    return min(RUN_ONCE_MOST, 3 * config.alerts.delivery.timeout)


class Notifier:
    def __init__(self, store: Store, config: Config, *, poll: float = POLL) -> None:
        self.store = store
        self.config = config
        """Replaced by the daemon on a reload: sinks added or changed take effect at once."""
        self.poll = poll
        self.log = get_logger("syncengine.alerts")
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self._senders: tuple[object, dict[str, Sender]] | None = None
        self._claimed: dict[int, tuple[Notice, datetime]] = {}
        self._queues: dict[str, deque[int]] = {}
        self._lanes: dict[str, asyncio.Task[None]] = {}

    def wake(self) -> None:
        """Look at the outbox now (a run just queued alerts)."""
        self._wake.set()

    @property
    def enabled(self) -> bool:
        return bool(self.config.alerts.sinks)

    async def run(self, stop: StopToken) -> None:
        """The daemon's background task, until `stop`; then a short grace for the
        alerts under way and those the last runs queued."""
        async with self._open():
            while not stop.is_set():
                if self.enabled:
                    await self._claim_due()
                await self._sleep(stop)
            await self._settle(STOP_GRACE)

    async def _claim_due(self) -> None:
        window = timedelta(seconds=3 * self._timeout() + 30)
        try:
            while await self._claim(utcnow() + window) == BATCH:
                pass
        except Exception as exc:  # a fault here must not end alerting for the daemon's life
            self.log.error("notifier_error", error=_scrub(f"{type(exc).__name__}: {exc}", []))

    async def flush(self, deadline_seconds: float) -> None:
        """Send what is due within `deadline_seconds` (`run --once`); what is left
        stays in the outbox for the next run or the daemon. Never raises: an alert
        that cannot go out must not fail the run that raised it."""
        if not self.enabled:
            return
        try:
            async with self._open():
                await self._settle(deadline_seconds)
        except Exception as exc:  # see the docstring: logged, never raised
            error = SECRETS.scrub(f"{type(exc).__name__}: {exc}")
            self.log.error("notification_flush_failed", error=error)

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[None]:
        self._client = httpx.AsyncClient(follow_redirects=False)
        try:
            yield
        finally:
            await self._cancel_lanes()
            await self._client.aclose()
            self._client, self._senders = None, None

    def _timeout(self) -> float:
        return self.config.alerts.delivery.timeout

    async def _sleep(self, stop: StopToken) -> None:
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        self._wake.clear()

    async def _settle(self, seconds: float) -> None:
        """The lanes' alerts, then each batch due, until none is left or `seconds` pass."""
        until = utcnow() + timedelta(seconds=seconds + self._timeout() + MARGIN)
        try:
            async with asyncio.timeout(seconds):
                await self._lanes_idle()
                while self.enabled and await self._claim(until):
                    await self._lanes_idle()
        except TimeoutError:
            left = sum(len(q) for q in self._queues.values()) + sum(
                not lane.done() for lane in self._lanes.values()
            )
            self.log.info(
                "notifications_left_in_outbox",
                after_seconds=seconds,
                left=left,
                effect="the next run or the daemon sends them",
            )

    async def _lanes_idle(self) -> None:
        while lanes := [lane for lane in self._lanes.values() if not lane.done()]:
            await asyncio.wait(lanes)

    async def _cancel_lanes(self) -> None:
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        self._lanes.clear()
        self._queues.clear()
        self._claimed.clear()

    async def _claim(self, until: datetime) -> int:
        """Claim due notices until `until` and hand each to its sink's lane."""
        try:
            notices = await asyncio.to_thread(self.store.claim_notices, until, BATCH)
        except Exception as exc:  # the store comes back; the daemon goes on
            self._outbox_unavailable(exc)
            return 0
        for notice in notices:
            queued = notice.id in self._claimed
            self._claimed[notice.id] = (notice, until)
            if not queued:
                self._queues.setdefault(notice.sink, deque()).append(notice.id)
            lane = self._lanes.get(notice.sink)
            if lane is None or lane.done():
                self._lanes[notice.sink] = asyncio.create_task(self._lane(notice.sink))
        return len(notices)

    async def _lane(self, sink: str) -> None:
        queue = self._queues[sink]
        while queue:
            notice, until = self._claimed.pop(queue.popleft())
            if utcnow() + timedelta(seconds=self._timeout() + MARGIN) > until:
                continue  # the claim runs out before the attempt could end: the next claim sends it
            await self._deliver(notice)

    def _sender(self, name: str) -> Sender | None:
        assert self._client is not None
        alerts = self.config.alerts
        if self._senders is None or self._senders[0] is not alerts:
            self._senders = (alerts, build_senders(alerts, self._client))
        return self._senders[1].get(name)

    async def _deliver(self, notice: Notice) -> None:
        sender = self._sender(notice.sink)
        secrets = [*self.config.secrets, *(sender.secrets() if sender is not None else [])]
        now = utcnow()
        document = self._document(notice, secrets)
        try:
            if sender is None:
                raise SendFailed(f"no sink named {notice.sink!r} in {self.config.path}")
            # Each sink bounds its own attempt; this is the backstop should one not.
            async with asyncio.timeout(self._timeout() + BACKSTOP):
                await sender.send(document, _scrub(summary(document, now), secrets), now)
        except SendFailed as exc:
            error = str(exc)
        except TimeoutError:
            error = f"timeout after {self._timeout() + BACKSTOP:g} s"
        except Exception as exc:  # one sink's fault must not stop the others
            error = f"{type(exc).__name__}: {exc}"
        else:
            await self._store(self.store.notice_sent, notice.id)
            self.log.info(
                "notification_sent", sink=notice.sink, condition=document["key"], alert=notice.event
            )
            return
        await self._failed(notice, _scrub(error, secrets))

    async def _failed(self, notice: Notice, error: str) -> None:
        delivery = self.config.alerts.delivery
        attempts = notice.attempts + 1
        fields = {
            "sink": notice.sink,
            "condition": notice.payload.get("key"),
            "alert": notice.event,
            "attempts": attempts,
            "error": error,
        }
        if attempts >= delivery.max_attempts:
            await self._store(self.store.notice_failed, notice.id, error, None)
            self.log.error(
                "alert_given_up",
                **fields,
                hint="fix the sink; the condition's next episode raises a new alert",
            )
            return
        wait = backoff(attempts, delivery.backoff, delivery.max_backoff)
        await self._store(self.store.notice_failed, notice.id, error, utcnow() + wait)
        self.log.warning("notification_failed", **fields, retry_in=wait.total_seconds())

    async def _store(self, call: Any, *args: Any) -> None:
        try:
            await asyncio.to_thread(call, *args)
        except Exception as exc:  # its claim runs out; it is sent again then
            self._outbox_unavailable(exc)

    def _outbox_unavailable(self, exc: Exception) -> None:
        self.log.warning(
            "notification_outbox_unavailable",
            error=SECRETS.scrub(f"{type(exc).__name__}: {exc}"),
            effect="alerts wait in the store until it answers",
        )

    def _document(self, notice: Notice, secrets: Sequence[str]) -> dict[str, Any]:
        """The alert as every sink sends it: the condition, an id a receiver can drop
        duplicates by, a command (there is always one), nothing secret."""
        payload = dict(notice.payload)
        if not payload.get("command"):
            payload["command"] = fallback_command(
                str(payload.get("kind", "")),
                payload.get("pipeline"),
                payload.get("target"),
                self.config.path,
            )
        payload["status"] = "resolved" if notice.event == "resolved" else "firing"
        payload["alert_id"] = f"{payload.get('key')}#{payload.get('episode')}:{notice.event}"
        cleaned = _scrub_all(payload, secrets)
        assert isinstance(cleaned, dict)
        return cleaned


def _scrub(text: str, secrets: Sequence[str]) -> str:
    return redact.scrub(SECRETS.scrub(text), frozenset(s for s in secrets if s))


def _scrub_all(value: Any, secrets: Sequence[str]) -> Any:
    if isinstance(value, str):
        return _scrub(value, secrets)
    if isinstance(value, dict):
        return {k: _scrub_all(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_all(v, secrets) for v in value]
    return value
