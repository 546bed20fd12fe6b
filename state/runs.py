"""Runs: one row per run of a pipeline, for `status`, `/healthz` and the benchmark."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, delete, update
from sqlmodel import Session, col, select

from state.base import StoreBase
from state.models import PipelineLock, Run, RunOutcome, utcnow


class Runs(StoreBase):
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
        fatal: bool = False,
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
            run.fatal = fatal

    def close_abandoned_runs(self, pipeline: str) -> int:
        """Runs left `running` by a crashed process; called while holding the lock."""
        with self._tx() as s:
            result = s.execute(
                update(Run)
                .where(and_(col(Run.pipeline) == pipeline, col(Run.outcome) == RunOutcome.RUNNING))
                .values(outcome=RunOutcome.INTERRUPTED, finished_at=utcnow())
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

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
