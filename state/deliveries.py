"""Deliveries: claimed, answered or released by a run; held, approved, retried or
dropped by an operator.

The run's part (claim, outcomes, release) is Core statements per batch, see
`state.claims` and `state.outcomes`; the operator's part reads and writes few rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, update
from sqlmodel import Session, col, select

from state.base import DELIVERY, StoreBase
from state.claims import claim_due, claimed_of, due_condition, guard_counts, with_deletions
from state.lease import Lease, check_lease
from state.models import Deletion, Delivery, DeliveryStatus, Job, JobPhase, aware, utcnow
from state.outcomes import apply_outcomes
from state.records import (
    CHUNK,
    WITHDRAWN,
    ClaimedDelivery,
    GuardCounts,
    HeldCountMismatch,
    OutcomeCounts,
    OutcomeRecord,
    QueueAge,
    RetryRule,
    Screen,
    TargetCounts,
)


class Deliveries(StoreBase):
    """Each (deletion, target) pair's way to done or dead."""

    def release_orphans(self, pipeline: str, target: str, *, lease: Lease | None = None) -> int:
        """Deliveries left in flight by a crashed run go back to pending.

        Called under the pipeline lock, so no live run owns them. Re-sending is
        safe: deleting what is already gone counts as done.
        """
        with self._tx() as s:
            check_lease(s, lease, lock_row=self.locks_rows)
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
        with self._core() as conn:
            check_lease(conn, lease, lock_row=self.locks_rows)
            epoch = None if lease is None else lease.epoch
            return claim_due(
                conn, pipeline, target, limit, claim, now or utcnow(), fresh_before, screen, epoch
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
        with self._core() as conn:
            check_lease(conn, lease, lock_row=self.locks_rows)
            return apply_outcomes(conn, outcomes, rule, now or utcnow())

    def release(
        self, delivery_ids: Sequence[int], reason: str = "", *, lease: Lease | None = None
    ) -> None:
        """Return claimed deliveries to pending without counting an attempt
        (the run stopped before sending them, or the target's credentials failed)."""
        if not delivery_ids:
            return
        with self._tx() as s:
            check_lease(s, lease, lock_row=self.locks_rows)
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

    def queue_ages(self, pipeline: str | None = None) -> list[QueueAge]:
        """Per target, the oldest delivery still waiting and the oldest held: the lag
        an SLO, /readyz, `status` and the metrics speak of."""
        waiting = [DeliveryStatus.PENDING, DeliveryStatus.FAILED, DeliveryStatus.IN_FLIGHT]
        ages: dict[tuple[str, str], dict[str, datetime]] = {}
        with Session(self.engine) as s:
            for statuses, column, name in (
                (waiting, col(Delivery.created_at), "waiting"),
                ([DeliveryStatus.HELD], col(Delivery.updated_at), "held"),
            ):
                query = (
                    select(col(Delivery.pipeline), col(Delivery.target), func.min(column))
                    .where(col(Delivery.status).in_(statuses))
                    .group_by(col(Delivery.pipeline), col(Delivery.target))
                )
                if pipeline is not None:
                    query = query.where(col(Delivery.pipeline) == pipeline)
                for pipe, target, oldest in s.exec(query).all():
                    if oldest is not None:
                        ages.setdefault((pipe, target), {})[name] = aware(oldest)
        return [
            QueueAge(p, t, found.get("waiting"), found.get("held"))
            for (p, t), found in sorted(ages.items())
        ]

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

    def page(
        self,
        *,
        pipeline: str | None = None,
        target: str | None = None,
        status: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> Iterator[tuple[Delivery, Deletion]]:
        """Up to `limit` deliveries with an id above `after`, in id order, read a chunk
        at a time (each chunk its own short query, keyed on the last id seen): a listing
        of millions holds a chunk in memory and never a transaction open for long."""
        left = limit
        while left > 0:
            with Session(self.engine) as s:
                query = select(Delivery, Deletion).join(
                    Deletion, col(Deletion.id) == col(Delivery.deletion_id)
                )
                query = query.where(col(Delivery.id) > after)
                if pipeline is not None:
                    query = query.where(col(Delivery.pipeline) == pipeline)
                if target is not None:
                    query = query.where(col(Delivery.target) == target)
                if status is not None:
                    query = query.where(col(Delivery.status) == status)
                size = min(left, CHUNK)
                rows = s.exec(query.order_by(col(Delivery.id)).limit(size)).all()
            yield from rows
            if len(rows) < size:
                return
            left -= len(rows)
            after = rows[-1][0].id or after

    def due_deliveries(
        self, pipeline: str, target: str, now: datetime | None = None
    ) -> list[ClaimedDelivery]:
        """What the next run's claims would take (for a plan)."""
        with self.engine.connect() as conn:
            query = with_deletions(due_condition(pipeline, target, now or utcnow()))
            return [claimed_of(row) for row in conn.execute(query)]

    def unsent_job_deliveries(self, pipeline: str, target: str) -> list[ClaimedDelivery]:
        """The batches of jobs the target may not have yet (created, or whose submission's
        answer was lost: sent again unless the target finds it), which are screened
        again when they are submitted (for a plan)."""
        unsent = select(col(Job.id)).where(
            col(Job.pipeline) == pipeline,
            col(Job.target) == target,
            col(Job.phase).in_([JobPhase.CREATED, JobPhase.SUBMITTING]),
        )
        waiting = and_(DELIVERY.c.status == DeliveryStatus.IN_FLIGHT, DELIVERY.c.job_id.in_(unsent))
        with self.engine.connect() as conn:
            return [claimed_of(row) for row in conn.execute(with_deletions(waiting))]

    def guard_counts(self, pipeline: str, target: str, now: datetime | None = None) -> GuardCounts:
        """What a claim's mass-delete guard would weigh now, counted by the claim's own
        function, read-only: for `plan`, so it holds what a run would hold."""
        with self.engine.connect() as conn:
            return guard_counts(conn, pipeline, target, now or utcnow())

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
        a record the source could not name (see `malformed_of`). A record withdrawn
        with its malformed answer is well formed: retried by an operator who checked
        it with the source, it is a deletion like any other again (its mark is cleared,
        or the next claim would make it dead once more).
        """
        ids = sorted(set(delivery_ids) - self.malformed_of(delivery_ids))
        with self._tx() as s:
            for start in range(0, len(ids), CHUNK):
                retried = select(col(Delivery.deletion_id)).where(
                    col(Delivery.id).in_(ids[start : start + CHUNK]),
                    col(Delivery.status) == DeliveryStatus.DEAD,
                )
                s.execute(
                    update(Deletion)
                    .where(
                        col(Deletion.id).in_(retried),
                        col(Deletion.rejected).startswith(WITHDRAWN),
                    )
                    .values(rejected=None)
                )
        return self._from_dead(ids, status=DeliveryStatus.PENDING, attempts=0, finished_at=None)

    def malformed_of(self, delivery_ids: Sequence[int]) -> set[int]:
        """Which of these deliveries are dead letters of malformed records (not those
        withdrawn with a malformed answer: their records were well formed)."""
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
                            ~col(Deletion.rejected).startswith(WITHDRAWN),
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
