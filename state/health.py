"""The reads health is judged from: recent runs, last good runs, what waits for an operator.

Each is one query over every pipeline, so judging health (each /readyz probe, each
check of the conditions) costs the same few queries however many pipelines there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlalchemy import select as select_columns
from sqlmodel import Session, col, select

from state.base import StoreBase
from state.models import Delivery, DeliveryStatus, Run, RunOutcome, aware

FINISHED = (RunOutcome.OK, RunOutcome.PARTIAL, RunOutcome.FAILED)
"""Outcomes that say how a run went; an interrupted run (a shutdown, a lost lease) says
nothing about the pipeline's health, and a running one has not ended yet."""


@dataclass(frozen=True)
class Parked:
    """Deliveries of one target that wait for an operator: held by a guard, or dead."""

    pipeline: str
    target: str
    held: int = 0
    dead: int = 0
    oldest_dead: datetime | None = None
    """When the oldest dead letter still dead gave up."""
    held_reason: str = ""
    """One guard's reason for holding (they share it: a hold is all due deliveries)."""
    dead_reason: str = ""
    """One dead letter's reason, as an example."""


class HealthReads(StoreBase):
    def recent_runs(self, count: int) -> dict[str, list[Run]]:
        """Per pipeline, its last `count` finished runs (kind `run`), newest first."""
        newest = (
            func.row_number()
            .over(partition_by=col(Run.pipeline), order_by=col(Run.id).desc())
            .label("newest")
        )
        ranked = (
            select(col(Run.id), newest)
            .where(col(Run.kind) == "run", col(Run.outcome).in_(FINISHED))
            .subquery()
        )
        query = (
            select(Run)
            .join(ranked, col(Run.id) == ranked.c.id)
            .where(ranked.c.newest <= count)
            .order_by(col(Run.pipeline), col(Run.id).desc())
        )
        runs: dict[str, list[Run]] = {}
        with Session(self.engine) as s:
            for run in s.exec(query).all():
                runs.setdefault(run.pipeline, []).append(run)
        return runs

    def last_good_runs(self) -> dict[str, datetime]:
        """Per pipeline, when it last finished a run that was ok."""
        query = (
            select(col(Run.pipeline), func.max(col(Run.finished_at)))
            .where(col(Run.outcome) == RunOutcome.OK)
            .group_by(col(Run.pipeline))
        )
        with Session(self.engine) as s:
            return {p: aware(at) for p, at in s.exec(query).all() if at is not None}

    def parked(self, pipeline: str | None = None) -> list[Parked]:
        """Per target, how many deliveries are held and dead (only targets with some)."""
        statuses: Sequence[str] = (DeliveryStatus.HELD, DeliveryStatus.DEAD)
        query = (
            select_columns(
                col(Delivery.pipeline),
                col(Delivery.target),
                col(Delivery.status),
                func.count(),
                func.min(col(Delivery.updated_at)),
                func.max(col(Delivery.last_error)),
            )
            .where(col(Delivery.status).in_(statuses))
            .group_by(col(Delivery.pipeline), col(Delivery.target), col(Delivery.status))
        )
        if pipeline is not None:
            query = query.where(col(Delivery.pipeline) == pipeline)
        none: tuple[int, datetime | None, str] = (0, None, "")
        found: dict[tuple[str, str], dict[str, tuple[int, datetime | None, str]]] = {}
        with Session(self.engine) as s:
            for pipe, target, status, count, oldest, reason in s.execute(query).all():
                found.setdefault((pipe, target), {})[status] = (
                    int(count),
                    None if oldest is None else aware(oldest),
                    reason or "",
                )
        parked = []
        for (pipe, target), by in sorted(found.items()):
            held, _, held_reason = by.get(DeliveryStatus.HELD, none)
            dead, oldest_dead, dead_reason = by.get(DeliveryStatus.DEAD, none)
            parked.append(Parked(pipe, target, held, dead, oldest_dead, held_reason, dead_reason))
        return parked
