"""One cycle of one pipeline: lock, pull, push to every target, record the run."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from connectors.contract import FatalError
from connectors.kit.jobs import AsyncTarget
from state import Lease, LeaseLost, RunOutcome, Store, StoreError
from state.models import utcnow
from syncengine.engine.feed import JournalFeed
from syncengine.engine.guard import weighs_limits
from syncengine.engine.jobs import JobPolicy, run_jobs
from syncengine.engine.lease import LeaseKeeper, holder_is_gone, owner_name
from syncengine.engine.pull import PullReport, one_line, pull, pull_backfill
from syncengine.engine.push import PushReport, push
from syncengine.engine.runtime import PipelineRuntime, TargetRuntime
from syncengine.engine.stop import StopToken
from syncengine.logs import SECRETS, get_logger

LOCK_TTL = 30.0
"""The lease's default length (`state.lease`), for holders outside a run."""
OWNER = owner_name(os.getpid())


@dataclass
class RunReport:
    pipeline: str
    outcome: RunOutcome
    run_id: int | None = None
    pull: PullReport = field(default_factory=PullReport)
    targets: dict[str, PushReport] = field(default_factory=dict)
    error: str = ""
    fatal: bool = False
    cancelled: bool = False
    """Cut by a second signal: recorded as interrupted, its sends handed back."""

    @property
    def failed(self) -> bool:
        return self.outcome in (RunOutcome.FAILED, RunOutcome.PARTIAL)


async def run_pipeline(
    store: Store,
    pipe: PipelineRuntime,
    stop: StopToken,
    *,
    job_wait: float = 0.0,
    artifacts_dir: str = "data/artifacts",
    backfill_from: str | None = None,
) -> RunReport:
    """`backfill_from` makes this a backfill: the source is re-read from that time,
    the daemon's cursor is left alone, and the run is recorded as kind backfill."""
    log = get_logger(pipeline=pipe.name)
    lease = await asyncio.to_thread(store.acquire_lock, pipe.name, OWNER, pipe.lease)
    if lease is None:
        holder = await asyncio.to_thread(store.lock_holder, pipe.name)
        if holder_is_gone(holder):
            lease = await asyncio.to_thread(
                store.acquire_lock, pipe.name, OWNER, pipe.lease, replace=holder
            )
        if lease is None:
            log.info(
                "run_skipped", reason="another process is running this pipeline", holder=holder
            )
            return RunReport(pipe.name, RunOutcome.INTERRUPTED, error=f"locked by {holder}")
        log.warning("lock_taken_over", previous_holder=holder, reason="its process is gone")
    run_stop = stop.child()
    loop = asyncio.get_running_loop()

    def lost(reason: str) -> None:
        loop.call_soon_threadsafe(run_stop.request, reason)

    keeper = LeaseKeeper(store, lease, pipe.lease, lost)
    keeper.start()
    try:
        abandoned = await asyncio.to_thread(store.close_abandoned_runs, pipe.name)
        if abandoned:
            log.warning("abandoned_runs_closed", count=abandoned)
        return await _run(store, pipe, run_stop, job_wait, artifacts_dir, backfill_from, lease)
    finally:
        await asyncio.to_thread(keeper.stop)
        await asyncio.to_thread(store.release_lock, pipe.name, OWNER)


async def _run(
    store: Store,
    pipe: PipelineRuntime,
    stop: StopToken,
    job_wait: float,
    artifacts_dir: str,
    backfill_from: str | None,
    lease: Lease,
) -> RunReport:
    run_id = await asyncio.to_thread(
        store.start_run, pipe.name, kind="run" if backfill_from is None else "backfill"
    )
    started = utcnow()
    log = get_logger(pipeline=pipe.name, run=run_id)
    log.info("run_started")
    report = RunReport(pipe.name, RunOutcome.RUNNING, run_id=run_id)
    try:
        alongside = {n: t for n, t in pipe.targets.items() if pushes_alongside_pull(t)}
        await _pull_and_push(
            store, pipe, run_id, started, stop, backfill_from, lease, alongside, report
        )
        for name, target in pipe.targets.items():
            if name in alongside:
                continue
            if isinstance(target.target, AsyncTarget):
                policy = JobPolicy(
                    stuck_after=target.config.jobs.stuck_after,
                    on_stuck=target.config.jobs.on_stuck,
                    wait=job_wait,
                    artifacts_dir=Path(artifacts_dir),
                )
                report.targets[name] = await run_jobs(
                    store, pipe, target, run_id, started, stop, policy, lease=lease
                )
            else:
                report.targets[name] = await push(
                    store, pipe, target, run_id, started, stop, lease=lease
                )
        report.targets = {n: report.targets[n] for n in pipe.targets if n in report.targets}
    except LeaseLost as exc:
        # The new owner closes this run as abandoned and sends what it left in flight;
        # this process records nothing more, not even the run's end.
        report.outcome, report.error = RunOutcome.INTERRUPTED, str(exc)
        log.error("lease_lost_run_stopped", error=str(exc), epoch=lease.epoch)
        return report
    except FatalError as exc:
        report.outcome, report.error, report.fatal = RunOutcome.FAILED, str(exc), True
        log.error("pipeline_fatal", error=str(exc))
    except asyncio.CancelledError:
        await asyncio.to_thread(_finish, store, report, RunOutcome.INTERRUPTED, "cancelled")
        raise
    except StoreError:
        raise  # the store cannot record this run either; the caller says why in one line
    except Exception as exc:
        # One line in the run's summary: a database error's full text quotes the
        # statement and its parameters (a source's data); the traceback is in the log.
        report.outcome, report.error = RunOutcome.FAILED, one_line(exc)
        log.exception("run_crashed")
    else:
        if report.pull.errors and len(report.pull.errors) >= report.pull.streams:
            report.outcome = RunOutcome.FAILED
        elif report.pull.errors:
            report.outcome = RunOutcome.PARTIAL
        elif stop.is_set():
            report.outcome = RunOutcome.INTERRUPTED
        else:
            report.outcome = RunOutcome.OK
        report.error = "; ".join(f"{s}: {e}" for s, e in report.pull.errors.items())
    await asyncio.to_thread(_finish, store, report, report.outcome, report.error)
    log.info(
        "run_finished",
        outcome=report.outcome.value,
        pulled=report.pull.pulled,
        duplicates=report.pull.duplicates,
        delivered=sum(t.done for t in report.targets.values()),
        retried=sum(t.retried for t in report.targets.values()),
        dead=sum(t.dead for t in report.targets.values()),
    )
    return report


