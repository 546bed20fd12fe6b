"""Pull: source -> journal, one stream at a time, never asking for more before
the previous answer and its cursor are committed.

Every call is marked in flight before it is sent. If its answer is lost
(timeout, 5xx, truncated body, crash), the marker stays and the next plan is
a recovery read decided by the source from the last journaled call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connectors.contract import (
    AmbiguousError,
    Backfillable,
    FatalError,
    InFlightCall,
    MalformedAnswer,
    RemoteError,
    RetriableError,
    Source,
    SourceCall,
    SourcePage,
    SourceRecord,
    StreamingSource,
    TaskSource,
)
from state import (
    WITHDRAWN,
    JournalResult,
    Lease,
    LeaseLost,
    NewRecord,
    ReadWindow,
    Store,
    StoreError,
)
from state.models import utcnow
from syncengine import failpoints
from syncengine.engine.chain import ChainSource
from syncengine.engine.feed import JournalFeed
from syncengine.engine.rejects import escape, rejected_records, screened
from syncengine.engine.runtime import PipelineRuntime
from syncengine.engine.stop import StopToken
from syncengine.logs import SECRETS, get_logger

MAX_CALLS_PER_STREAM = 100
MAX_LOST_ANSWERS_PER_STREAM = 3
SLICE = 500
"""Records per journal transaction while pushes run alongside the pull."""


@dataclass
class PullReport:
    pulled: int = 0
    duplicates: int = 0
    recoveries: int = 0
    echoes: int = 0
    """Deletions the source reported that this engine had made itself: not propagated."""
    errors: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    """What a stream's source could not tell (a task in error, a filter-based task)."""
    malformed: dict[str, int] = field(default_factory=dict)
    """Per stream: records the source could not use, journaled as dead letters."""
    streams: int = 0


def streams_to_read(store: Store, pipe: PipelineRuntime) -> list[str]:
    """The source's own streams and, for a task source, the tasks an operator registered
    and the jobs of the target it follows; tasks already read completely are skipped."""
    source = pipe.source
    names = list(source.streams())
    if not isinstance(source, TaskSource):
        return names
    cursors = {c.stream: c.value for c in store.cursors(pipe.name)}
    names += list(cursors)
    follow = pipe.config.source.follow_jobs_of
    if follow is not None:
        for remote_id in store.lineage.job_remote_ids(follow.pipeline, follow.target):
            try:
                names.append(source.task_stream(remote_id))
            except ValueError:
                continue  # a job whose id names no task of this source (another kind of job)
    return [n for n in dict.fromkeys(names) if not source.finished(cursors.get(n))]


def new_records(source: Source, records: Sequence[SourceRecord]) -> list[NewRecord]:
    """Records in the store's terms, with the upstream delivery a chained record continues."""
    link = source.link if isinstance(source, ChainSource) else (lambda record: None)
    return [
        NewRecord(r.key, r.fields, origin=r.origin, origin_delivery_id=link(r)) for r in records
    ]


async def answer_pages(source: Source, call: SourceCall) -> AsyncGenerator[SourcePage, None]:
    """A call's answer as the pages the engine journals one by one: a streaming
    source's pages as they arrive, any other source's answer as one page."""
    if isinstance(source, StreamingSource):
        async with aclosing(source.fetch_pages(call)) as pages:
            async for page in pages:
                yield page
    else:
        yield await source.fetch(call)


def _added(
    total: JournalResult, part: JournalResult, report: PullReport, stream: str, log: Any
) -> JournalResult:
    """Counts a journaled page in the run's report as soon as it is committed (a call
    that breaks off later still journaled it), and in the call's running total."""
    _count_malformed(report, stream, part.rejected, log)
    if part.withdrawn:
        log.warning(
            "withdrawn_reported_again",
            count=part.withdrawn,
            reason="records of an answer withdrawn as malformed were read again: duplicates, "
            "and what it had not sent stays dead",
            hint="once the source confirms them: syncengine dlq retry --error withdrawn",
        )
    report.pulled += part.new
    report.duplicates += part.duplicates
    report.echoes += part.echoes
    return total + part


def read_window(call: SourceCall) -> ReadWindow:
    return ReadWindow(call.window_start, call.window_end)


def page_records(source: Source, page: SourcePage) -> list[NewRecord]:
    """The page's records and the records it could not use (or the store could not
    hold), as the journal takes them."""
    records, unstorable = screened(page.records)
    return new_records(source, records) + rejected_records([*page.rejected, *unstorable])


