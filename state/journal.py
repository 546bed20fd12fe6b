"""The journal: what each source read reported, its cursors, and the deliveries it owes.

A source call is marked in flight before it is sent; its records, their deliveries
and the next cursor are committed together. The records go in as a few statements
per chunk (a look-up of the keys already journaled, one executemany insert with
RETURNING, an INSERT ... SELECT of their deliveries), whatever the chunk's size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import (
    ColumnElement,
    Insert,
    Select,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import NullType, TypeDecorator, TypeEngine
from sqlmodel import Session, col

from state.base import DELETION, DELIVERY, StoreBase
from state.lease import Lease, check_lease
from state.models import Cursor, Deletion, DeliveryStatus, utcnow
from state.records import (
    CHUNK,
    MALFORMED,
    UNBOUNDED,
    WITHDRAWN,
    Cause,
    CursorState,
    JournalResult,
    NewRecord,
    ReadWindow,
    Withdrawal,
)


def _journaled(
    conn: Connection | Session,
    pipeline: str,
    stream: str,
    records: Sequence[NewRecord],
    window: ReadWindow,
    withdrawn: set[str] | None = None,
) -> set[str]:
    """Keys of these records already journaled from a read overlapping `window`; those
    journaled from a read later withdrawn as malformed go into `withdrawn` too (still
    duplicates: a re-read of that answer sends nothing).

    A record continuing an upstream delivery (a chain) is the same deletion
    exactly when that delivery is continued already, whatever the window.
    """
    linked = {r.origin_delivery_id: r.key for r in records if r.origin_delivery_id}
    keys = [r.key for r in records if not r.origin_delivery_id]
    found: set[str] = set()
    mine = (DELETION.c.pipeline == pipeline, DELETION.c.stream == stream)
    if linked:
        rows = conn.execute(
            select(DELETION.c.origin_delivery_id).where(
                *mine, DELETION.c.origin_delivery_id.in_(list(linked))
            )
        ).scalars()
        found.update(linked[i] for i in rows if i is not None)
    if keys:
        query = _keys_seen(window.start is not None, window.end is not None)
        values = {
            "b_pipeline": pipeline,
            "b_stream": stream,
            "b_keys": keys,
            "b_start": window.start,
            "b_end": window.end,
        }
        for key, rejected in conn.execute(query, values):
            found.add(key)
            if withdrawn is not None and rejected and rejected.startswith(WITHDRAWN):
                withdrawn.add(key)
    return found


@functools.cache
def _keys_seen(bounded_start: bool, bounded_end: bool) -> Select[Any]:
    """Which of `b_keys` were journaled from a read overlapping [b_start, b_end), with
    why each was rejected, if it was: one statement per kind of window, built once
    (unbounded ends always overlap)."""
    where = [
        DELETION.c.pipeline == bindparam("b_pipeline"),
        DELETION.c.stream == bindparam("b_stream"),
        DELETION.c.record_key.in_(bindparam("b_keys", expanding=True)),
    ]
    if bounded_end:
        start = DELETION.c.window_start
        where.append(or_(start.is_(None), start < bindparam("b_end")))
    if bounded_start:
        end = DELETION.c.window_end
        where.append(or_(end.is_(None), end > bindparam("b_start")))
    return select(DELETION.c.record_key, DELETION.c.rejected).where(*where)


def _caused_by_us(
    conn: Connection, records: Sequence[NewRecord], window: ReadWindow
) -> dict[str, Cause]:
    """origin -> the done delivery of this engine whose effect it is.

    Only a delivery that finished after the read's window began can be what the
    read reports: a record this engine deleted long ago, restored and then
    deleted by someone else is not an echo.
    """
    origins = sorted({r.origin for r in records if r.origin})
    found: dict[str, Cause] = {}
    since = [] if window.start is None else [DELIVERY.c.finished_at >= window.start]
    for start in range(0, len(origins), CHUNK):
        rows = conn.execute(
            select(DELIVERY.c.effect, DELIVERY.c.id, DELIVERY.c.pipeline, DELIVERY.c.target)
            .where(
                DELIVERY.c.effect.in_(origins[start : start + CHUNK]),
                DELIVERY.c.status == DeliveryStatus.DONE,
                *since,
            )
            .order_by(DELIVERY.c.id)
        )
        for effect, delivery_id, pipe, target in rows:
            if effect is not None:
                found.setdefault(effect, Cause(delivery_id, pipe, target))
    return found


class _Bound(TypeDecorator[Any]):
    """A value already through its column type's bind processor for this dialect.

    The statement renders as the column's own would (PostgreSQL's casts included),
    and the driver gets the value as it is: what a chunk's rows share goes through
    the column's own processor once, instead of once per row.
    """

    impl: TypeEngine[Any] | type[TypeEngine[Any]] = NullType
    cache_ok = True

    def __init__(self, column_type: TypeEngine[Any]) -> None:
        # Named by the constructor's argument, so that it is part of the cache key.
        self.column_type = column_type
        self.impl = (
            column_type.impl_instance if isinstance(column_type, TypeDecorator) else column_type
        )

    def bind_processor(self, dialect: Dialect) -> None:
        # Against TypeDecorator's advice, and on purpose: the impl's own processing is
        # exactly what must not run twice.
        return None


@functools.cache
def _insert_statement(columns: tuple[str, ...]) -> Insert:
    """INSERT of `columns` with RETURNING of (id, key), built once per set of columns. A
    column the driver would get NULL for in every row of a chunk is left out: no deletion
    column has a default, so it is NULL all the same, for fewer values to bind per row."""
    binds = {name: bindparam(name, type_=_Bound(DELETION.c[name].type)) for name in columns}
    return insert(DELETION).values(binds).returning(DELETION.c.id, DELETION.c.record_key)


_Processors = dict[str, Callable[[Any], Any]]
_processors_of: WeakKeyDictionary[Dialect, _Processors] = WeakKeyDictionary()


def _processors(dialect: Dialect) -> _Processors:
    """Each deletion column's bind processor for `dialect`, as SQLAlchemy would apply it
    (the TypeDecorator's own step, then the dialect type's); a column without one is
    handed to the driver as it is."""
    found = _processors_of.get(dialect)
    if found is None:
        found = {}
        for column in DELETION.c:
            process = column.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                found[column.name] = process
        _processors_of[dialect] = found
    return found


def _bound(processors: _Processors, name: str, values: list[Any]) -> list[Any]:
    """Values of column `name` as SQLAlchemy would hand them to the driver."""
    process = processors.get(name)
    return values if process is None else [process(value) for value in values]


def _insert_deletions(
    conn: Connection,
    pipeline: str,
    stream: str,
    records: Sequence[NewRecord],
    run_id: int | None,
    now: datetime,
    echo_of: Mapping[str, int],
    window: ReadWindow,
    withdrawn: set[str],
) -> list[tuple[int, str]]:
    """(id, key) of each deletion that was new; duplicates are skipped (the keys of
    those withdrawn with a malformed answer are added to `withdrawn`).

    Look-up then insert, with no unique constraint to fall back on: only the
    holder of the pipeline's lease journals for it, so no other writer can
    slip a row in between (see `Deletion`). Within one answer, a key is one
    deletion, so the key names its row in what RETURNING gives back.

    What a chunk's rows share (the read, the run, the time) goes through its
    column's processor once per chunk with rows to insert, not once per row; only
    the key, the fields and what a few records carry (a rejection, an origin, a
    link) differ from row to row.
    """
    processors = _processors(conn.dialect)
    shared = {
        "pipeline": pipeline,
        "stream": stream,
        "seen_at": now,
        "run_id": run_id,
        "window_start": window.start,
        "window_end": window.end,
    }
    unique: dict[str, NewRecord] = {}
    for record in records:
        unique.setdefault(record.key, record)
    new_ids: list[tuple[int, str]] = []
    chunks = list(unique.values())
    for start in range(0, len(chunks), CHUNK):
        chunk = chunks[start : start + CHUNK]
        seen = _journaled(conn, pipeline, stream, chunk, window, withdrawn)
        new = [r for r in chunk if r.key not in seen]
        if not new:
            continue
        constant = {
            name: value
            for name, given in shared.items()
            if (value := _bound(processors, name, [given])[0]) is not None
        }
        fields = _bound(processors, "fields", [dict(r.fields) for r in new])
        rows = [
            {**constant, "record_key": r.key, "fields": f} for r, f in zip(new, fields, strict=True)
        ]
        per_row: dict[str, list[Any]] = {
            "rejected": [r.rejected or None for r in new],
            "origin": [r.origin or None for r in new],
            "origin_delivery_id": [r.origin_delivery_id for r in new],
            "echo_of_delivery_id": [echo_of.get(r.key) for r in new],
        }
        for name, given in per_row.items():
            values = _bound(processors, name, given)
            if values.count(None) < len(values):
                for row, value in zip(rows, values, strict=True):
                    row[name] = value
        statement = _insert_statement(tuple(rows[0]))
        new_ids.extend((int(i), str(k)) for i, k in conn.execute(statement, rows).all())
    return new_ids


_DELIVERY_COLUMNS = (
    "pipeline", "target", "status", "last_error", "created_at", "updated_at", "finished_at",
)  # fmt: skip
# Built once: a journal binds its values, so no statement is built, coerced or keyed again.
_INSERT_DELIVERIES = insert(DELIVERY).from_select(
    ["deletion_id", *_DELIVERY_COLUMNS],
    select(
        DELETION.c.id,
        *(bindparam(f"b_{name}", type_=DELIVERY.c[name].type) for name in _DELIVERY_COLUMNS),
    ).where(DELETION.c.id.in_(bindparam("b_ids", expanding=True))),
)


def _insert_deliveries(
    conn: Connection,
    pipeline: str,
    targets: Sequence[str],
    deletion_ids: Sequence[int],
    now: datetime,
    dead_reason: str | None = None,
) -> None:
    """One delivery per deletion and target, as INSERT ... SELECT from the deletions
    just written: a statement per target and CHUNK ids, with nothing to bind per row.
    With `dead_reason`, the deliveries are dead at once (a malformed record)."""
    values: dict[str, Any] = {
        "b_pipeline": pipeline,
        "b_status": DeliveryStatus.PENDING if dead_reason is None else DeliveryStatus.DEAD,
        "b_last_error": dead_reason or "",
        "b_created_at": now,
        "b_updated_at": now,
        "b_finished_at": None if dead_reason is None else now,
    }
    for target in targets:
        for start in range(0, len(deletion_ids), CHUNK):
            ids = deletion_ids[start : start + CHUNK]
            conn.execute(_INSERT_DELIVERIES, {**values, "b_target": target, "b_ids": ids})


def _dead_letter(reason: str) -> str:
    return (
        f"{MALFORMED}: {reason}; never sent: no retry can fix it, "
        "correct or remove it in the source"
    )


def _malformed() -> ColumnElement[bool]:
    """A record the source could not use (not one withdrawn with its answer)."""
    rejected = DELETION.c.rejected
    return and_(rejected.is_not(None), ~rejected.startswith(WITHDRAWN))


class Journal(StoreBase):
    """Cursors, in-flight markers and the journaled deletions of every source read."""

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

    def cursors(self, pipeline: str | None = None) -> list[Cursor]:
        with Session(self.engine) as s:
            query = select(Cursor).order_by(col(Cursor.pipeline), col(Cursor.stream))
            if pipeline is not None:
                query = query.where(col(Cursor.pipeline) == pipeline)
            return list(s.scalars(query).all())

    def known_keys(
        self,
        pipeline: str,
        stream: str,
        records: Sequence[NewRecord],
        window: ReadWindow = UNBOUNDED,
    ) -> set[str]:
        """The keys of these records a journal of a read over `window` would take for
        duplicates (what `plan` leaves out of "new")."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(records), CHUNK):
                found |= _journaled(conn, pipeline, stream, records[start : start + CHUNK], window)
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
            check_lease(s, lease, lock_row=self.locks_rows)
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
        window: ReadWindow = UNBOUNDED,
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
            conn = s.connection()
            check_lease(conn, lease, lock_row=self.locks_rows)
            causes = _caused_by_us(conn, records, window)
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
            withdrawn: set[str] = set()
            inserted = _insert_deletions(
                conn, pipeline, stream, prepared, run_id, now, echo_of, window, withdrawn
            )
            new_ids = [i for i, key in inserted if key not in echo_of and key not in rejected]
            dead = [(i, rejected[key]) for i, key in inserted if key in rejected]
            _insert_deliveries(conn, pipeline, targets, new_ids, now)
            for deletion_id, reason in dead:
                _insert_deliveries(
                    conn, pipeline, targets, [deletion_id], now, _dead_letter(reason)
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
                withdrawn=len(withdrawn),
            )

    def last_deletion_id(self) -> int:
        """The newest deletion's id (0 for none): what a call journals from now on has
        greater ids, since only the lease holder journals for its pipeline."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(DELETION.c.id))).scalar() or 0)

    def withdraw(
        self,
        pipeline: str,
        stream: str,
        *,
        run_id: int,
        after_id: int,
        reason: str,
        lease: Lease | None = None,
    ) -> Withdrawal:
        """Withdraw what run `run_id` journaled in `stream` since deletion `after_id`
        (one call's answer, found malformed): its records are marked with `reason`
        and every delivery of them not sent yet is dead with it, in one transaction.

        A delivery in flight is a claim made before this began: its send finishes
        and counts as sent. Whatever that send leaves due again (a retry, a release)
        is made dead by the next claim (`claim_due`); a re-read of the same answer
        takes its records for duplicates, so nothing of it is sent in a later run.
        """
        now = utcnow()
        of_call = (
            DELETION.c.pipeline == pipeline,
            DELETION.c.stream == stream,
            DELETION.c.run_id == run_id,
            DELETION.c.id > after_id,
        )
        deletions = select(DELETION.c.id).where(*of_call).scalar_subquery()
        mine = DELIVERY.c.deletion_id.in_(deletions)
        unsent = (DeliveryStatus.PENDING, DeliveryStatus.FAILED, DeliveryStatus.HELD)
        with self._core() as conn:
            check_lease(conn, lease, lock_row=self.locks_rows)
            conn.execute(
                update(DELETION)
                .where(*of_call, DELETION.c.rejected.is_(None))
                .values(rejected=reason)
            )
            withdrawn = conn.execute(
                update(DELIVERY)
                .where(mine, DELIVERY.c.status.in_(unsent))
                .values(
                    status=DeliveryStatus.DEAD,
                    last_error=reason,
                    claim=None,
                    next_attempt_at=None,
                    updated_at=now,
                    finished_at=now,
                )
            ).rowcount
            sent = conn.execute(
                select(func.count()).where(
                    mine, DELIVERY.c.status.in_((DeliveryStatus.DONE, DeliveryStatus.IN_FLIGHT))
                )
            ).scalar_one()
            return Withdrawal(sent=int(sent), withdrawn=int(withdrawn or 0))

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

    def deletion_count(self, pipeline: str | None = None) -> int:
        """Deletions journaled, malformed records left out (records withdrawn with a
        malformed answer are counted: they were journaled, and their deliveries say
        which went out)."""
        with Session(self.engine) as s:
            query = select(func.count()).select_from(Deletion).where(~_malformed())
            if pipeline is not None:
                query = query.where(col(Deletion.pipeline) == pipeline)
            return int(s.execute(query).scalar_one())

    def malformed_counts(self, pipeline: str) -> dict[str, int]:
        """Per stream: records the source could not use, journaled as dead letters."""
        with Session(self.engine) as s:
            rows = s.execute(
                select(col(Deletion.stream), func.count())
                .where(col(Deletion.pipeline) == pipeline, _malformed())
                .group_by(col(Deletion.stream))
            ).all()
            return {stream: int(count) for stream, count in rows}
