"""The only code that writes the durable state.

Every method is one short transaction. The order of writes is what keeps the
invariants: a source call is marked in flight before it is sent; its records,
their deliveries and the next cursor are committed together; a delivery is
claimed before its send and its outcome recorded after.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session, col, select

from state.db import StoreError, make_engine, upgrade
from state.lease import Lease, check_lease
from state.lineage import Lineage
from state.models import (
    OPEN_PHASES,
    Cursor,
    Deletion,
    Delivery,
    DeliveryStatus,
    Job,
    JobPhase,
    PipelineLock,
    Run,
    RunOutcome,
    Scrub,
    scrub_error_text,
    utcnow,
)
from state.schema import at_head


@dataclass(frozen=True)
class NewRecord:
    """A record to journal (the store's own shape: it does not import connectors).

    `origin` names the record in its source system; `origin_delivery_id` links it
    to the upstream delivery it continues (chained pipelines). `rejected` is the
    reason for a record the source could not use: journaled, never sent, a dead
    letter to every target.
    """

    key: str
    fields: Mapping[str, Any]
    origin: str = ""
    origin_delivery_id: int | None = None
    rejected: str = ""


@dataclass(frozen=True)
class ReadWindow:
    """The span of source time one read covers, half-open [start, end), aware; None is
    unbounded. Two reads overlap when each starts before the other ends."""

    start: datetime | None = None
    end: datetime | None = None


MALFORMED = "malformed record"
"""How the dead letter of a record the source could not use begins (`dlq list --error`)."""


LOCK_WAIT_MS = 2000
"""How long taking a lease waits for its holder's write in progress before calling it held."""
LOCK_NOT_AVAILABLE = "55P03"
"""PostgreSQL's lock_timeout error."""

CHUNK = 500
"""Keys per query: well under SQLite's and PostgreSQL's bound-parameter limits."""


def _overlapping(window: ReadWindow) -> list[ColumnElement[bool]]:
    """Conditions on a deletion's window: it overlaps `window` (unbounded ends always do)."""
    conditions: list[ColumnElement[bool]] = []
    if window.end is not None:
        conditions.append(
            or_(col(Deletion.window_start).is_(None), col(Deletion.window_start) < window.end)
        )
    if window.start is not None:
        conditions.append(
            or_(col(Deletion.window_end).is_(None), col(Deletion.window_end) > window.start)
        )
    return conditions


@dataclass(frozen=True)
class CursorState:
    value: dict[str, Any] | None
    in_flight: dict[str, Any] | None
    in_flight_since: datetime | None


@dataclass(frozen=True)
class Cause:
    """A done delivery of this engine, found by the effect a source reports."""

    delivery_id: int
    pipeline: str
    target: str


@dataclass(frozen=True)
class JournalResult:
    new: int
    duplicates: int
    echoes: int = 0
    """New deletions this engine had caused itself: journaled, not propagated."""
    rejected: int = 0
    """New records the source could not use: journaled as dead letters."""


@dataclass(frozen=True)
class ClaimedDelivery:
    id: int
    attempts: int
    stream: str
    key: str
    fields: dict[str, Any]
    approved: bool = False
    """An operator released it from a mass-delete hold (never from a legal hold)."""


@dataclass(frozen=True)
class GuardCounts:
    """What a mass-delete guard weighs, counted in the claim's own transaction."""

    due: int
    """Due deliveries of the target that no operator approved."""
    done_last_hour: int
    in_flight: int
    """Claimed and not answered yet (the items of open jobs)."""


class Screen(Protocol):
    """The guards, asked inside the claim's transaction, so nothing is sent on a verdict
    older than the claim (a delivery made due mid-run by a retry is screened too).

    The engine implements it; the store only applies the verdicts: a protected
    delivery becomes dead with the reason, and a hold holds every due delivery
    that no operator approved.
    """

    def protect(self, delivery: ClaimedDelivery) -> str | None:
        """Why this delivery must never be sent (approved or not), or None."""
        ...

    def hold(self, counts: GuardCounts) -> str | None:
        """Why the due deliveries no operator approved must wait, or None."""
        ...

    def on_hold(self, count: int, reason: str) -> None:
        """`count` deliveries were just held for `reason`."""
        ...


@dataclass(frozen=True)
class RetryRule:
    """How a target's failed deliveries are retried before they are dead."""

    max_attempts: int = 10
    base_delay: float = 30.0
    max_delay: float = 3600.0

    def next_attempt(self, now: datetime, attempts: int, retry_after: float | None) -> datetime:
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, attempts - 1)))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return now + timedelta(seconds=delay)


@dataclass(frozen=True)
class OutcomeRecord:
    """A target's verdict in the store's own terms: done, retry or dead."""

    delivery_id: int
    kind: str
    reason: str = ""
    retry_after: float | None = None
    detail: str = ""
    effect: str = ""


@dataclass
class OutcomeCounts:
    done: int = 0
    retried: int = 0
    dead: int = 0


@dataclass(frozen=True)
class TargetCounts:
    pipeline: str
    target: str
    counts: dict[str, int] = field(default_factory=dict)


