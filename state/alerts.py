"""Conditions someone must be told about, the alerts they raise, and target health.

The engine decides what is wrong (`Condition`); the store remembers what is open,
so an alert is raised once per episode whichever process or run notices it first,
and keeps the alerts still to send (the outbox), written in the transaction that
opened or resolved their condition: a crash between noticing and sending loses none.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from state.base import StoreBase
from state.models import AlertCondition, AlertNotice, ConditionState, TargetHealth, utcnow

OPENED = "opened"
RESOLVED = "resolved"


@dataclass(frozen=True)
class Condition:
    """Something wrong now, as the engine found it. `key` names it for good
    (`kind:pipeline/target`), so the same trouble found again is the same condition."""

    key: str
    kind: str
    pipeline: str | None
    target: str | None
    since: datetime
    message: str
    command: str = ""
    blocks_ready: bool = True


@dataclass(frozen=True)
class Transition:
    """A condition that opened or resolved in one `sync_conditions`."""

    event: str
    key: str
    kind: str
    pipeline: str | None
    target: str | None
    message: str


@dataclass(frozen=True)
class Notice:
    """One alert to send to one sink, claimed by this process until `until`."""

    id: int
    sink: str
    event: str
    attempts: int
    payload: dict[str, Any]


def _payload(row: AlertCondition, event: str) -> dict[str, Any]:
    return {
        "event": event,
        "key": row.key,
        "kind": row.kind,
        "pipeline": row.pipeline,
        "target": row.target,
        "episode": row.episode,
        "since": row.since.isoformat(),
        "opened_at": row.opened_at.isoformat(),
        "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
        "message": row.message,
        "command": row.command,
    }


class Alerts(StoreBase):
    def sync_conditions(
        self,
        found: Sequence[Condition],
        *,
        pipelines: Collection[str] | None,
        sinks: Sequence[str],
        now: datetime | None = None,
    ) -> list[Transition]:
        """Make the store's open conditions those `found`, within `pipelines` (None:
        every condition): a new one opens, one no longer found resolves, one still
        found keeps its episode (its message is refreshed). Each opening and each
        resolution queues one notice per sink in the same transaction."""
        now = now or utcnow()
        transitions: list[Transition] = []
        with self._tx() as s:
            rows = {
                row.key: row
                for row in s.exec(
                    select(AlertCondition).where(
                        or_(
                            col(AlertCondition.key).in_([c.key for c in found]),
                            col(AlertCondition.state) == ConditionState.OPEN,
                        )
                    )
                ).all()
            }
            for condition in found:
                row = rows.get(condition.key)
                if row is not None and row.state == ConditionState.OPEN:
                    row.message, row.command = condition.message, condition.command
                    row.blocks_ready = condition.blocks_ready
                    continue
                if self._open(s, condition, row, now):
                    opened = s.get(AlertCondition, condition.key)
                    assert opened is not None
                    self._queue(s, opened, OPENED, sinks, now)
                    transitions.append(_transition(opened, OPENED))
            seen = {c.key for c in found}
            for row in rows.values():
                if row.state != ConditionState.OPEN or row.key in seen:
                    continue
                if pipelines is not None and row.pipeline not in pipelines:
                    continue
                won = s.execute(
                    update(AlertCondition)
                    .where(
                        and_(
                            col(AlertCondition.key) == row.key,
                            col(AlertCondition.state) == ConditionState.OPEN,
                            col(AlertCondition.episode) == row.episode,
                        )
                    )
                    .values(state=ConditionState.RESOLVED, resolved_at=now)
                )
                if won.rowcount:  # type: ignore[attr-defined]
                    s.refresh(row)
                    self._queue(s, row, RESOLVED, sinks, now)
                    transitions.append(_transition(row, RESOLVED))
        return transitions

    def _open(
        self, s: Session, condition: Condition, row: AlertCondition | None, now: datetime
    ) -> bool:
        """Open `condition`: True only for the one process whose write opened it."""
        values = {
            "kind": condition.kind,
            "pipeline": condition.pipeline,
            "target": condition.target,
            "state": ConditionState.OPEN,
            "since": condition.since,
            "opened_at": now,
            "resolved_at": None,
            "message": condition.message,
            "command": condition.command,
            "blocks_ready": condition.blocks_ready,
        }
        if row is not None:
            result = s.execute(
                update(AlertCondition)
                .where(
                    and_(
                        col(AlertCondition.key) == condition.key,
                        col(AlertCondition.state) == ConditionState.RESOLVED,
                        col(AlertCondition.episode) == row.episode,
                    )
                )
                .values(episode=row.episode + 1, **values)
            )
            s.expire(row)
            return bool(result.rowcount)  # type: ignore[attr-defined]
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        statement = (
            dialect.insert(AlertCondition)
            .values(key=condition.key, episode=1, **values)
            .on_conflict_do_nothing(index_elements=["key"])
        )
        return bool(s.execute(statement).rowcount)  # type: ignore[attr-defined]

    @staticmethod
    def _queue(
        s: Session, row: AlertCondition, event: str, sinks: Sequence[str], now: datetime
    ) -> None:
        payload = _payload(row, event)
        for sink in sinks:
            s.execute(
                insert(AlertNotice).values(
                    condition_key=row.key,
                    episode=row.episode,
                    event=event,
                    sink=sink,
                    payload=payload,
                    attempts=0,
                    next_attempt_at=now,
                    last_error="",
                    created_at=now,
                )
            )

    def open_conditions(self, pipeline: str | None = None) -> list[AlertCondition]:
        with Session(self.engine) as s:
            query = select(AlertCondition).where(col(AlertCondition.state) == ConditionState.OPEN)
            if pipeline is not None:
                query = query.where(col(AlertCondition.pipeline) == pipeline)
            return list(s.exec(query.order_by(col(AlertCondition.key))).all())

    def claim_notices(self, until: datetime, limit: int = 20) -> list[Notice]:
        """Notices due now, each claimed until `until` (its next attempt time moved
        there first), so two processes never send the same notice at once."""
        now = utcnow()
        claimed: list[Notice] = []
        with self._tx() as s:
            due = s.exec(
                select(AlertNotice)
                .where(
                    col(AlertNotice.sent_at).is_(None),
                    col(AlertNotice.gave_up_at).is_(None),
                    col(AlertNotice.next_attempt_at) <= now,
                )
                .order_by(col(AlertNotice.id))
                .limit(limit)
            ).all()
            for notice in list(due):
                won = s.execute(
                    update(AlertNotice)
                    .where(
                        and_(
                            col(AlertNotice.id) == notice.id,
                            col(AlertNotice.next_attempt_at) == notice.next_attempt_at,
                            col(AlertNotice.sent_at).is_(None),
                        )
                    )
                    .values(next_attempt_at=until)
                )
                if won.rowcount:  # type: ignore[attr-defined]
                    assert notice.id is not None
                    claimed.append(
                        Notice(
                            notice.id, notice.sink, notice.event, notice.attempts, notice.payload
                        )
                    )
        return claimed

    def notice_sent(self, notice_id: int) -> None:
        with self._tx() as s:
            s.execute(
                update(AlertNotice)
                .where(col(AlertNotice.id) == notice_id)
                .values(sent_at=utcnow(), attempts=AlertNotice.attempts + 1, last_error="")
            )

    def notice_failed(self, notice_id: int, error: str, retry_at: datetime | None) -> None:
        """A failed attempt: tried again at `retry_at`, or given up (None)."""
        now = utcnow()
        values: dict[str, Any] = {"attempts": AlertNotice.attempts + 1, "last_error": error}
        if retry_at is None:
            values["gave_up_at"] = now
        else:
            values["next_attempt_at"] = retry_at
        with self._tx() as s:
            s.execute(update(AlertNotice).where(col(AlertNotice.id) == notice_id).values(**values))

    def notices(self, *, unsent_only: bool = False) -> list[AlertNotice]:
        with Session(self.engine) as s:
            query = select(AlertNotice)
            if unsent_only:
                query = query.where(
                    col(AlertNotice.sent_at).is_(None), col(AlertNotice.gave_up_at).is_(None)
                )
            return list(s.exec(query.order_by(col(AlertNotice.id))).all())

    def note_target_result(
        self, pipeline: str, target: str, *, got_through: bool, error: str = ""
    ) -> None:
        """One run's verdict on a target it had work for: something got through, or
        nothing did (`error` is the first reason)."""
        now = utcnow()
        with self._tx() as s:
            row = s.get(TargetHealth, (pipeline, target))
            if row is None:
                row = TargetHealth(pipeline=pipeline, target=target, updated_at=now)
                s.add(row)
            row.updated_at = now
            if got_through:
                row.failing_since, row.failed_runs, row.last_ok_at = None, 0, now
                row.last_error = ""
            else:
                row.failing_since = row.failing_since or now
                row.failed_runs += 1
                row.last_error = error

    def target_health(self, pipeline: str | None = None) -> list[TargetHealth]:
        with Session(self.engine) as s:
            query = select(TargetHealth)
            if pipeline is not None:
                query = query.where(col(TargetHealth.pipeline) == pipeline)
            return list(s.exec(query).all())


def _transition(row: AlertCondition, event: str) -> Transition:
    return Transition(event, row.key, row.kind, row.pipeline, row.target, row.message)


def backoff(attempts: int, first: float, most: float) -> timedelta:
    """The wait before attempt `attempts + 1`: doubling from `first`, at most `most`."""
    return timedelta(seconds=min(most, first * 2 ** max(0, attempts - 1)))