def pushes_alongside_pull(target: TargetRuntime) -> bool:
    """A synchronous target with no mass-delete limit is pushed while the pull still
    journals: its claims screen each delivery (the legal hold) on their own. A limit
    weighs everything due at once, and a job target submits whole jobs, so those
    wait for the pull to end."""
    return not isinstance(target.target, AsyncTarget) and not weighs_limits(target.config.guard)


async def _pull_and_push(
    store: Store,
    pipe: PipelineRuntime,
    run_id: int,
    started: datetime,
    stop: StopToken,
    backfill_from: str | None,
    lease: Lease,
    alongside: dict[str, TargetRuntime],
    run: RunReport,
) -> None:
    """The pull, with the pushes of `alongside` sending each page's deliveries as soon
    as it is journaled; the pull's report and each push's go into `run`, even when a
    push fails, so its summary counts what was journaled and sent. The pushes end
    once the pull is over and nothing is due.

    If the pull fails, the pushes stop as a stopped run does (what is being sent is
    recorded, what is claimed but unsent is released) and the pull's error is the
    run's. A push's own error is raised after the pull has journaled its answer,
    in the order of the targets."""
    feed = JournalFeed() if alongside else None
    push_stop = stop.child()
    pushes = {
        name: asyncio.create_task(
            push(store, pipe, target, run_id, started, push_stop, lease=lease, feed=feed)
        )
        for name, target in alongside.items()
    }
    try:
        run.pull = await _pull(store, pipe, run_id, stop, backfill_from, lease, feed)
    except asyncio.CancelledError:
        for task in pushes.values():
            task.cancel()
        await _settled(pushes, run.targets)
        raise
    except BaseException:
        push_stop.request("the pull failed")
        if feed is not None:
            feed.close()
        await _settled(pushes, run.targets)
        raise
    if feed is not None:
        feed.close()
    errors = await _settled(pushes, run.targets)
    if errors:
        raise errors[0]


async def _settled(
    pushes: dict[str, asyncio.Task[PushReport]], reports: dict[str, PushReport]
) -> list[BaseException]:
    """Once every push has ended: the reports of those that ended well, in `reports`,
    and the errors of the others, in the targets' order."""
    if pushes:
        await asyncio.wait(pushes.values())
    errors = []
    for name, task in pushes.items():
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or error is not None:
            errors.append(error or asyncio.CancelledError())
        else:
            reports[name] = task.result()
    return errors


async def _pull(
    store: Store,
    pipe: PipelineRuntime,
    run_id: int,
    stop: StopToken,
    backfill_from: str | None,
    lease: Lease,
    feed: JournalFeed | None,
) -> PullReport:
    targets = list(pipe.targets)
    if backfill_from is None:
        return await pull(store, pipe, run_id, stop, targets=targets, lease=lease, feed=feed)
    return await pull_backfill(
        store, pipe, run_id, stop, targets=targets, since=backfill_from, lease=lease, feed=feed
    )


def _finish(store: Store, report: RunReport, outcome: RunOutcome, error: str) -> None:
    assert report.run_id is not None
    # The run summary prints this: it quotes remote answers, which may echo a secret.
    report.error = SECRETS.scrub(report.error)
    store.finish_run(
        report.run_id,
        outcome,
        pulled=report.pull.pulled,
        duplicates=report.pull.duplicates,
        delivered=sum(t.done for t in report.targets.values()),
        retried=sum(t.retried for t in report.targets.values()),
        dead=sum(t.dead for t in report.targets.values()),
        error=error,
        fatal=report.fatal,
    )
    for name, target in report.targets.items():
        # Only a target that had work has news: one that was sent nothing says nothing
        # about whether it is reachable, and keeps its failing_since as it was.
        if target.had_work:
            store.note_target_result(
                report.pipeline,
                name,
                got_through=not target.nothing_through,
                error=target.first_error,
            )