def _apply_outcomes(
    s: Session, outcomes: Iterable[OutcomeRecord], rule: RetryRule, now: datetime
) -> OutcomeCounts:
    counts = OutcomeCounts()
    by_id = {o.delivery_id: o for o in outcomes}
    if not by_id:
        return counts
    rows = s.exec(select(Delivery).where(col(Delivery.id).in_(list(by_id)))).all()
    for delivery in rows:
        assert delivery.id is not None
        outcome = by_id[delivery.id]
        delivery.updated_at = now
        delivery.claim = None
        delivery.attempts += 1
        if outcome.kind == "done":
            delivery.status = DeliveryStatus.DONE
            delivery.detail = outcome.detail
            delivery.effect = outcome.effect or None
            delivery.finished_at = now
            delivery.next_attempt_at = None
            counts.done += 1
        elif outcome.kind == "dead":
            delivery.status = DeliveryStatus.DEAD
            delivery.last_error = outcome.reason
            delivery.finished_at = now
            counts.dead += 1
        elif delivery.attempts >= rule.max_attempts:
            delivery.status = DeliveryStatus.DEAD
            delivery.last_error = f"gave up after {delivery.attempts} attempts: {outcome.reason}"
            delivery.finished_at = now
            counts.dead += 1
        else:
            delivery.status = DeliveryStatus.FAILED
            delivery.last_error = outcome.reason
            delivery.next_attempt_at = rule.next_attempt(
                now, delivery.attempts, outcome.retry_after
            )
            counts.retried += 1
    return counts


def _claimed(delivery: Delivery, deletion: Deletion) -> ClaimedDelivery:
    assert delivery.id is not None
    return ClaimedDelivery(
        id=delivery.id,
        attempts=delivery.attempts,
        stream=deletion.stream,
        key=deletion.record_key,
        fields=dict(deletion.fields),
        approved=delivery.approved,
    )


class HeldCountMismatch(Exception):
    """An approval named a different number than the deliveries actually held."""

    def __init__(self, held: int) -> None:
        super().__init__(f"{held} deliveries are held")
        self.held = held


@dataclass(frozen=True)
class JobRecord:
    """A job row with the batch it carries, as the engine drives it."""

    id: int
    pipeline: str
    target: str
    kind: str
    client_id: str
    phase: str
    remote_id: str | None
    state: str
    handle: dict[str, Any] | None
    items: list[ClaimedDelivery]
    created_at: datetime
    next_poll_at: datetime | None
    cancel_requested: bool
    submit_attempts: int