def _count_malformed(report: PullReport, stream: str, count: int, log: Any) -> None:
    if count:
        report.malformed[stream] = report.malformed.get(stream, 0) + count
        log.warning(
            "malformed_records",
            count=count,
            hint="kept as dead letters with the reason: syncengine dlq list --error malformed",
        )


def own_effects(pipe: PipelineRuntime) -> list[tuple[str, str]]:
    follow = pipe.config.source.follow_jobs_of
    return [] if follow is None else [(follow.pipeline, follow.target)]


def _interrupted(in_flight: dict[str, object] | None) -> InFlightCall | None:
    if not in_flight:
        return None
    started = in_flight.get("started_at")
    params = in_flight.get("params")
    return InFlightCall(
        started_at=datetime.fromisoformat(str(started)),
        params=params if isinstance(params, dict) else {},
    )


def _check_retention(store: Store, pipe: PipelineRuntime, stream: str, log: Any) -> None:
    """A stream not read successfully for longer than the source keeps deletions
    may already have lost some: say so loudly, before reading."""
    horizon = pipe.config.alerts.cursor_retention
    if horizon is None:
        return
    last = store.cursor_last_success(pipe.name, stream)
    if last is not None and (utcnow() - last).total_seconds() > horizon:
        log.error(
            "alert_cursor_beyond_retention",
            last_success_at=last.isoformat(),
            retention_seconds=horizon,
            hint="deletions older than the source's retention may be gone; consider a backfill",
        )


async def _journal_page(
    store: Store,
    pipe: PipelineRuntime,
    stream: str,
    call: SourceCall,
    page: SourcePage,
    run_id: int,
    targets: list[str],
    lease: Lease | None,
    feed: JournalFeed | None,
    *,
    last: bool = False,
    recovered: dict[str, Any] | None = None,
) -> JournalResult:
    """Journal one page of a call's answer, off the event loop. Only the last page
    moves the cursor and clears the in-flight marker; the pages before it are
    journaled under the marker (see `_pull_stream`).

    With pushes running alongside (`feed`), the page goes in slices of SLICE records,
    each its own transaction, told to `feed` once committed: a claim or an outcome
    of those pushes waits for one slice, not a whole page (SQLite has one writer),
    and the slices before the last are journaled under the marker like a partial
    page, so a crash between them is recovered as between pages."""
    records = page_records(pipe.source, page)
    slices = [records]
    if feed is not None and len(records) > SLICE:
        slices = [records[i : i + SLICE] for i in range(0, len(records), SLICE)]
    effects, window = own_effects(pipe), read_window(call)
    total = JournalResult(new=0, duplicates=0)
    for i, part in enumerate(slices):
        final = last and i == len(slices) - 1
        result = await (feed.store_call if feed is not None else asyncio.to_thread)(
            store.journal,
            pipe.name,
            stream,
            part,
            cursor=page.cursor if final else None,
            targets=targets,
            run_id=run_id,
            recovered=recovered if final else None,
            advance_cursor=final,
            own_effects=effects,
            problem=page.problem if final else "",
            window=window,
            lease=lease,
        )
        total += result
        if feed is not None:
            feed.journaled()
    return total


async def pull(
    store: Store,
    pipe: PipelineRuntime,
    run_id: int,
    stop: StopToken,
    *,
    targets: list[str],
    lease: Lease | None = None,
    feed: JournalFeed | None = None,
) -> PullReport:
    """Store calls run off the event loop; under `lease`, the marker and the journal
    are fenced by it (LeaseLost once another process took the pipeline over). Each
    committed page is told to `feed`, for the pushes running alongside."""
    report = PullReport()
    log = get_logger(pipeline=pipe.name, run=run_id)
    for stream in await asyncio.to_thread(streams_to_read, store, pipe):
        if stop.is_set():
            break
        report.streams += 1
        try:
            await _pull_stream(store, pipe, stream, run_id, stop, targets, report, lease, feed)
        except (FatalError, LeaseLost, StoreError):
            raise  # the whole pipeline's trouble, not this stream's
        except (RemoteError, RetriableError) as exc:
            error, expected = escape(str(exc)), True  # it may quote the answer: stored below
        except Exception as exc:
            # Any other error is this stream's failure too (a bug, a row the store
            # refused): the next streams are still read, and the call stays in flight,
            # so the next run re-reads it.
            error, expected = one_line(exc), False
        else:
            continue
        streak = await asyncio.to_thread(store.record_stream_error, pipe.name, stream, error)
        report.errors[stream] = error
        if expected:
            log.warning("source_error", stream=stream, error=error, consecutive=streak)
        else:
            log.error("stream_failed", stream=stream, error=error, consecutive=streak)
        if streak >= pipe.config.alerts.source_errors_in_a_row:
            log.error("alert_source_failing", stream=stream, consecutive=streak, error=error)
    return report


