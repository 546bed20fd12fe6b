"""Push: claim due deliveries, send a batch, record every outcome.

A claimed batch is either answered (each delivery done, retried later or
dead) or released back to pending; an exception never strands it in flight
beyond the next run, which releases orphans under the pipeline lock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connectors.contract import (
    ConnectorError,
    Delivery,
    FatalError,
    Outcome,
    RetriableError,
    Target,
)
from state import Lease, OutcomeRecord, Store
from syncengine import failpoints
from syncengine.engine.guard import ClaimGuard, count_population
from syncengine.engine.runtime import PipelineRuntime, TargetRuntime
from syncengine.engine.stop import StopToken
from syncengine.logs import get_logger


@dataclass
class PushReport:
    done: int = 0
    retried: int = 0
    dead: int = 0
    batches: int = 0
    released: int = 0
    held: int = 0
    jobs: list[str] = field(default_factory=list)
    """One line per job that ended in this run: `#id remote-id state`."""


def complete_outcomes(batch: list[Delivery], outcomes: list[Outcome]) -> list[OutcomeRecord]:
    """Exactly one outcome per delivery: a missing one is retried, never assumed done."""
    by_id = {o.delivery_id: o for o in outcomes if o.delivery_id in {d.delivery_id for d in batch}}
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
) -> PushReport:
    """Every store call runs off the event loop and, under `lease`, is fenced by it:
    a claim under a lost lease raises LeaseLost, so nothing more is sent."""
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
    try:
        await _claim_and_send(
            store, pipe.name, target, f"run-{run_id}", run_started, stop, guard, report, log, lease
        )
    finally:
        report.dead += guard.protected
        report.held += guard.held
        guard.report(pipe.name, log)
    return report


async def _claim_and_send(
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
    """Each claim screens what it takes (legal hold, mass-delete limits) in its own
    transaction, so a delivery made due during the run is screened too."""
    sender = target.target
    assert isinstance(sender, Target)
    while not stop.is_set():
        claimed = await asyncio.to_thread(
            store.claim,
            pipeline,
            target.name,
            sender.batch_size,
            claim,
            fresh_before=run_started,
            screen=guard,
            lease=lease,
        )
        if not claimed:
            break
        guard.claimed(claimed)
        batch = [Delivery(c.id, c.stream, c.key, c.fields) for c in claimed]
        ids = [d.delivery_id for d in batch]
        failpoints.hit("after_claim")
        try:
            outcomes = await sender.send(batch)
        except FatalError:
            await asyncio.to_thread(
                store.release, ids, "target credentials or configuration rejected", lease=lease
            )
            raise
        except RetriableError as exc:
            outcomes = [Outcome.retry(i, str(exc), exc.retry_after) for i in ids]
        except ConnectorError as exc:
            outcomes = [Outcome.retry(i, str(exc)) for i in ids]
        except BaseException:
            await asyncio.to_thread(store.release, ids, "run interrupted", lease=lease)
            raise
        failpoints.hit("after_send")
        counts = await asyncio.to_thread(
            store.record_outcomes, complete_outcomes(batch, outcomes), target.rule, lease=lease
        )
        report.batches += 1
        report.done += counts.done
        report.retried += counts.retried
        report.dead += counts.dead
        log.info(
            "batch_sent",
            size=len(batch),
            done=counts.done,
            retried=counts.retried,
            dead=counts.dead,
        )