class Store:
    """The durable state behind one SQLAlchemy URL."""

    def __init__(
        self, url: str, *, engine: Engine | None = None, scrub: Scrub | None = None
    ) -> None:
        """`scrub` cleans every error message before it is written (of secrets the
        process knows and the store does not)."""
        self.url = url
        self.engine = engine or make_engine(url)
        if scrub is not None:
            scrub_error_text(self.engine, scrub)
        self._dialect = self.engine.dialect.name
        # SQLite serialises every write transaction already (BEGIN IMMEDIATE).
        self._locks_rows = self._dialect != "sqlite"
        self.lineage = Lineage(self.engine)

    @classmethod
    def open(cls, url: str, *, scrub: Scrub | None = None) -> Store:
        store = cls(url, scrub=scrub)
        try:
            if not at_head(store.engine):
                upgrade(store.engine)
        except DBAPIError as exc:
            store.close()
            raise StoreError(f"state.url: cannot open the store: {exc.orig}") from None
        except StoreError:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    # --- locks ------------------------------------------------------------

    def acquire_lock(
        self,
        pipeline: str,
        owner: str,
        ttl: float,
        now: datetime | None = None,
        replace: str | None = None,
    ) -> Lease | None:
        """Take or renew the pipeline's lease; None while another owner holds it.

        `replace` names a holder known to be dead (the engine checks its pid),
        whose unexpired lease may be taken over. Changing hands moves the epoch
        on; the same owner keeps its epoch. The row lock (FOR UPDATE) waits for
        the old holder's fenced writes in progress, which hold it shared.
        """
        now = now or utcnow()
        expires = now + timedelta(seconds=ttl)
        try:
            return self._acquire(pipeline, owner, now, expires, replace)
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                return None  # its holder is in the middle of a fenced write: held
            raise

    def _acquire(
        self, pipeline: str, owner: str, now: datetime, expires: datetime, replace: str | None
    ) -> Lease | None:
        with self._tx() as s:
            if self._locks_rows:
                s.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT_MS}ms'"))
            lock = s.get(PipelineLock, pipeline, with_for_update=self._locks_rows)
            if lock is None:
                s.add(PipelineLock(pipeline=pipeline, owner=owner, expires_at=expires, epoch=1))
                return Lease(pipeline, owner, 1)
            if lock.owner not in (owner, replace) and lock.expires_at > now:
                return None
            if lock.owner != owner:
                lock.epoch += 1
            lock.owner = owner
            lock.expires_at = expires
            return Lease(pipeline, owner, lock.epoch)

    def renew_lease(self, lease: Lease, ttl: float, now: datetime | None = None) -> bool:
        """Extend a held lease; False when another owner (or epoch) holds it now.

        A plain UPDATE, which PostgreSQL lets run beside this owner's own fenced
        writes (they hold the row KEY SHARE): renewal never waits behind a long
        transaction of its own holder.
        """
        expires = (now or utcnow()) + timedelta(seconds=ttl)
        with self._tx() as s:
            result = s.execute(
                update(PipelineLock)
                .where(
                    col(PipelineLock.pipeline) == lease.pipeline,
                    col(PipelineLock.owner) == lease.owner,
                    col(PipelineLock.epoch) == lease.epoch,
                )
                .values(expires_at=expires)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def release_lock(self, pipeline: str, owner: str) -> None:
        """Let the lease go at once. The row stays, expired, so the epoch never goes
        back: a paused holder of an older epoch can never match it again."""
        with self._tx() as s:
            lock = s.get(PipelineLock, pipeline, with_for_update=self._dialect != "sqlite")
            if lock is not None and lock.owner == owner:
                lock.expires_at = utcnow()

    def lock_holder(self, pipeline: str, now: datetime | None = None) -> str | None:
        now = now or utcnow()
        with Session(self.engine) as s:
            lock = s.get(PipelineLock, pipeline)
            return lock.owner if lock is not None and lock.expires_at > now else None

    # --- runs -------------------------------------------------------------

    def start_run(self, pipeline: str, kind: str = "run") -> int:
        with self._tx() as s:
            run = Run(pipeline=pipeline, kind=kind, started_at=utcnow())
            s.add(run)
            s.flush()
            assert run.id is not None
            return run.id

    def finish_run(
        self,
        run_id: int,
        outcome: RunOutcome,
        *,
        pulled: int = 0,
        duplicates: int = 0,
        delivered: int = 0,
        retried: int = 0,
        dead: int = 0,
        error: str = "",
    ) -> None:
        with self._tx() as s:
            run = s.get(Run, run_id)
            if run is None:
                return
            run.finished_at = utcnow()
            run.outcome = outcome
            run.pulled, run.duplicates = pulled, duplicates
            run.delivered, run.retried, run.dead = delivered, retried, dead
            run.error = error

    def close_abandoned_runs(self, pipeline: str) -> int:
        """Runs left `running` by a crashed process; called while holding the lock."""
        with self._tx() as s:
            result = s.execute(
                update(Run)
                .where(and_(col(Run.pipeline) == pipeline, col(Run.outcome) == RunOutcome.RUNNING))
                .values(outcome=RunOutcome.INTERRUPTED, finished_at=utcnow())
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # --- cursors and journal ----------------------------------------------

    def cursor(self, pipeline: str, stream: str) -> CursorState:
        with Session(self.engine) as s:
            row = s.get(Cursor, (pipeline, stream))
            if row is None:
                return CursorState(None, None, None)
            return CursorState(row.value, row.in_flight, row.in_flight_since)

    def cursor_last_success(self, pipeline: str, stream: str) -> datetime | None:
        with Session(self.engine) as s:
            row = s.get(Cursor, (pipeline, stream))
            return None if row is None else row.last_success_at

    def known_keys(
        self,
        pipeline: str,
        stream: str,
        records: Sequence[NewRecord],
        window: ReadWindow = ReadWindow(),
    ) -> set[str]:
        """The keys of these records a journal of a read over `window` would take for
        duplicates (what `plan` leaves out of "new")."""
        found: set[str] = set()
        with Session(self.engine) as s:
            for start in range(0, len(records), CHUNK):
                found |= self._journaled(
                    s, pipeline, stream, records[start : start + CHUNK], window
                )
        return found

    @staticmethod
    def _journaled(
        s: Session,
        pipeline: str,
        stream: str,
        records: Sequence[NewRecord],
        window: ReadWindow,
    ) -> set[str]:
        """Keys of these records already journaled from a read overlapping `window`.

        A record continuing an upstream delivery (a chain) is the same deletion
        exactly when that delivery is continued already, whatever the window.
        """
        linked = {r.origin_delivery_id: r.key for r in records if r.origin_delivery_id}
        keys = [r.key for r in records if not r.origin_delivery_id]
        found: set[str] = set()
        if linked:
            rows = s.exec(
                select(col(Deletion.origin_delivery_id)).where(
                    col(Deletion.pipeline) == pipeline,
                    col(Deletion.stream) == stream,
                    col(Deletion.origin_delivery_id).in_(list(linked)),
                )
            ).all()
            found.update(linked[i] for i in rows if i is not None)
        if keys:
            found.update(
                s.exec(
                    select(col(Deletion.record_key)).where(
                        col(Deletion.pipeline) == pipeline,
                        col(Deletion.stream) == stream,
                        col(Deletion.record_key).in_(keys),
                        *_overlapping(window),
                    )
                ).all()
            )
        return found

    def register_stream(self, pipeline: str, stream: str) -> bool:
        """Add a stream for the next runs to read (a task an operator asks to follow);
        False when the pipeline already knows it."""
        with self._tx() as s:
            if s.get(Cursor, (pipeline, stream)) is not None:
                return False
            s.add(Cursor(pipeline=pipeline, stream=stream))
            return True

    def mark_in_flight(
        self,
        pipeline: str,
        stream: str,
        params: Mapping[str, Any],
        started_at: datetime,
        *,
        lease: Lease | None = None,
    ) -> None:
        """Durably note a call before sending it. An earlier marker is kept:
        the window to recover starts at the last journaled call, not this one."""
        with self._tx() as s:
            check_lease(s, lease, lock_row=self._locks_rows)
            row = s.get(Cursor, (pipeline, stream))
            if row is None:
                row = Cursor(pipeline=pipeline, stream=stream)
                s.add(row)
            marker = {"params": dict(params), "started_at": started_at.isoformat()}
            if row.in_flight is None:
                row.in_flight_since = started_at
            row.in_flight = marker

    def journal(
        self,
        pipeline: str,
        stream: str,
        records: Sequence[NewRecord],
        *,
        cursor: dict[str, Any] | None,
        targets: Sequence[str],
        run_id: int | None,
        recovered: Mapping[str, Any] | None = None,
        advance_cursor: bool = True,
        own_effects: Sequence[tuple[str, str]] = (),
        problem: str = "",
        window: ReadWindow = ReadWindow(),
        lease: Lease | None = None,
    ) -> JournalResult:
        """Journal a call's answer: deletions, their deliveries, the next cursor and
        the cleared in-flight marker, in one transaction.

        A record is a duplicate when its key was journaled from a read whose window
        overlaps `window` (a recovery re-read, a timestamp overlap, a backfill); the
        same key from a read that cannot overlap is a new deletion (the record was
        restored and deleted again). Within one answer, a key is one deletion.

        A record whose origin names what one of this engine's deliveries deleted is
        an echo: journaled with that link, given no deliveries, never propagated.
        Except where the source follows that very target's jobs (`own_effects`
        lists those (pipeline, target) pairs): there the match is the chain link.
        A rejected record gets a dead delivery per target, with the reason.
        """
        now = utcnow()
        with self._tx() as s:
            check_lease(s, lease, lock_row=self._locks_rows)
            causes = self._caused_by_us(s, records, window)
            prepared: list[NewRecord] = []
            echo_of: dict[str, int] = {}
            rejected: dict[str, str] = {}
            for record in records:
                cause = causes.get(record.origin) if record.origin_delivery_id is None else None
                if record.rejected:
                    rejected[record.key] = record.rejected
                elif cause is not None and (cause.pipeline, cause.target) in own_effects:
                    record = replace(record, origin_delivery_id=cause.delivery_id)
                elif cause is not None:
                    echo_of[record.key] = cause.delivery_id
                prepared.append(record)
            inserted = self._insert_deletions(
                s, pipeline, stream, prepared, run_id, now, echo_of, window
            )
            new_ids = [i for i, key in inserted if key not in echo_of and key not in rejected]
            dead = [(i, rejected[key]) for i, key in inserted if key in rejected]
            if targets:
                s.add_all(
                    Delivery(
                        deletion_id=deletion_id,
                        pipeline=pipeline,
                        target=target,
                        created_at=now,
                        updated_at=now,
                    )
                    for deletion_id in new_ids
                    for target in targets
                )
                s.add_all(
                    Delivery(
                        deletion_id=deletion_id,
                        pipeline=pipeline,
                        target=target,
                        status=DeliveryStatus.DEAD,
                        last_error=f"{MALFORMED}: {reason}; never sent: no retry can fix it, "
                        "correct or remove it in the source",
                        created_at=now,
                        updated_at=now,
                        finished_at=now,
                    )
                    for deletion_id, reason in dead
                    for target in targets
                )
            if advance_cursor:
                row = s.get(Cursor, (pipeline, stream))
                if row is None:
                    row = Cursor(pipeline=pipeline, stream=stream)
                    s.add(row)
                row.value = cursor
                row.in_flight = None
                row.in_flight_since = None
                row.updated_at = now
                row.last_success_at = now
                row.consecutive_errors = 0
                row.last_error = problem
                if recovered is not None:
                    row.recoveries += 1
                    row.last_recovery_at = now
                    row.last_recovery = dict(recovered)
            return JournalResult(
                new=len(new_ids),
                duplicates=len(records) - len(inserted),
                echoes=len(echo_of.keys() & {key for _, key in inserted}),
                rejected=len(dead),
            )

    def _caused_by_us(
        self, s: Session, records: Sequence[NewRecord], window: ReadWindow
    ) -> dict[str, Cause]:
        """origin -> the done delivery of this engine whose effect it is.

        Only a delivery that finished after the read's window began can be what the
        read reports: a record this engine deleted long ago, restored and then
        deleted by someone else is not an echo.
        """
        origins = sorted({r.origin for r in records if r.origin})
        found: dict[str, Cause] = {}
        since = [] if window.start is None else [col(Delivery.finished_at) >= window.start]
        for start in range(0, len(origins), CHUNK):
            rows = s.exec(
                select(
                    col(Delivery.effect),
                    col(Delivery.id),
                    col(Delivery.pipeline),
                    col(Delivery.target),
                )
                .where(
                    col(Delivery.effect).in_(origins[start : start + CHUNK]),
                    col(Delivery.status) == DeliveryStatus.DONE,
                    *since,
                )
                .order_by(col(Delivery.id))
            ).all()
            for effect, delivery_id, pipe, target in rows:
                if effect is not None and delivery_id is not None:
                    found.setdefault(effect, Cause(delivery_id, pipe, target))
        return found

    def _insert_deletions(
        self,
        s: Session,
        pipeline: str,
        stream: str,
        records: Sequence[NewRecord],
        run_id: int | None,
        now: datetime,
        echo_of: Mapping[str, int],
        window: ReadWindow,
    ) -> list[tuple[int, str]]:
        """(id, key) of each deletion that was new; duplicates are skipped.

        Look-up then insert, with no unique constraint to fall back on: only the
        holder of the pipeline's lease journals for it, so no other writer can
        slip a row in between (see `Deletion`).
        """
        unique: dict[str, NewRecord] = {}
        for record in records:
            unique.setdefault(record.key, record)
        new_ids: list[tuple[int, str]] = []
        chunks = list(unique.values())
        for start in range(0, len(chunks), CHUNK):
            chunk = chunks[start : start + CHUNK]
            seen = self._journaled(s, pipeline, stream, chunk, window)
            rows = [
                {
                    "pipeline": pipeline,
                    "stream": stream,
                    "record_key": r.key,
                    "fields": dict(r.fields),
                    "seen_at": now,
                    "run_id": run_id,
                    "window_start": window.start,
                    "window_end": window.end,
                    "rejected": r.rejected or None,
                    "origin": r.origin or None,
                    "origin_delivery_id": r.origin_delivery_id,
                    "echo_of_delivery_id": echo_of.get(r.key),
                }
                for r in chunk
                if r.key not in seen
            ]
            if rows:
                statement = (
                    insert(Deletion)
                    .values(rows)
                    .returning(col(Deletion.id), col(Deletion.record_key))
                )
                new_ids.extend((int(row[0]), str(row[1])) for row in s.execute(statement))
        return new_ids

    def record_stream_error(self, pipeline: str, stream: str, error: str) -> int:
        """Count consecutive failures of a stream; the cursor itself does not move."""
        with self._tx() as s:
            row = s.get(Cursor, (pipeline, stream))
            if row is None:
                row = Cursor(pipeline=pipeline, stream=stream)
                s.add(row)
            row.consecutive_errors += 1
            row.last_error = error
            return row.consecutive_errors

    # --- deliveries -------------------------------------------------------

    def release_orphans(self, pipeline: str, target: str, *, lease: Lease | None = None) -> int:
        """Deliveries left in flight by a crashed run go back to pending.

        Called under the pipeline lock, so no live run owns them. Re-sending is
        safe: deleting what is already gone counts as done.
        """
        with self._tx() as s:
            check_lease(s, lease, lock_row=self._locks_rows)
            result = s.execute(
                update(Delivery)
                .where(
                    and_(
                        col(Delivery.pipeline) == pipeline,
                        col(Delivery.target) == target,
                        col(Delivery.status) == DeliveryStatus.IN_FLIGHT,
                        col(Delivery.job_id).is_(None),
                    )
                )
                .values(status=DeliveryStatus.PENDING, claim=None, updated_at=utcnow())
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def claim(
        self,
        pipeline: str,
        target: str,
        limit: int,
        claim: str,
        now: datetime | None = None,
        fresh_before: datetime | None = None,
        screen: Screen | None = None,
        *,
        lease: Lease | None = None,
    ) -> list[ClaimedDelivery]:
        """Move up to `limit` due deliveries to in flight, oldest first.

        `fresh_before` keeps a run from retrying, in a loop, what failed
        during that same run: failed deliveries updated since then wait.
        `screen` applies the guards to each delivery in this same transaction.
        Under a lease, nothing is claimed (so nothing sent) once it is lost.
        """
        with self._tx() as s:
            check_lease(s, lease, lock_row=self._locks_rows)
            return self._claim(
                s, pipeline, target, limit, claim, now or utcnow(), fresh_before, screen, lease
            )

    def _claim(
        self,
        s: Session,
        pipeline: str,
        target: str,
        limit: int,
        claim: str,
        now: datetime,
        fresh_before: datetime | None,
        screen: Screen | None = None,
        lease: Lease | None = None,
    ) -> list[ClaimedDelivery]:
        """What a screen takes out (dead or held) is replaced by the next due
        deliveries, so a batch is short only when nothing more may be sent."""
        due_failed = and_(
            col(Delivery.status) == DeliveryStatus.FAILED, col(Delivery.next_attempt_at) <= now
        )
        if fresh_before is not None:
            due_failed = and_(due_failed, col(Delivery.updated_at) < fresh_before)
        query = (
            select(Delivery, Deletion)
            .join(Deletion, col(Deletion.id) == col(Delivery.deletion_id))
            .where(
                col(Delivery.pipeline) == pipeline,
                col(Delivery.target) == target,
                or_(col(Delivery.status) == DeliveryStatus.PENDING, due_failed),
            )
            .order_by(col(Delivery.id))
        )
        if self._dialect == "postgresql":
            query = query.with_for_update(skip_locked=True, of=Delivery)
        claimed: list[ClaimedDelivery] = []
        while len(claimed) < limit:
            rows = list(s.exec(query.limit(limit - len(claimed))).all())
            if not rows:
                break
            if screen is not None:
                rows = self._screen(s, pipeline, target, now, screen, rows)
            for delivery, deletion in rows:
                delivery.status = DeliveryStatus.IN_FLIGHT
                delivery.claim = claim
                delivery.claim_epoch = None if lease is None else lease.epoch
                delivery.updated_at = now
                claimed.append(_claimed(delivery, deletion))
        return claimed

    def _screen(
        self,
        s: Session,
        pipeline: str,
        target: str,
        now: datetime,
        screen: Screen,
        rows: list[tuple[Delivery, Deletion]],
    ) -> list[tuple[Delivery, Deletion]]:
        """The rows that may be sent: the protected ones become dead; over a limit,
        every due delivery not approved is held and only approved rows remain."""
        rows = [(d, e) for d, e in rows if d.id not in self._protect(s, screen, rows, now)]
        counts = self._guard_counts(s, pipeline, target, now)
        reason = screen.hold(counts) if counts.due else None
        if reason is None:
            return rows
        # Held for numbers: what the legal hold protects is never due, so it is taken
        # out of the whole due set before the numbers are weighed again.
        due = s.exec(
            select(Delivery, Deletion)
            .join(Deletion, col(Deletion.id) == col(Delivery.deletion_id))
            .where(self._due(pipeline, target, now), col(Delivery.approved).is_(False))
        ).all()
        if self._protect(s, screen, list(due), now):
            counts = self._guard_counts(s, pipeline, target, now)
            reason = screen.hold(counts) if counts.due else None
        if reason is None:
            return rows
        held = s.execute(
            update(Delivery)
            .where(self._due(pipeline, target, now), col(Delivery.approved).is_(False))
            .values(status=DeliveryStatus.HELD, last_error=reason, updated_at=now)
            .execution_options(synchronize_session="fetch")
        )
        screen.on_hold(int(held.rowcount or 0), reason)  # type: ignore[attr-defined]
        return [(d, e) for d, e in rows if d.approved]

    def _protect(
        self,
        s: Session,
        screen: Screen,
        rows: Sequence[tuple[Delivery, Deletion]],
        now: datetime,
    ) -> set[int]:
        """Make dead, with the screen's reason, each row it protects; their ids."""
        dead = [
            OutcomeRecord(d.id or 0, "dead", reason=reason)
            for d, e in rows
            if (reason := screen.protect(_claimed(d, e))) is not None
        ]
        _apply_outcomes(s, dead, RetryRule(), now)
        return {o.delivery_id for o in dead}

    def _guard_counts(self, s: Session, pipeline: str, target: str, now: datetime) -> GuardCounts:
        def count(*where: Any) -> int:
            return int(s.exec(select(func.count()).select_from(Delivery).where(*where)).one())

        mine = (col(Delivery.pipeline) == pipeline, col(Delivery.target) == target)
        return GuardCounts(
            due=count(self._due(pipeline, target, now), col(Delivery.approved).is_(False)),
            done_last_hour=count(
                *mine,
                col(Delivery.status) == DeliveryStatus.DONE,
                col(Delivery.finished_at) >= now - timedelta(hours=1),
            ),
            in_flight=count(*mine, col(Delivery.status) == DeliveryStatus.IN_FLIGHT),
        )

    def record_outcomes(
        self,
        outcomes: Iterable[OutcomeRecord],
        rule: RetryRule,
        now: datetime | None = None,
        *,
        lease: Lease | None = None,
    ) -> OutcomeCounts:
        """Under a lease that was lost, nothing is written (LeaseLost): the new owner
        releases those deliveries and sends them again."""
        with self._tx() as s:
            check_lease(s, lease, lock_row=self._locks_rows)
            return _apply_outcomes(s, outcomes, rule, now or utcnow())

    def release(
        self, delivery_ids: Sequence[int], reason: str = "", *, lease: Lease | None = None
    ) -> None:
        """Return claimed deliveries to pending without counting an attempt
        (the run stopped before sending them, or the target's credentials failed)."""
        if not delivery_ids:
            return
        with self._tx() as s:
            check_lease(s, lease, lock_row=self._locks_rows)
            s.execute(
                update(Delivery)
                .where(
                    and_(
                        col(Delivery.id).in_(list(delivery_ids)),
                        col(Delivery.status) == DeliveryStatus.IN_FLIGHT,
                    )
                )
                .values(
                    status=DeliveryStatus.PENDING,
                    claim=None,
                    updated_at=utcnow(),
                    last_error=reason,
                )
            )

    # --- reading ----------------------------------------------------------

    def delivery_counts(self, pipeline: str | None = None) -> list[TargetCounts]:
        with Session(self.engine) as s:
            query = select(
                col(Delivery.pipeline), col(Delivery.target), col(Delivery.status), func.count()
            ).group_by(col(Delivery.pipeline), col(Delivery.target), col(Delivery.status))
            if pipeline is not None:
                query = query.where(col(Delivery.pipeline) == pipeline)
            grouped: dict[tuple[str, str], dict[str, int]] = {}
            for pipe, target, status, count in s.exec(query).all():
                grouped.setdefault((pipe, target), {})[status] = int(count)
            return [TargetCounts(p, t, c) for (p, t), c in sorted(grouped.items())]

    def cursors(self, pipeline: str | None = None) -> list[Cursor]:
        with Session(self.engine) as s:
            query = select(Cursor).order_by(col(Cursor.pipeline), col(Cursor.stream))
            if pipeline is not None:
                query = query.where(col(Cursor.pipeline) == pipeline)
            return list(s.exec(query).all())

    def last_run(self, pipeline: str, kind: str | None = None) -> Run | None:
        with Session(self.engine) as s:
            query = select(Run).where(col(Run.pipeline) == pipeline)
            if kind is not None:
                query = query.where(col(Run.kind) == kind)
            return s.exec(query.order_by(col(Run.id).desc()).limit(1)).first()

    def last_good_run_at(self, pipeline: str) -> datetime | None:
        """When the pipeline last finished a run that was ok (for /healthz)."""
        with Session(self.engine) as s:
            run = s.exec(
                select(Run)
                .where(col(Run.pipeline) == pipeline, col(Run.outcome) == RunOutcome.OK)
                .order_by(col(Run.id).desc())
                .limit(1)
            ).first()
            return None if run is None else run.finished_at

    def check_writable(self) -> None:
        """Commit a real (net-zero) write, so a read-only or full store is noticed."""
        with self._tx() as s:
            probe = PipelineLock(pipeline="__healthz__", owner="healthz", expires_at=utcnow())
            s.merge(probe)
            s.flush()
            s.execute(delete(PipelineLock).where(col(PipelineLock.pipeline) == "__healthz__"))

    def deliveries(
        self,
        *,
        pipeline: str | None = None,
        target: str | None = None,
        status: str | None = None,
        limit: int = 1000,
    ) -> list[tuple[Delivery, Deletion]]:
        with Session(self.engine) as s:
            query = select(Delivery, Deletion).join(
                Deletion, col(Deletion.id) == col(Delivery.deletion_id)
            )
            if pipeline is not None:
                query = query.where(col(Delivery.pipeline) == pipeline)
            if target is not None:
                query = query.where(col(Delivery.target) == target)
            if status is not None:
                query = query.where(col(Delivery.status) == status)
            rows = s.exec(query.order_by(col(Delivery.id)).limit(limit)).all()
            return [(d, e) for d, e in rows]

    def deletion_count(self, pipeline: str | None = None) -> int:
        """Deletions journaled, malformed records left out."""
        with Session(self.engine) as s:
            query = (
                select(func.count()).select_from(Deletion).where(col(Deletion.rejected).is_(None))
            )
            if pipeline is not None:
                query = query.where(col(Deletion.pipeline) == pipeline)
            return int(s.exec(query).one())

    def malformed_counts(self, pipeline: str) -> dict[str, int]:
        """Per stream: records the source could not use, journaled as dead letters."""
        with Session(self.engine) as s:
            rows = s.exec(
                select(col(Deletion.stream), func.count())
                .where(col(Deletion.pipeline) == pipeline, col(Deletion.rejected).is_not(None))
                .group_by(col(Deletion.stream))
            ).all()
            return {stream: int(count) for stream, count in rows}

    # --- asynchronous jobs --------------------------------------------------

    def claim_into_job(
        self,
        pipeline: str,
        target: str,
        kind: str,
        limit: int,
        now: datetime | None = None,
        fresh_before: datetime | None = None,
        screen: Screen | None = None,
        *,
        lease: Lease | None = None,
    ) -> JobRecord | None:
        """Claim due deliveries and fix them as one job's batch, in one transaction
        (with `screen`, the guards' verdicts too).

        The client-chosen id carries a random part, so a job of a reset or
        another store can never be mistaken for this one.
        """
        now = now or utcnow()
        epoch = None if lease is None else lease.epoch
        with self._tx() as s:
            check_lease(s, lease, lock_row=self._locks_rows)
            claimed = self._claim(
                s, pipeline, target, limit, "job", now, fresh_before, screen, lease
            )
            if not claimed:
                return None
            job = Job(
                pipeline=pipeline,
                target=target,
                kind=kind,
                client_id=f"syncengine-{uuid.uuid4().hex}",
                items=len(claimed),
                claim_epoch=epoch,
                created_at=now,
                updated_at=now,
            )
            s.add(job)
            s.flush()
            assert job.id is not None
            s.execute(
                update(Delivery)
                .where(col(Delivery.id).in_([c.id for c in claimed]))
                .values(job_id=job.id, claim=f"job-{job.id}")
            )
            return self._job_record(s, job)

    def _job_record(self, s: Session, job: Job) -> JobRecord:
        assert job.id is not None
        rows = s.exec(
            select(Delivery, Deletion)
            .join(Deletion, col(Deletion.id) == col(Delivery.deletion_id))
            .where(col(Delivery.job_id) == job.id)
            .order_by(col(Delivery.id))
        ).all()
        items = [_claimed(d, e) for d, e in rows if d.status == DeliveryStatus.IN_FLIGHT]
        return JobRecord(
            id=job.id,
            pipeline=job.pipeline,
            target=job.target,
            kind=job.kind,
            client_id=job.client_id,
            phase=job.phase,
            remote_id=job.remote_id,
            state=job.state,
            handle=job.handle,
            items=items,
            created_at=job.created_at,
            next_poll_at=job.next_poll_at,
            cancel_requested=job.cancel_requested,
            submit_attempts=job.submit_attempts,
        )

    def open_jobs(self, pipeline: str, target: str) -> list[JobRecord]:
        with self._tx() as s:
            jobs = s.exec(
                select(Job)
                .where(
                    col(Job.pipeline) == pipeline,
                    col(Job.target) == target,
                    col(Job.phase).in_(list(OPEN_PHASES)),
                )
                .order_by(col(Job.id))
            ).all()
            return [self._job_record(s, job) for job in jobs]

    def job(self, job_id: int) -> JobRecord | None:
        with self._tx() as s:
            job = s.get(Job, job_id)
            return None if job is None else self._job_record(s, job)

    def _update_job(self, job_id: int, lease: Lease | None = None, **values: Any) -> None:
        with self._tx() as s:
            check_lease(s, lease, lock_row=self._locks_rows)
            s.execute(
                update(Job).where(col(Job.id) == job_id).values(updated_at=utcnow(), **values)
            )

    def mark_submitting(self, job_id: int, *, lease: Lease | None = None) -> None:
        """Before the request: from now on a crash means "look before re-sending".
        Under a lost lease it raises LeaseLost, so the request is never sent."""
        with self._tx() as s:
            check_lease(s, lease, lock_row=self._locks_rows)
            job = s.get(Job, job_id)
            assert job is not None
            job.phase = JobPhase.SUBMITTING
            job.submit_attempts += 1
            job.updated_at = utcnow()

    def record_submitted(
        self,
        job_id: int,
        remote_id: str,
        state: str,
        handle: dict[str, Any],
        next_poll_at: datetime,
        *,
        lease: Lease | None = None,
    ) -> None:
        now = utcnow()
        self._update_job(
            job_id,
            lease,
            phase=JobPhase.OPEN,
            remote_id=remote_id,
            state=state,
            handle=handle,
            next_poll_at=next_poll_at,
            submitted_at=now,
            error="",
        )

    def record_not_submitted(
        self, job_id: int, error: str, retry_at: datetime, *, lease: Lease | None = None
    ) -> None:
        """The request was certainly not applied: back to created, try again later."""
        self._update_job(job_id, lease, phase=JobPhase.CREATED, error=error, next_poll_at=retry_at)

    def record_poll(
        self, job_id: int, state: str, next_poll_at: datetime, detail: dict[str, Any] | None = None
    ) -> None:
        with self._tx() as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.state = state
            job.polls += 1
            job.next_poll_at = next_poll_at
            job.updated_at = utcnow()
            if detail is not None:
                job.detail = detail

    def finish_job(
        self,
        job_id: int,
        state: str,
        outcomes: Sequence[OutcomeRecord],
        rule: RetryRule,
        *,
        detail: dict[str, Any] | None = None,
        error: str = "",
        phase: JobPhase = JobPhase.FINISHED,
        lease: Lease | None = None,
    ) -> OutcomeCounts:
        """Close the job and record its items' outcomes together (nothing, under a lost
        lease: the new owner polls the job again)."""
        now = utcnow()
        with self._tx() as s:
            check_lease(s, lease, lock_row=self._locks_rows)
            job = s.get(Job, job_id)
            assert job is not None
            job.phase = phase
            job.state = state
            job.polls += 1
            job.finished_at = now
            job.updated_at = now
            job.next_poll_at = None
            job.error = error
            if detail is not None:
                job.detail = detail
            return _apply_outcomes(s, outcomes, rule, now)

    def release_job(
        self,
        job_id: int,
        *,
        to_dead: bool,
        reason: str,
        phase: JobPhase,
        lease: Lease | None = None,
    ) -> int:
        """A stuck or cancelled job lets go of its items: back to pending, or dead."""
        now = utcnow()
        with self._tx() as s:
            check_lease(s, lease, lock_row=self._locks_rows)
            job = s.get(Job, job_id)
            assert job is not None
            job.phase = phase
            job.error = reason
            job.finished_at = now
            job.updated_at = now
            job.next_poll_at = None
            values: dict[str, Any] = {"claim": None, "updated_at": now, "last_error": reason}
            if to_dead:
                values.update(status=DeliveryStatus.DEAD, finished_at=now)
            else:
                values.update(status=DeliveryStatus.PENDING, job_id=None)
            result = s.execute(
                update(Delivery)
                .where(
                    and_(
                        col(Delivery.job_id) == job_id,
                        col(Delivery.status) == DeliveryStatus.IN_FLIGHT,
                    )
                )
                .values(**values)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def request_cancel(self, job_id: int) -> None:
        self._update_job(job_id, cancel_requested=True)

    def jobs(
        self, *, pipeline: str | None = None, open_only: bool = False, limit: int = 200
    ) -> list[Job]:
        with Session(self.engine) as s:
            query = select(Job)
            if pipeline is not None:
                query = query.where(col(Job.pipeline) == pipeline)
            if open_only:
                query = query.where(col(Job.phase).in_(list(OPEN_PHASES)))
            return list(s.exec(query.order_by(col(Job.id).desc()).limit(limit)).all())

    # --- guards: held deliveries and operator decisions ----------------------

    def _due(self, pipeline: str, target: str, now: datetime) -> Any:
        return and_(
            col(Delivery.pipeline) == pipeline,
            col(Delivery.target) == target,
            or_(
                col(Delivery.status) == DeliveryStatus.PENDING,
                and_(
                    col(Delivery.status) == DeliveryStatus.FAILED,
                    col(Delivery.next_attempt_at) <= now,
                ),
            ),
        )

    def due_deliveries(
        self, pipeline: str, target: str, now: datetime | None = None
    ) -> list[ClaimedDelivery]:
        """What the next claims would take (for a plan)."""
        with Session(self.engine) as s:
            rows = s.exec(
                select(Delivery, Deletion)
                .join(Deletion, col(Deletion.id) == col(Delivery.deletion_id))
                .where(self._due(pipeline, target, now or utcnow()))
                .order_by(col(Delivery.id))
            ).all()
            return [_claimed(d, e) for d, e in rows]

    def approve_held(self, pipeline: str, target: str, count: int) -> int:
        """Release exactly `count` held deliveries; refused (0) unless that is how many are held."""
        with self._tx() as s:
            ids = list(
                s.exec(
                    select(col(Delivery.id)).where(
                        col(Delivery.pipeline) == pipeline,
                        col(Delivery.target) == target,
                        col(Delivery.status) == DeliveryStatus.HELD,
                    )
                ).all()
            )
            if len(ids) != count:
                raise HeldCountMismatch(len(ids))
            s.execute(
                update(Delivery)
                .where(col(Delivery.id).in_(ids))
                .values(
                    status=DeliveryStatus.PENDING,
                    approved=True,
                    last_error="",
                    updated_at=utcnow(),
                )
            )
            return len(ids)

    def reject_held(self, pipeline: str, target: str, reason: str) -> int:
        now = utcnow()
        with self._tx() as s:
            result = s.execute(
                update(Delivery)
                .where(
                    col(Delivery.pipeline) == pipeline,
                    col(Delivery.target) == target,
                    col(Delivery.status) == DeliveryStatus.HELD,
                )
                .values(
                    status=DeliveryStatus.DEAD,
                    last_error=f"rejected by an operator: {reason}",
                    finished_at=now,
                    updated_at=now,
                )
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # --- dead letters ------------------------------------------------------

    def dead_letters(
        self,
        *,
        pipeline: str | None = None,
        target: str | None = None,
        error: str | None = None,
        limit: int = 10_000,
    ) -> list[tuple[Delivery, Deletion]]:
        rows = self.deliveries(
            pipeline=pipeline, target=target, status=DeliveryStatus.DEAD, limit=limit
        )
        if error:
            needle = error.lower()
            rows = [(d, e) for d, e in rows if needle in d.last_error.lower()]
        return rows

    def retry_dead(self, delivery_ids: Sequence[int]) -> int:
        """Dead -> pending with a fresh attempt count; guards and legal hold apply again.

        A malformed record's dead letters are never retried: no target could act on
        a record the source could not name (see `malformed_of`).
        """
        return self._from_dead(
            sorted(set(delivery_ids) - self.malformed_of(delivery_ids)),
            status=DeliveryStatus.PENDING,
            attempts=0,
            finished_at=None,
        )

    def malformed_of(self, delivery_ids: Sequence[int]) -> set[int]:
        """Which of these deliveries are dead letters of malformed records."""
        found: set[int] = set()
        ids = list(delivery_ids)
        with Session(self.engine) as s:
            for start in range(0, len(ids), CHUNK):
                found.update(
                    i
                    for i in s.exec(
                        select(col(Delivery.id))
                        .join(Deletion, col(Deletion.id) == col(Delivery.deletion_id))
                        .where(
                            col(Delivery.id).in_(ids[start : start + CHUNK]),
                            col(Deletion.rejected).is_not(None),
                        )
                    ).all()
                    if i is not None
                )
        return found

    def drop_dead(self, delivery_ids: Sequence[int]) -> int:
        return self._from_dead(delivery_ids, status=DeliveryStatus.DROPPED)

    def _from_dead(self, delivery_ids: Sequence[int], **values: Any) -> int:
        if not delivery_ids:
            return 0
        with self._tx() as s:
            result = s.execute(
                update(Delivery)
                .where(
                    col(Delivery.id).in_(list(delivery_ids)),
                    col(Delivery.status) == DeliveryStatus.DEAD,
                )
                .values(updated_at=utcnow(), **values)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]