def one_line(exc: BaseException) -> str:
    """An unexpected error in one line: its type and the first line of its message.
    A database error is told by the driver's own error: SQLAlchemy's message quotes
    the statement and its parameters, which are a source's data."""
    orig = getattr(exc, "orig", None)
    cause = orig if isinstance(orig, BaseException) else exc
    first = next(iter(str(cause).splitlines()), "")
    return escape(SECRETS.scrub(f"{type(cause).__name__}: {first}"))[:300]


async def _withdraw(
    store: Store,
    pipe: PipelineRuntime,
    stream: str,
    run_id: int,
    after_id: int,
    call: str,
    exc: MalformedAnswer,
    lease: Lease | None,
    feed: JournalFeed | None,
    log: Any,
) -> MalformedAnswer:
    """Withdraw what the malformed answer journaled and has not sent; the error that
    fails its stream, saying how many of its deliveries had gone out already.

    In turn with the pushes' store calls (`feed`): a claim made before the withdrawal
    finishes its send, and none made after it finds a delivery of that answer."""
    reason = escape(
        SECRETS.scrub(f"{WITHDRAWN}: the answer of {call} to stream {stream} was malformed ({exc})")
    )
    withdraw = feed.store_call if feed is not None else asyncio.to_thread
    try:
        done = await withdraw(
            store.withdraw,
            pipe.name,
            stream,
            run_id=run_id,
            after_id=after_id,
            reason=reason,
            lease=lease,
        )
    except (LeaseLost, StoreError):
        raise
    except Exception as error:
        # Not this stream's failure alone: the pushes alongside must stop at once, or
        # they would send what could not be withdrawn.
        raise StoreError(
            f"{pipe.name}: stream {stream}: a malformed answer's records could not be "
            f"withdrawn ({one_line(error)}); the run stops sending"
        ) from None
    log.error(
        "answer_malformed",
        error=str(exc),
        sent=done.sent,
        withdrawn=done.withdrawn,
        hint="its cursor stays; the next run reads the call again, its records as duplicates",
    )
    return MalformedAnswer(
        f"{exc}; the answer was malformed: {done.sent} of its deliveries were already "
        f"sent, {done.withdrawn} withdrawn (dead, never sent)",
        connection=exc.connection,
        code=exc.code,
    )


