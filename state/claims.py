"""Claiming due deliveries, and the guards' verdicts applied in the claim's transaction.

A claim is two look-ups (the oldest pending, the oldest failed that are due, each
by the queue index and bounded by the batch) and one UPDATE of the rows taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, and_, bindparam, func, or_, select, update
from sqlalchemy.engine import Connection

from state.base import DELETION, DELIVERY
from state.models import DeliveryStatus
from state.outcomes import apply_outcomes
from state.records import (
    CHUNK,
    ClaimedDelivery,
    GuardCounts,
    OutcomeRecord,
    RetryRule,
    Screen,
)

_COLUMNS = (
    DELIVERY.c.id,
    DELIVERY.c.attempts,
    DELIVERY.c.approved,
    DELETION.c.stream,
    DELETION.c.record_key,
    DELETION.c.fields,
    DELETION.c.rejected,
)


def claimed_of(row: Row[Any]) -> ClaimedDelivery:
    """A row of `with_deletions` as the engine sees it (unpacked by position, in the order
    of `_COLUMNS`: a row's attributes are looked up by name, per row and column)."""
    delivery_id, attempts, approved, stream, key, fields, rejected = tuple(row)
    return ClaimedDelivery(
        id=delivery_id,
        attempts=attempts,
        stream=stream,
        key=key,
        fields=dict(fields),
        approved=bool(approved),
        rejected=rejected or "",
    )


def with_deletions(*where: ColumnElement[bool]) -> Select[Any]:
    """Deliveries with what they delete, oldest first."""
    return (
        select(*_COLUMNS)
        .join_from(DELIVERY, DELETION, DELETION.c.id == DELIVERY.c.deletion_id)
        .where(*where)
        .order_by(DELIVERY.c.id)
    )


def due_condition(pipeline: str, target: str, now: datetime) -> ColumnElement[bool]:
    return and_(
        DELIVERY.c.pipeline == pipeline,
        DELIVERY.c.target == target,
        or_(
            DELIVERY.c.status == DeliveryStatus.PENDING,
            and_(
                DELIVERY.c.status == DeliveryStatus.FAILED,
                DELIVERY.c.next_attempt_at <= now,
            ),
        ),
    )


def _due_query(status: DeliveryStatus, fresh: bool, lock: bool) -> Select[Any]:
    """The oldest `b_limit` deliveries of a target in `status`; failed ones only once
    due (and, with `fresh`, not failed during this run: a run does not retry, in a
    loop, what failed during that same run)."""
    where = [
        DELIVERY.c.pipeline == bindparam("b_pipeline"),
        DELIVERY.c.target == bindparam("b_target"),
        DELIVERY.c.status == status,
    ]
    if status is DeliveryStatus.FAILED:
        where.append(DELIVERY.c.next_attempt_at <= bindparam("b_now"))
        if fresh:
            where.append(DELIVERY.c.updated_at < bindparam("b_fresh"))
    query = with_deletions(*where).limit(bindparam("b_limit"))
    return query.with_for_update(skip_locked=True, of=DELIVERY) if lock else query


# Built once: a claim binds its values, so no statement is built, coerced or keyed again.
_DUE = {
    (status, fresh, lock): _due_query(status, fresh, lock)
    for status in (DeliveryStatus.PENDING, DeliveryStatus.FAILED)
    for fresh in (False, True)
    for lock in (False, True)
}
_CLAIM = (
    update(DELIVERY)
    .where(DELIVERY.c.id.in_(bindparam("b_ids", expanding=True)))
    .values(
        status=DeliveryStatus.IN_FLIGHT,
        claim=bindparam("b_claim"),
        claim_epoch=bindparam("b_epoch"),
        updated_at=bindparam("b_now"),
    )
)


def _due_rows(
    conn: Connection,
    pipeline: str,
    target: str,
    now: datetime,
    fresh_before: datetime | None,
    limit: int,
) -> list[ClaimedDelivery]:
    """The `limit` oldest due deliveries. Pending and failed are looked up apart, so
    each look-up walks the queue index (pipeline, target, status, id) in order and
    stops at `limit`, however many deliveries are done or waiting."""
    fresh = fresh_before is not None
    lock = conn.dialect.name == "postgresql"
    values = {
        "b_pipeline": pipeline,
        "b_target": target,
        "b_now": now,
        "b_fresh": fresh_before,
        "b_limit": limit,
    }
    found: list[ClaimedDelivery] = []
    for status in (DeliveryStatus.PENDING, DeliveryStatus.FAILED):
        query = _DUE[(status, fresh and status is DeliveryStatus.FAILED, lock)]
        found.extend(map(claimed_of, conn.execute(query, values).all()))
    found.sort(key=lambda c: c.id)
    return found[:limit]


def claim_due(
    conn: Connection,
    pipeline: str,
    target: str,
    limit: int,
    claim: str,
    now: datetime,
    fresh_before: datetime | None,
    screen: Screen | None,
    epoch: int | None,
) -> list[ClaimedDelivery]:
    """Move up to `limit` due deliveries to in flight, oldest first. What a screen takes
    out (dead or held) is replaced by the next due deliveries, so a batch is short
    only when nothing more may be sent.

    A delivery whose record was withdrawn with its malformed answer becomes dead here
    whatever brought it back (a send claimed before the withdrawal that failed, a
    release, a crash's orphans), in this transaction, so no claim ever sends it."""
    claimed: list[ClaimedDelivery] = []
    while len(claimed) < limit:
        rows = _due_rows(conn, pipeline, target, now, fresh_before, limit - len(claimed))
        if not rows:
            break
        if any(r.rejected for r in rows):
            withdrawn = [OutcomeRecord(r.id, "dead", reason=r.rejected) for r in rows if r.rejected]
            apply_outcomes(conn, withdrawn, RetryRule(), now)
            rows = [r for r in rows if not r.rejected]
        if screen is not None:
            rows = _screen(conn, pipeline, target, now, screen, rows)
        if rows:
            ids = [c.id for c in rows]
            conn.execute(_CLAIM, {"b_ids": ids, "b_claim": claim, "b_epoch": epoch, "b_now": now})
            claimed.extend(rows)
    return claimed


def _screen(
    conn: Connection,
    pipeline: str,
    target: str,
    now: datetime,
    screen: Screen,
    rows: list[ClaimedDelivery],
) -> list[ClaimedDelivery]:
    """The rows that may be sent: the protected ones become dead; over a limit,
    every due delivery not approved is held and only approved rows remain."""
    protected = _protect(conn, screen, rows, now)
    rows = [r for r in rows if r.id not in protected]
    if not screen.weighs_limits:
        return rows
    counts = guard_counts(conn, pipeline, target, now)
    reason = screen.hold(counts) if counts.due else None
    if reason is None:
        return rows
    # Held for numbers: what the legal hold protects is never due, so it is taken
    # out of the whole due set before the numbers are weighed again.
    unapproved = (due_condition(pipeline, target, now), DELIVERY.c.approved.is_(False))
    if _protect_all(conn, screen, unapproved, now):
        counts = guard_counts(conn, pipeline, target, now)
        reason = screen.hold(counts) if counts.due else None
    if reason is None:
        return rows
    held = conn.execute(
        update(DELIVERY)
        .where(*unapproved)
        .values(status=DeliveryStatus.HELD, last_error=reason, updated_at=now)
    )
    screen.on_hold(int(held.rowcount or 0), reason)
    return [r for r in rows if r.approved]


def rescreen(
    conn: Connection,
    pipeline: str,
    target: str,
    now: datetime,
    screen: Screen,
    rows: list[ClaimedDelivery],
) -> list[ClaimedDelivery]:
    """The rows of a job not yet submitted that the guards allow now, screened exactly
    as a fresh claim would screen them: they are made due again first (inside the
    caller's transaction, so no other claim sees them), and each one the screen takes
    out is left where its verdict puts it (dead, held), with no claim and no job. The
    caller claims the rows returned."""
    ids = [r.id for r in rows]
    for start in range(0, len(ids), CHUNK):
        conn.execute(_UNCLAIM, {"b_ids": ids[start : start + CHUNK]})
    return _screen(conn, pipeline, target, now, screen, rows)


_UNCLAIM = (
    update(DELIVERY)
    .where(DELIVERY.c.id.in_(bindparam("b_ids", expanding=True)))
    .values(status=DeliveryStatus.PENDING, claim=None, job_id=None)
)


def _protect(
    conn: Connection, screen: Screen, rows: Sequence[ClaimedDelivery], now: datetime
) -> set[int]:
    """Make dead, with the screen's reason, each row it protects; their ids."""
    dead = [
        OutcomeRecord(row.id, "dead", reason=reason)
        for row in rows
        if (reason := screen.protect(row)) is not None
    ]
    apply_outcomes(conn, dead, RetryRule(), now)
    return {o.delivery_id for o in dead}


SCREEN_CHUNK = 1000
"""Deliveries read at a time when a whole due set is screened: a mass delete of a
million rows costs the memory of a thousand."""


def _protect_all(
    conn: Connection, screen: Screen, where: Sequence[ColumnElement[bool]], now: datetime
) -> bool:
    """`_protect` over every delivery `where` selects, a chunk at a time in id order
    (those it makes dead leave the selection, the others are passed by id); whether it
    protected any."""
    protected, after = False, 0
    while True:
        query = with_deletions(*where, DELIVERY.c.id > after).limit(SCREEN_CHUNK)
        chunk = [claimed_of(row) for row in conn.execute(query)]
        if not chunk:
            return protected
        protected = bool(_protect(conn, screen, chunk, now)) or protected
        after = chunk[-1].id


def guard_counts(conn: Connection, pipeline: str, target: str, now: datetime) -> GuardCounts:
    def count(*where: ColumnElement[bool]) -> int:
        return int(
            conn.execute(select(func.count()).select_from(DELIVERY).where(*where)).scalar_one()
        )

    mine = (DELIVERY.c.pipeline == pipeline, DELIVERY.c.target == target)
    return GuardCounts(
        due=count(due_condition(pipeline, target, now), DELIVERY.c.approved.is_(False)),
        done_last_hour=count(
            *mine,
            DELIVERY.c.status == DeliveryStatus.DONE,
            DELIVERY.c.finished_at >= now - timedelta(hours=1),
        ),
        in_flight=count(*mine, DELIVERY.c.status == DeliveryStatus.IN_FLIGHT),
    )
