"""Reading the links between deletions: what a chained pipeline still has to take over,
and one record's whole path for `trace`.

A deletion may continue an upstream delivery (`origin_delivery_id`: a chained
pipeline, or a source following this engine's own jobs) or repeat one this
engine made (`echo_of_delivery_id`). Only reads live here; the journal in
`state.store` writes the links in the transaction that journals the deletion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from state.models import Deletion, Delivery, DeliveryStatus, Job


@dataclass(frozen=True)
class Handover:
    """A delivery done upstream that a chained pipeline has not journaled yet."""

    delivery_id: int
    stream: str
    key: str
    fields: dict[str, Any]
    detail: str
    effect: str | None


@dataclass
class DeliveryNode:
    id: int
    pipeline: str
    target: str
    status: str
    attempts: int
    detail: str
    reason: str
    effect: str | None
    job: dict[str, Any] | None
    finished_at: str | None
    continued: list[DeletionNode] = field(default_factory=list)
    """Deletions of chained pipelines (or followed jobs) that carry this one on."""
    echoes: list[DeletionNode] = field(default_factory=list)
    """This delete reported back by a source: journaled, not propagated again."""


@dataclass
class DeletionNode:
    id: int
    pipeline: str
    stream: str
    key: str
    origin: str | None
    seen_at: str
    fields: dict[str, Any]
    deliveries: list[DeliveryNode] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


MAX_DEPTH = 32
"""Chains are acyclic by configuration; the bound only protects against a corrupt store."""


class Lineage:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def handovers(
        self, pipeline: str, upstream: str, target: str, stream: str, limit: int = 500
    ) -> list[Handover]:
        """Done deliveries of upstream/target in `stream` that `pipeline` has not
        continued yet, oldest first. The anti-join is on the link the journal
        de-duplicates chained records by, so what has been journaled never comes
        back, while a key deleted upstream again (a new delivery) is handed over.
        A deletion journaled before links existed has none: it continues the
        upstream deletion of its key that it was journaled after."""
        mine = aliased(Deletion)
        with Session(self.engine) as s:
            rows = s.exec(
                select(Delivery, Deletion)
                .join(Deletion, col(Deletion.id) == col(Delivery.deletion_id))
                .outerjoin(
                    mine,
                    and_(
                        col(mine.pipeline) == pipeline,
                        col(mine.stream) == col(Deletion.stream),
                        or_(
                            col(mine.origin_delivery_id) == col(Delivery.id),
                            and_(
                                col(mine.origin_delivery_id).is_(None),
                                col(mine.record_key) == col(Deletion.record_key),
                                col(mine.seen_at) >= col(Deletion.seen_at),
                            ),
                        ),
                    ),
                )
                .where(
                    col(Delivery.pipeline) == upstream,
                    col(Delivery.target) == target,
                    col(Delivery.status) == DeliveryStatus.DONE,
                    col(Deletion.stream) == stream,
                    col(mine.id).is_(None),
                )
                .order_by(col(Delivery.id))
                .limit(limit)
            ).all()
            return [
                Handover(d.id or 0, e.stream, e.record_key, dict(e.fields), d.detail, d.effect)
                for d, e in rows
            ]

    def streams_with_deliveries(self, pipeline: str, target: str) -> list[str]:
        """The upstream streams that have (or had) deliveries for this target."""
        with Session(self.engine) as s:
            rows = s.exec(
                select(col(Deletion.stream))
                .join(Delivery, col(Deletion.id) == col(Delivery.deletion_id))
                .where(col(Delivery.pipeline) == pipeline, col(Delivery.target) == target)
                .distinct()
                .order_by(col(Deletion.stream))
            ).all()
            return list(rows)

    def job_remote_ids(self, pipeline: str, target: str) -> list[str]:
        """Remote ids of the jobs a target of this engine started (for task sources that
        follow them), oldest first."""
        with Session(self.engine) as s:
            rows = s.exec(
                select(col(Job.remote_id))
                .where(
                    col(Job.pipeline) == pipeline,
                    col(Job.target) == target,
                    col(Job.remote_id).is_not(None),
                    col(Job.remote_id) != "",
                )
                .order_by(col(Job.id))
            ).all()
            return [r for r in rows if r]

    # --- trace ----------------------------------------------------------------

    def find(self, key: str, pipeline: str | None = None) -> list[int]:
        """Deletions whose record key or origin is `key`, or whose key names it as the
        value of a record (`Customer.ExternalId=0-9`, as task sources write keys)."""
        with Session(self.engine) as s:
            query = select(col(Deletion.id)).where(
                or_(
                    col(Deletion.record_key) == key,
                    col(Deletion.origin) == key,
                    col(Deletion.record_key).endswith(f"={key}", autoescape=True),
                )
            )
            if pipeline is not None:
                query = query.where(col(Deletion.pipeline) == pipeline)
            return [i for i in s.exec(query.order_by(col(Deletion.id))).all() if i is not None]

    def root(self, deletion_id: int) -> int:
        """The first deletion of the path this one is on (where the record was first seen)."""
        with Session(self.engine) as s:
            current = deletion_id
            for _ in range(MAX_DEPTH):
                row = s.get(Deletion, current)
                link = None if row is None else (row.origin_delivery_id or row.echo_of_delivery_id)
                if link is None:
                    return current
                delivery = s.get(Delivery, link)
                if delivery is None:
                    return current
                current = delivery.deletion_id
            return current

    def tree(self, deletion_id: int) -> DeletionNode | None:
        with Session(self.engine) as s:
            return self._node(s, deletion_id, 0)

    def _node(self, s: Session, deletion_id: int, depth: int) -> DeletionNode | None:
        row = s.get(Deletion, deletion_id)
        if row is None or row.id is None:
            return None
        node = DeletionNode(
            row.id,
            row.pipeline,
            row.stream,
            row.record_key,
            row.origin,
            row.seen_at.isoformat(),
            dict(row.fields),
        )
        if depth >= MAX_DEPTH:
            return node
        deliveries = s.exec(
            select(Delivery).where(col(Delivery.deletion_id) == row.id).order_by(col(Delivery.id))
        ).all()
        for delivery in deliveries:
            assert delivery.id is not None
            job = s.get(Job, delivery.job_id) if delivery.job_id is not None else None
            child = DeliveryNode(
                delivery.id,
                delivery.pipeline,
                delivery.target,
                delivery.status,
                delivery.attempts,
                delivery.detail,
                delivery.last_error,
                delivery.effect,
                None
                if job is None
                else {
                    "id": job.id,
                    "kind": job.kind,
                    "remote_id": job.remote_id,
                    "state": job.state,
                    "phase": job.phase,
                },
                delivery.finished_at.isoformat() if delivery.finished_at else None,
            )
            child.continued = self._linked(s, Deletion.origin_delivery_id, delivery.id, depth)
            child.echoes = self._linked(s, Deletion.echo_of_delivery_id, delivery.id, depth)
            node.deliveries.append(child)
        return node

    def _linked(self, s: Session, column: Any, delivery_id: int, depth: int) -> list[DeletionNode]:
        ids: Sequence[int | None] = s.exec(
            select(col(Deletion.id)).where(col(column) == delivery_id).order_by(col(Deletion.id))
        ).all()
        nodes = [self._node(s, i, depth + 1) for i in ids if i is not None]
        return [n for n in nodes if n is not None]


__all__ = ["DeletionNode", "DeliveryNode", "Handover", "Lineage"]
