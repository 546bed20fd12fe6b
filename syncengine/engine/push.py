"""Push: claim due deliveries, send a batch, record every outcome.

A claimed batch is either answered (each delivery done, retried later or
dead) or released back to pending; an exception never strands it in flight
beyond the next run, which releases orphans under the pipeline lock.

The loop is a small pipeline, so the store's time hides behind the network's:
the next batch is claimed while batches are being sent, and outcomes are
recorded while the next batch goes out. Up to `concurrency` sends are in
flight, with one more batch claimed ahead; store calls run one at a time, so
each claim is screened against everything recorded before it.

Given the pull's `JournalFeed`, the push runs alongside the pull: it sends
each journaled page's deliveries while the next page is read and journaled,
and ends only when a claim finds nothing due after the pull is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from connectors.contract import (
    ConnectorError,
    Delivery,
    FatalError,
    Outcome,
    OutcomeKind,
    RetriableError,
    Target,
)
from state import (
    ClaimedDelivery,
    LagCounts,
    Lease,
    LeaseLost,
    OutcomeCounts,
    OutcomeRecord,
    Store,
)
from syncengine import failpoints
from syncengine.engine.failures import classify, log_send_failed
from syncengine.engine.feed import JournalFeed, Mark
from syncengine.engine.guard import ClaimGuard, count_population
from syncengine.engine.runtime import PipelineRuntime, TargetRuntime
from syncengine.engine.stop import StopToken
from syncengine.logs import SECRETS, get_logger

JOB_LINES = 20


@dataclass
class PushReport:
    done: int = 0
    retried: int = 0
    dead: int = 0
    batches: int = 0
    released: int = 0
    held: int = 0
    jobs: list[str] = field(default_factory=list)
    """One line per job that ended in this run, `#id remote-id state`: the first
    JOB_LINES of them, the rest counted in `more_jobs`, so a run of ten thousand jobs
    keeps (and its summary prints) twenty lines."""
    more_jobs: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    """Deliveries that did not get through in this run, by the class of their reason
    (`failures.classify`): each retry, whether an error for the whole batch or job or
    the target's answer for the one delivery, and whether the store then retries it
    later or, its attempts spent, makes it dead. A dead verdict is an answer: the
    target was reached and decided, so it is not counted here."""
    first_error: str = ""
    """The first of those reasons, scrubbed of every secret."""
    answered: int = 0
    """Deliveries the target decided on in this run (done or dead)."""
    lag: LagCounts = field(default_factory=LagCounts)
    """The propagation lag of the deliveries made done, in fixed buckets."""

    def job_ended(self, line: str) -> None:
        if len(self.jobs) < JOB_LINES:
            self.jobs.append(line)
        else:
            self.more_jobs += 1

    def failed(self, reason: str, count: int = 1) -> None:
        cls = classify(reason)
        self.failures[cls] = self.failures.get(cls, 0) + count
        self.first_error = self.first_error or SECRETS.scrub(reason)

    def tally(self, records: list[OutcomeRecord]) -> list[OutcomeRecord]:
        """Count one answered batch or job; the records that did not get through."""
        retries = [r for r in records if r.kind == OutcomeKind.RETRY.value]
        self.answered += len(records) - len(retries)
        for record in retries:
            self.failed(record.reason)
        return retries

    @property
    def not_through(self) -> int:
        return sum(self.failures.values())

    @property
    def had_work(self) -> bool:
        """Something was sent (or tried) to the target in this run, and settled."""
        return self.answered + self.not_through > 0

    @property
    def nothing_through(self) -> bool:
        """It had work and none of it reached a decision of the target. Held or
        protected deliveries were never sent, so they are neither."""
        return self.had_work and self.answered == 0


def complete_outcomes(batch: list[Delivery], outcomes: list[Outcome]) -> list[OutcomeRecord]:
    """Exactly one outcome per delivery: a missing one is retried, never assumed done."""
    sent = {d.delivery_id for d in batch}
    by_id = {o.delivery_id: o for o in outcomes if o.delivery_id in sent}
    records = []
    for delivery in batch:
        outcome = by_id.get(delivery.delivery_id)
        if outcome is None:
            records.append(
                OutcomeRecord(delivery.delivery_id, "retry", reason="target returned no outcome")
            )
        else:
            records.append(
                OutcomeRecord(
                    delivery.delivery_id,
                    outcome.kind.value,
                    reason=outcome.reason,
                    retry_after=outcome.retry_after,
                    detail=outcome.detail,
                    effect=outcome.effect,
                )
            )
    return records


async def push(
    store: Store,
    pipe: PipelineRuntime,
    target: TargetRuntime,
    run_id: int,
    run_started: datetime,
    stop: StopToken,
    *,
    lease: Lease | None = None,
    feed: JournalFeed | None = None,
) -> PushReport:
    """Every store call runs off the event loop and, under `lease`, is fenced by it:
    a claim under a lost lease raises LeaseLost, so nothing more is sent. With
    `feed`, the pull is still journaling: see `JournalFeed`."""
    report = PushReport()
    sender = target.target
    assert isinstance(sender, Target), "asynchronous targets go through the job runner"
    log = get_logger(pipeline=pipe.name, run=run_id, target=target.name)
    report.released = await asyncio.to_thread(
        store.release_orphans, pipe.name, target.name, lease=lease
    )
    if report.released:
        log.warning("released_orphans", count=report.released, reason="left in flight by a crash")
    guard = ClaimGuard(target, await count_population(target))
    flow = _Flow(
        store, pipe.name, target, f"run-{run_id}", run_started, stop, guard, report, log, lease
    )
    flow.feed = feed
    flow.lease_ttl = pipe.lease
    try:
        await flow.run()
    finally:
        report.dead += guard.protected
        report.held += guard.held
        guard.report(pipe.name, log)
    return report


INTERRUPTED = "run interrupted"
REJECTED = "target credentials or configuration rejected"


@dataclass
class _Batch:
    deliveries: list[Delivery]
    claimed_at: float
    """When its claim (or a later confirmation) proved the lease held."""

    @property
    def ids(self) -> list[int]:
        return [d.delivery_id for d in self.deliveries]


_StoreOp = Literal["claim", "record", "release", "confirm"]


class _Flow:
    """One run's push to one target. Every claimed batch ends in exactly one of two
    ways: its outcomes recorded, or released back to pending. What is in flight:

    - `ready`: claimed, not sent (at most one batch, claimed ahead of need);
    - `sending`: sends under way (at most `concurrency`);
    - `answered`: sent, outcomes waiting for the store;
    - `releases`: to hand back unsent (a stop, a FatalError).

    A batch claimed ahead waits at most about one send; one that waited longer than
    a lease renewal period (a pause, SIGSTOP) is sent only once the lease is
    confirmed held, so a holder that lost its pipeline sends nothing it claimed ahead.

    A stop or a FatalError ends the run gracefully: nothing new is claimed or sent,
    what is claimed but unsent is released, and the sends under way finish and are
    recorded. Anything else (cancellation, a lost lease, a store error) cuts the sends
    under way and releases them; under a lost lease nothing more is written at all,
    and the new owner releases what this run left in flight.
    """

    def __init__(
        self,
        store: Store,
        pipeline: str,
        target: TargetRuntime,
        claim: str,
        run_started: datetime,
        stop: StopToken,
        guard: ClaimGuard,
        report: PushReport,
        log: Any,
        lease: Lease | None,
    ) -> None:
        sender = target.target
        assert isinstance(sender, Target)
        self.sender = sender
        self.store = store
        self.pipeline = pipeline
        self.target = target
        self.claim_name = claim
        self.run_started = run_started
        self.stop = stop
        self.guard = guard
        self.report = report
        self.log = log
        self.lease = lease
        self.width = target.concurrency
        self.ready: _Batch | None = None
        self.sending: dict[asyncio.Task[list[Outcome]], _Batch] = {}
        self.answered: deque[tuple[_Batch, list[OutcomeRecord]]] = deque()
        self.releases: deque[tuple[_Batch, str]] = deque()
        self.store_task: asyncio.Task[Any] | None = None
        self.store_op: tuple[_StoreOp, _Batch | None] | None = None
        self.exhausted = False
        self.feed: JournalFeed | None = None
        self.mark = Mark(0, pull_over=True)
        """The feed as the last claim started."""
        self.starved = False
        """The last claim found nothing due, but the pull may journal more."""
        self.feed_task: asyncio.Task[None] | None = None
        self.fatal: FatalError | None = None
        self.lease_ttl = 30.0
        """Seconds the lease lasts unrenewed; renewed every third of it."""

    @property
    def halting(self) -> bool:
        return self.fatal is not None or self.stop.is_set()

    async def run(self) -> None:
        try:
            await self._loop()
        except BaseException as exc:
            await self._abort(exc)
            raise
        finally:
            if self.feed_task is not None:
                self.feed_task.cancel()
        if self.fatal is not None:
            raise self.fatal

    async def _loop(self) -> None:
        while True:
            self._start_send()
            self._start_store_call()
            tasks: list[asyncio.Task[Any]] = list(self.sending)
            if self.store_task is not None:
                tasks.append(self.store_task)
            if self.starved and not self.halting:
                assert self.feed is not None
                self.feed_task = self.feed_task or asyncio.create_task(self.feed.wait(self.mark))
                tasks.append(self.feed_task)
            if not tasks:
                return
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:  # in start order: sends, the store call, the feed
                if task not in done:
                    continue
                if task is self.store_task:
                    self._store_done(task)
                elif task is self.feed_task:
                    self.feed_task, self.starved = None, False
                else:
                    self._send_done(task)

    def _start_send(self) -> None:
        """A send starts before the claim ahead of it, so a send that finds the lease
        lost (another process took over) is seen by that claim, which then fails."""
        if self._may_send() and self._fresh():
            assert self.ready is not None
            task = asyncio.create_task(self.sender.send(self.ready.deliveries))
            self.sending[task] = self.ready
            self.ready = None

    def _may_send(self) -> bool:
        return self.ready is not None and len(self.sending) < self.width and not self.halting

    def _fresh(self) -> bool:
        assert self.ready is not None
        waited = time.monotonic() - self.ready.claimed_at
        return self.lease is None or waited <= self.lease_ttl / 3

    def _start_store_call(self) -> None:
        if self.store_task is not None:
            return
        if self.halting and self.ready is not None:
            self.releases.append((self.ready, REJECTED if self.fatal else INTERRUPTED))
            self.ready = None
        wants_claim = not (self.halting or self.exhausted or self.starved) and self.ready is None
        if self.releases:
            batch, reason = self.releases.popleft()
            self._store("release", batch, self.store.release, batch.ids, reason)
        elif self._may_send() and not self._fresh():
            self._store("confirm", self.ready, self.store.renew_lease, ttl=self.lease_ttl)
        elif wants_claim and len(self.sending) < self.width:
            self._claim()
        elif self.answered:
            batch, records = self.answered.popleft()
            self._store("record", batch, self.store.record_outcomes, records, self.target.rule)
        elif wants_claim:
            self._claim()

    def _claim(self) -> None:
        if self.feed is not None:
            self.mark = self.feed.mark()
        self._store(
            "claim",
            None,
            self.store.claim,
            self.pipeline,
            self.target.name,
            self.sender.batch_size,
            self.claim_name,
            fresh_before=self.run_started,
            screen=self.guard,
        )

    def _store(
        self, op: _StoreOp, batch: _Batch | None, call: Callable[..., Any], *args: Any, **kw: Any
    ) -> None:
        """Off the event loop, fenced by the lease like every store call of a run; in
        turn with the pull's when it runs alongside."""
        run = self.feed.store_call if self.feed is not None else asyncio.to_thread
        self.store_task = asyncio.create_task(run(call, *args, **kw, lease=self.lease))
        self.store_op = (op, batch)

    def _store_done(self, task: asyncio.Task[Any]) -> None:
        assert self.store_op is not None
        (op, batch), self.store_task, self.store_op = self.store_op, None, None
        # A failed call wrote nothing (its transaction rolled back): what it was about
        # stays in flight, for the next run's release of orphans.
        result = task.result()
        if op == "claim":
            self._claimed(result)
        elif op == "confirm":
            if not result:
                assert self.lease is not None
                raise LeaseLost(self.lease, "another process")
            assert batch is not None
            batch.claimed_at = time.monotonic()
        elif op == "record":
            assert batch is not None
            self._recorded(batch, result)

    def _claimed(self, claimed: list[ClaimedDelivery]) -> None:
        if not claimed:
            if self.mark.pull_over:
                self.exhausted = True
            else:
                self.starved = True
            return
        self.guard.claimed(claimed)
        deliveries = [Delivery(c.id, c.stream, c.key, c.fields) for c in claimed]
        self.ready = _Batch(deliveries, claimed_at=time.monotonic())
        failpoints.hit("after_claim")

    def _recorded(self, batch: _Batch, counts: OutcomeCounts) -> None:
        self.report.batches += 1
        self.report.done += counts.done
        self.report.retried += counts.retried
        self.report.dead += counts.dead
        self.report.lag.add(counts.lag)
        self.log.info(
            "batch_sent",
            size=len(batch.deliveries),
            done=counts.done,
            retried=counts.retried,
            dead=counts.dead,
        )

    def _send_done(self, task: asyncio.Task[list[Outcome]]) -> None:
        batch = self.sending.pop(task)
        ids = batch.ids
        try:
            outcomes = task.result()
        except FatalError as exc:
            self.fatal = self.fatal or exc
            self.releases.append((batch, REJECTED))
            return
        except RetriableError as exc:
            outcomes = [Outcome.retry(i, str(exc), exc.retry_after) for i in ids]
        except ConnectorError as exc:
            outcomes = [Outcome.retry(i, str(exc)) for i in ids]
        except BaseException:
            self.releases.append((batch, INTERRUPTED))
            raise
        failpoints.hit("after_send")
        records = complete_outcomes(batch.deliveries, outcomes)
        self._failures(batch, records)
        self.answered.append((batch, records))

    def _failures(self, batch: _Batch, records: list[OutcomeRecord]) -> None:
        """Counted as the answer arrives (the store records it next, or the run fails)."""
        retries = self.report.tally(records)
        if not retries:
            return
        first = retries[0]
        key = next(d.key for d in batch.deliveries if d.delivery_id == first.delivery_id)
        log_send_failed(
            self.log,
            self.pipeline,
            self.target.name,
            reason=first.reason,
            deliveries=len(retries),
            request={"batch_size": len(batch.deliveries), "first_key": key},
        )

    async def _abort(self, exc: BaseException) -> None:
        """Cut the sends under way, then settle every batch in hand: answered ones are
        recorded, the rest released (a cut send may or may not have reached the target;
        sending it again is safe). Under a lost lease nothing is written."""
        for task in self.sending:
            task.cancel()
        pending = [*self.sending, *([self.store_task] if self.store_task else [])]
        if pending:
            await asyncio.wait(pending)
        for task in list(self.sending):
            with contextlib.suppress(BaseException):  # it lands in answered or releases
                self._send_done(task)
        if self.store_task is not None:
            with contextlib.suppress(BaseException):  # a failed call wrote nothing
                self._store_done(self.store_task)
        if self.ready is not None:
            self.releases.append((self.ready, INTERRUPTED))
            self.ready = None
        if isinstance(exc, LeaseLost):
            return
        try:
            while self.answered:
                batch, records = self.answered.popleft()
                counts = await asyncio.to_thread(
                    self.store.record_outcomes, records, self.target.rule, lease=self.lease
                )
                self._recorded(batch, counts)
            while self.releases:
                batch, reason = self.releases.popleft()
                await asyncio.to_thread(self.store.release, batch.ids, reason, lease=self.lease)
        except Exception as cleanup:  # the run's own error is the one raised
            self.log.error(
                "push_cleanup_failed",
                error=f"{type(cleanup).__name__}: {cleanup}",
                left_in_flight="released by the next run",
            )