async def _pull_stream(
    store: Store,
    pipe: PipelineRuntime,
    stream: str,
    run_id: int,
    stop: StopToken,
    targets: list[str],
    report: PullReport,
    lease: Lease | None,
    feed: JournalFeed | None,
) -> None:
    log = get_logger(pipeline=pipe.name, run=run_id, stream=stream)
    await asyncio.to_thread(_check_retention, store, pipe, stream, log)
    lost = 0
    for number in range(1, MAX_CALLS_PER_STREAM + 1):
        state = await asyncio.to_thread(store.cursor, pipe.name, stream)
        interrupted = _interrupted(state.in_flight)
        try:
            call = pipe.source.plan(stream, state.value, interrupted, utcnow())
        except ValueError as exc:
            # A stream the source cannot read (one left by an earlier configuration).
            raise RemoteError(str(exc), connection=pipe.name) from None
        if call.recovery:
            log.warning(
                "recovery_read",
                reason="a call's answer was never journaled; re-reading its window",
                interrupted_call_started_at=interrupted.started_at.isoformat()
                if interrupted
                else None,
                params=dict(call.params),
            )
        await asyncio.to_thread(
            store.mark_in_flight, pipe.name, stream, call.params, call.started_at, lease=lease
        )
        failpoints.hit("after_mark_in_flight")
        after_id = await asyncio.to_thread(store.last_deletion_id)
        recovered = (
            {
                "params": dict(call.params),
                "interrupted_call_started_at": interrupted.started_at.isoformat()
                if interrupted
                else None,
            }
            if call.recovery
            else None
        )
        result = JournalResult(new=0, duplicates=0)
        final: SourcePage | None = None
        try:
            async with aclosing(answer_pages(pipe.source, call)) as pages:
                async for page in pages:
                    if page.partial:
                        # Records journaled before the answer is complete, under its one
                        # in-flight marker: the cursor does not move and the marker stays,
                        # so a crash or a break from here on leads to a recovery re-read
                        # of a window overlapping this call's, where what is journaled now
                        # is a duplicate. Its deliveries may go out at once: a re-read
                        # never creates them twice, and each names a record the source
                        # reported deleted, so nothing is lost or sent twice.
                        part = await _journal_page(
                            store, pipe, stream, call, page, run_id, targets, lease, feed
                        )
                        result = _added(result, part, report, stream, log)
                        failpoints.hit("between_chunks")
                        if stop.is_set():
                            # A stop mid-answer is a crash mid-answer, on purpose: the
                            # marker stays, the next run re-reads the call's window and
                            # takes what is journaled now for duplicates. Waiting for the
                            # rest of a million-record answer would outlast any grace
                            # period a supervisor gives.
                            log.warning(
                                "answer_interrupted",
                                reason=stop.why() or "stop requested",
                                journaled=result.new,
                                hint="the next run re-reads this call's window",
                            )
                            return
                        continue
                    failpoints.hit("after_fetch")
                    final = page
                    last = await _journal_page(
                        store,
                        pipe,
                        stream,
                        call,
                        page,
                        run_id,
                        targets,
                        lease,
                        feed,
                        last=True,
                        recovered=recovered,
                    )
                    result = _added(result, last, report, stream, log)
                    break
            if final is None:
                raise AmbiguousError(
                    f"{pipe.name}: stream {stream}: the answer ended before its last page",
                    connection=pipe.name,
                )
        except MalformedAnswer as exc:
            label = f"run {run_id}'s call {number} ({call.started_at.isoformat()})"
            raise await _withdraw(
                store, pipe, stream, run_id, after_id, label, exc, lease, feed, log
            ) from None
        except AmbiguousError as exc:
            lost += 1
            log.warning("source_answer_lost", error=str(exc), attempt=lost, journaled=result.new)
            if lost >= MAX_LOST_ANSWERS_PER_STREAM or stop.is_set():
                raise
            continue
        if result.echoes:
            log.info(
                "echoes_not_propagated",
                count=result.echoes,
                reason="the source reported deletions this engine made itself",
            )
        if final.problem:
            report.problems[stream] = final.problem
            log.warning("source_problem", problem=final.problem)
        if call.recovery:
            report.recoveries += 1
            log.warning("recovery_done", new=result.new, duplicates=result.duplicates)
        log.info(
            "journaled", new=result.new, duplicates=result.duplicates, params=dict(call.params)
        )
        if not final.more or stop.is_set():
            return


async def pull_backfill(
    store: Store,
    pipe: PipelineRuntime,
    run_id: int,
    stop: StopToken,
    *,
    targets: list[str],
    since: str,
    lease: Lease | None = None,
    feed: JournalFeed | None = None,
) -> PullReport:
    """Re-read every stream from `since`: journaled like any run, de-duplicated against
    what the journal holds, and without touching the daemon's cursor or its marker."""
    source = pipe.source
    assert isinstance(source, Backfillable), "checked by the caller"
    report = PullReport()
    log = get_logger(pipeline=pipe.name, run=run_id, backfill_from=since)
    for stream in source.streams():
        if stop.is_set():
            break
        report.streams += 1
        call = source.plan_backfill(stream, since, utcnow())
        result = JournalResult(new=0, duplicates=0)
        try:
            after_id = await asyncio.to_thread(store.last_deletion_id)
            try:
                async with aclosing(answer_pages(source, call)) as pages:
                    async for page in pages:
                        part = await _journal_page(
                            store, pipe, stream, call, page, run_id, targets, lease, feed
                        )
                        result = _added(result, part, report, stream, log.bind(stream=stream))
            except MalformedAnswer as exc:
                label = f"backfill run {run_id}'s call ({call.started_at.isoformat()})"
                raise await _withdraw(
                    store, pipe, stream, run_id, after_id, label, exc, lease, feed, log
                ) from None
        except (FatalError, LeaseLost, StoreError):
            raise
        except (RemoteError, RetriableError) as exc:
            report.errors[stream] = str(exc)
            log.warning("backfill_source_error", stream=stream, error=str(exc))
            continue
        except Exception as exc:
            report.errors[stream] = one_line(exc)
            log.error("backfill_stream_failed", stream=stream, error=report.errors[stream])
            continue
        log.info("backfill_journaled", stream=stream, new=result.new, duplicates=result.duplicates)
    return report
