"""Asynchronous jobs: a batch of deliveries fixed as one remote job, submitted once,
polled until it ends, then answered item by item."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, update
from sqlmodel import Session, col, select

from state.base import DELIVERY, StoreBase
from state.claims import claim_due, claimed_of, rescreen, with_deletions
from state.lease import Lease, check_lease
from state.models import OPEN_PHASES, Delivery, DeliveryStatus, Job, JobPhase, utcnow
from state.outcomes import apply_outcomes
from state.records import (
    CHUNK,
    ClaimedDelivery,
    JobRecord,
    OutcomeCounts,
    OutcomeRecord,
    RetryRule,
    Screen,
)


def _closed(s: Session, job_id: int, phase: JobPhase, error: str, now: datetime) -> Job:
    """The job row, ended in `phase` with `error` (nothing more to poll)."""
    job = s.get(Job, job_id)
    assert job is not None
    job.phase = phase
    job.error = error
    job.finished_at = now
    job.updated_at = now
    job.next_poll_at = None
    job.resolved = None
    return job


def _carry(s: Session, job_id: int, items: Sequence[ClaimedDelivery]) -> None:
    """Items the guards allowed, in flight again as this job's batch."""
    ids = [c.id for c in items]
    for start in range(0, len(ids), CHUNK):
        s.execute(
            update(Delivery)
            .where(col(Delivery.id).in_(ids[start : start + CHUNK]))
            .values(status=DeliveryStatus.IN_FLIGHT, job_id=job_id, claim=f"job-{job_id}")
        )


class Jobs(StoreBase):
    """The job rows and the deliveries they carry."""

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
            check_lease(s, lease, lock_row=self.locks_rows)
            claimed = claim_due(
                s.connection(), pipeline, target, limit, "job", now, fresh_before, screen, epoch
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
        query = with_deletions(
            DELIVERY.c.job_id == job.id, DELIVERY.c.status == DeliveryStatus.IN_FLIGHT
        )
        items = [claimed_of(row) for row in s.connection().execute(query)]
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
            resolved=job.resolved,
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
            check_lease(s, lease, lock_row=self.locks_rows)
            s.execute(
                update(Job).where(col(Job.id) == job_id).values(updated_at=utcnow(), **values)
            )

    def mark_submitting(
        self, job_id: int, *, screen: Screen | None = None, lease: Lease | None = None
    ) -> JobRecord | None:
        """Before the request: from now on a crash means "look before re-sending".
        Under a lost lease it raises LeaseLost, so the request is never sent.

        With `screen`, the job's batch meets the guards again in this same transaction
        (a hold added, an approval or a limit changed since it was created), so what
        is sent is what they allow now. The job to send is returned: this one when
        they allow all of it; else one rebuilt from what they allow, under a client id
        of its own (never mistaken for this one, which may have reached the target),
        this one ending as rescreened; None when they allow nothing.
        """
        now = utcnow()
        with self._tx() as s:
            check_lease(s, lease, lock_row=self.locks_rows)
            job: Job | None = s.get(Job, job_id)
            assert job is not None
            if screen is not None:
                epoch = job.claim_epoch if lease is None else lease.epoch
                job = self._rescreen(s, job, screen, now, epoch)
                if job is None:
                    return None
            job.phase = JobPhase.SUBMITTING
            job.submit_attempts += 1
            job.updated_at = now
            s.flush()
            return self._job_record(s, job)

    def _rescreen(
        self, s: Session, job: Job, screen: Screen, now: datetime, epoch: int | None
    ) -> Job | None:
        assert job.id is not None
        items = self._job_record(s, job).items
        conn = s.connection()
        allowed = rescreen(conn, job.pipeline, job.target, now, screen, items)
        if len(allowed) == len(items):
            _carry(s, job.id, allowed)
            return job
        unsent = (
            ""
            if job.phase == JobPhase.CREATED
            else (
                "; an earlier submission's answer was lost and the target could not find it, "
                "so it may have reached the target"
            )
        )
        gone = f"{len(items) - len(allowed)} of its {len(items)} deliveries"
        rebuilt: Job | None = None
        if allowed:
            rebuilt = Job(
                pipeline=job.pipeline,
                target=job.target,
                kind=job.kind,
                client_id=f"syncengine-{uuid.uuid4().hex}",
                items=len(allowed),
                claim_epoch=epoch,
                cancel_requested=job.cancel_requested,
                # The look-ups already made serve the rest of the batch as well.
                resolved=job.resolved,
                created_at=now,
                updated_at=now,
            )
            s.add(rebuilt)
            s.flush()
            assert rebuilt.id is not None
            _carry(s, rebuilt.id, allowed)
        rest = "nothing was submitted" if rebuilt is None else f"the rest is job #{rebuilt.id}"
        error = (
            f"screened again before submission: the guards no longer allow {gone} "
            f"(each dead or held with its reason); {rest}{unsent}"
        )
        _closed(s, job.id, JobPhase.RESCREENED, error, now)
        return rebuilt

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
            resolved=None,
        )

    def record_resolved(
        self, job_id: int, resolved: dict[str, Any], *, lease: Lease | None = None
    ) -> None:
        """Add look-up results to the job's, before it is submitted (nothing, under a
        lost lease)."""
        with self._tx() as s:
            check_lease(s, lease, lock_row=self.locks_rows)
            job = s.get(Job, job_id)
            assert job is not None
            job.resolved = {**(job.resolved or {}), **resolved}
            job.updated_at = utcnow()

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
            check_lease(s, lease, lock_row=self.locks_rows)
            job = _closed(s, job_id, phase, error, now)
            job.state = state
            job.polls += 1
            if detail is not None:
                job.detail = detail
            return apply_outcomes(s.connection(), outcomes, rule, now)

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
            check_lease(s, lease, lock_row=self.locks_rows)
            _closed(s, job_id, phase, reason, now)
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
