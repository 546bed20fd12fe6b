"""Recording the targets' verdicts: done, retried later, or dead.

A batch's outcomes are one look-up of the rows' attempt counts and a statement per
distinct verdict: deliveries answered alike (done with the same detail, dead for
the same reason) are one UPDATE ... WHERE id IN (...); a retry, whose next attempt
is jittered per delivery, is one executemany.

The done UPDATE returns each row's lag (seconds from its journaling to now), so the
propagation lag is counted by the statement that makes a delivery done, with no query
of its own, into fixed buckets. The database computes it: returning the journaling
time instead made SQLite's rows be parsed as text dates in Python, doubling the cost
of recording a batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Update, bindparam, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from state.base import DELIVERY
from state.models import DeliveryStatus, UTCDateTime
from state.records import CHUNK, LagCounts, OutcomeCounts, OutcomeRecord, RetryRule

_FAILED = (
    update(DELIVERY)
    .where(DELIVERY.c.id == bindparam("b_id"))
    .values(
        status=DeliveryStatus.FAILED,
        claim=None,
        attempts=DELIVERY.c.attempts + 1,
        updated_at=bindparam("b_now"),
        last_error=bindparam("b_error"),
        next_attempt_at=bindparam("b_next"),
    )
)


class _SecondsSince(FunctionElement[float]):
    """`now - then` in seconds, as a float: each database spells it its own way."""

    type = Float()
    name = "seconds_since"
    inherit_cache = True


@compiles(_SecondsSince, "sqlite")
def _sqlite_seconds(element: _SecondsSince, compiler: SQLCompiler, **kw: Any) -> str:
    now, then = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"((julianday({now}) - julianday({then})) * 86400.0)"


@compiles(_SecondsSince, "postgresql")
def _postgresql_seconds(element: _SecondsSince, compiler: SQLCompiler, **kw: Any) -> str:
    now, then = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"CAST(EXTRACT(EPOCH FROM ({now} - {then})) AS DOUBLE PRECISION)"


_NOW = bindparam("b_now", type_=UTCDateTime())


def _answered(values: Mapping[str, Any]) -> Update:
    """Deliveries answered alike, named by `b_ids`, all at once."""
    return (
        update(DELIVERY)
        .where(DELIVERY.c.id.in_(bindparam("b_ids", expanding=True)))
        .values(
            claim=None,
            attempts=DELIVERY.c.attempts + 1,
            updated_at=_NOW,
            finished_at=_NOW,
            **values,
        )
    )


_DONE = _answered(
    {
        "status": DeliveryStatus.DONE,
        "detail": bindparam("b_detail"),
        "effect": bindparam("b_effect"),
        "next_attempt_at": None,
    }
).returning(_SecondsSince(_NOW, DELIVERY.c.created_at))
_DEAD = _answered({"status": DeliveryStatus.DEAD, "last_error": bindparam("b_error")})
_ATTEMPTS = select(DELIVERY.c.id, DELIVERY.c.attempts).where(
    DELIVERY.c.id.in_(bindparam("b_ids", expanding=True))
)


def _attempts(conn: Connection, ids: list[int]) -> dict[int, int]:
    found: dict[int, int] = {}
    for start in range(0, len(ids), CHUNK):
        rows = conn.execute(_ATTEMPTS, {"b_ids": ids[start : start + CHUNK]})
        found.update((int(i), int(a)) for i, a in rows)
    return found


def apply_outcomes(
    conn: Connection, outcomes: Iterable[OutcomeRecord], rule: RetryRule, now: datetime
) -> OutcomeCounts:
    """Write each delivery's outcome; an id the store does not hold is skipped. A retry
    past the rule's attempts is dead, saying how many were made.

    Only a retry needs the attempts made so far, so only retries are looked up; a done
    or dead delivery is counted by the rows its UPDATE matched (an unknown id, none).
    """
    by_id = {o.delivery_id: o for o in outcomes}
    done: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    dead: dict[str, list[int]] = defaultdict(list)
    retries: list[int] = []
    for delivery_id, outcome in by_id.items():
        if outcome.kind == "done":
            done[(outcome.detail, outcome.effect or None)].append(delivery_id)
        elif outcome.kind == "dead":
            dead[outcome.reason].append(delivery_id)
        else:
            retries.append(delivery_id)
    failed: list[dict[str, Any]] = []
    for delivery_id, before in _attempts(conn, retries).items():
        outcome = by_id[delivery_id]
        made = before + 1
        if made >= rule.max_attempts:
            dead[f"gave up after {made} attempts: {outcome.reason}"].append(delivery_id)
        else:
            next_at = rule.next_attempt(now, made, outcome.retry_after)
            failed.append(
                {"b_id": delivery_id, "b_now": now, "b_error": outcome.reason, "b_next": next_at}
            )
    counts = OutcomeCounts(retried=len(failed))
    for (detail, effect), ids in done.items():
        values = {"b_now": now, "b_detail": detail, "b_effect": effect}
        counts.done += _done(conn, ids, values, counts.lag)
    for reason, ids in dead.items():
        counts.dead += _answer(conn, _DEAD, ids, {"b_now": now, "b_error": reason})
    if failed:
        conn.execute(_FAILED, failed)
    return counts


def _done(conn: Connection, ids: list[int], values: dict[str, Any], lag: LagCounts) -> int:
    """Deliveries `ids` made done, CHUNK at a time, each one's lag counted into `lag`;
    how many the store holds."""
    matched = 0
    for start in range(0, len(ids), CHUNK):
        rows = conn.execute(_DONE, {**values, "b_ids": ids[start : start + CHUNK]})
        for (seconds,) in rows:
            lag.observe(float(seconds))
            matched += 1
    return matched


def _answer(conn: Connection, statement: Update, ids: list[int], values: dict[str, Any]) -> int:
    """Deliveries `ids` answered alike, CHUNK at a time; how many the store holds."""
    matched = 0
    for start in range(0, len(ids), CHUNK):
        result = conn.execute(statement, {**values, "b_ids": ids[start : start + CHUNK]})
        matched += int(result.rowcount)
    return matched
