"""A run's summary counts what it journaled and sent even when a target fails in a way
nobody classified (a connection whose URL the HTTP client refuses raised an
ExceptionGroup from a TaskGroup): the run said `pulled 0` though its answer was
journaled and the cursor had moved."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from connectors.contract import Delivery, Outcome
from state import RunOutcome, Store
from syncengine.config.models import GuardSettings
from syncengine.engine.pipeline import run_pipeline
from syncengine.engine.stop import StopToken
from tests.unit.test_pull_alongside_push import PAGE, PagedSource, RecordingTarget, pipeline


class UnusableTarget(RecordingTarget):
    async def send(self, batch: Sequence[Delivery]) -> list[Outcome]:
        self.first_send.set()
        raise ExceptionGroup(
            "unhandled errors in a TaskGroup", [ValueError("Port out of range 0-65535")]
        )


def test_a_target_failing_unexpectedly_leaves_the_pull_counted(sqlite_store: Store) -> None:
    target = UnusableTarget()
    pipe = pipeline(PagedSource(target), target, GuardSettings())
    report = asyncio.run(run_pipeline(sqlite_store, pipe, StopToken()))

    assert report.outcome is RunOutcome.FAILED
    assert sqlite_store.cursor("p", "T").in_flight is None, "the whole answer was journaled"
    assert report.pull.pulled == 2 * PAGE
    last = sqlite_store.last_run("p")
    assert last is not None and last.pulled == 2 * PAGE, "the stored run says so too"
