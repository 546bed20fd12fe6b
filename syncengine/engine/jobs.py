"""Asynchronous targets: jobs recorded before they are submitted, polled from the store.

Order of a run for such a target: resume every open job first (a job that
may have been sent is looked for before anything is sent again), then fix
new batches into job rows and submit them, then poll what is due. Polling
sleeps between store reads, never inside a request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from connectors.contract import AmbiguousError, Delivery, FatalError, RemoteError, RetriableError
from connectors.kit.jobs import AsyncTarget, JobHandle, JobProgress, JobSpec, JobState, Resolving
from state import ClaimedDelivery, Lease, OutcomeRecord, Store
from state.models import JobPhase, utcnow
from state.records import JobRecord
from syncengine import failpoints
from syncengine.engine.failures import log_send_failed
from syncengine.engine.guard import ClaimGuard, count_population
from syncengine.engine.push import PushReport, complete_outcomes
from syncengine.engine.runtime import PipelineRuntime, TargetRuntime
from syncengine.engine.stop import StopToken
from syncengine.logs import get_logger

DEFAULT_POLL = 5.0
RETRY_SUBMIT_AFTER = 30.0


@dataclass(frozen=True)
class JobPolicy:
    stuck_after: float = 86400.0
    on_stuck: str = "pending"
    wait: float = 0.0
    artifacts_dir: Path = Path("data/artifacts")


def _spec(job: JobRecord) -> JobSpec:
    return JobSpec(
        job_id=job.id,
        client_id=job.client_id,
        items=[Delivery(i.id, i.stream, i.key, i.fields) for i in job.items],
        resolved=_fresh(job.resolved),
    )


def _fresh(resolved: Mapping[str, Any] | None) -> dict[str, Any]:
    """The job's look-up results still within their use-by time; an entry that cannot be
    read is left out, so its key is simply looked up again."""
    now = utcnow()
    fresh: dict[str, Any] = {}
    for key, entry in (resolved or {}).items():
        try:
            until = datetime.fromisoformat(entry["until"])
        except (TypeError, KeyError, ValueError):
            continue
        if until.tzinfo is not None and until > now and "value" in entry:
            fresh[key] = entry["value"]
    return fresh


def _handle(job: JobRecord) -> JobHandle:
    stored = job.handle or {}
    state = JobState(job.state) if job.state in JobState._value2member_map_ else JobState.QUEUED
    return JobHandle(remote_id=job.remote_id or "", state=state, detail=stored.get("detail", {}))


def _cancelled(record: OutcomeRecord) -> OutcomeRecord:
    """An operator stopped the job: what it did not delete is not sent again on its own
    (that would undo the cancel); it waits as dead, with the reason, for `dlq retry`."""
    if record.kind != "retry":
        return record
    return OutcomeRecord(
        record.delivery_id,
        "dead",
        reason=f"job cancelled by an operator before this was deleted ({record.reason})",
    )


def _later(seconds: float | None, default: float = DEFAULT_POLL) -> datetime:
    return utcnow() + timedelta(seconds=seconds if seconds is not None else default)


class JobRunner:
    def __init__(
        self,
        store: Store,
        pipe: PipelineRuntime,
        target: TargetRuntime,
        run_id: int,
        stop: StopToken,
        policy: JobPolicy,
        lease: Lease | None = None,
    ) -> None:
        """Store calls run off the event loop; under `lease`, the ones that claim,
        submit or record are fenced by it (LeaseLost once another process took over)."""
        assert isinstance(target.target, AsyncTarget)
        self.store = store
        self.lease = lease
        self.pipe = pipe
        self.target = target
        self.api: AsyncTarget = target.target
        self.stop = stop
        self.policy = policy
        self.report = PushReport()
        self.guard = ClaimGuard(target)
        self.counted: dict[int, list[ClaimedDelivery]] = {}
        """Jobs whose items this run's guard counts as claimed for sending."""
        self.failing: dict[int, tuple[int, str]] = {}
        """Jobs whose last call in this run failed (items, reason): their items did not get
        through unless a later call of the run succeeds; counted when the run ends."""
        self.log = get_logger(pipeline=pipe.name, run=run_id, target=target.name)

    async def run(self, run_started: datetime) -> PushReport:
        self.guard = ClaimGuard(self.target, await count_population(self.target))
        for job in await asyncio.to_thread(self.store.open_jobs, self.pipe.name, self.target.name):
            if job.phase != JobPhase.OPEN:
                self.log.info("job_resumed", job=job.id, phase=job.phase, remote_id=job.remote_id)
            await self._drive(job, force=job.phase == JobPhase.SUBMITTING)
        try:
            await self._claim_and_submit(run_started)
            await self._poll_until_settled()
        finally:
            for items, reason in self.failing.values():
                self.report.failed(reason, items)
            self.report.dead += self.guard.protected
            self.report.held += self.guard.held
            self.guard.report(self.pipe.name, self.log)
        return self.report

    async def _claim_and_submit(self, run_started: datetime) -> None:
        """Each claim screens its batch (legal hold, mass-delete limits) in the
        transaction that fixes it as a job; its submission screens it again."""
        while not self.stop.is_set():
            new = await asyncio.to_thread(
                self.store.claim_into_job,
                self.pipe.name,
                self.target.name,
                self.api.kind,
                self.api.batch_size,
                fresh_before=run_started,
                screen=self.guard,
                lease=self.lease,
            )
            if new is None:
                break
            self.log.info("job_created", job=new.id, client_id=new.client_id, items=len(new.items))
            await self._submit(new)

    async def _poll_until_settled(self) -> None:
        deadline = time.monotonic() + self.policy.wait
        while True:
            jobs = await asyncio.to_thread(self.store.open_jobs, self.pipe.name, self.target.name)
            for job in jobs:
                if self.stop.is_set():
                    return
                await self._drive(job)
            jobs = await asyncio.to_thread(self.store.open_jobs, self.pipe.name, self.target.name)
            remaining = deadline - time.monotonic()
            if not jobs or self.stop.is_set() or remaining <= 0:
                return
            now = utcnow()
            due = [j.next_poll_at for j in jobs if j.next_poll_at is not None]
            pause = min([(d - now).total_seconds() for d in due] or [DEFAULT_POLL])
            await asyncio.sleep(max(0.05, min(pause, remaining, DEFAULT_POLL)))

    async def _drive(self, job: JobRecord, force: bool = False) -> None:
        now = utcnow()
        if (now - job.created_at).total_seconds() > self.policy.stuck_after:
            await self._stuck(job)
            return
        if not force and job.next_poll_at is not None and job.next_poll_at > now:
            return
        if job.phase == JobPhase.CREATED:
            await self._submit(job)
        elif job.phase == JobPhase.SUBMITTING:
            await self._find_or_resubmit(job)
        elif job.phase == JobPhase.OPEN:
            await self._poll(job)

    async def _stuck(self, job: JobRecord) -> None:
        to_dead = self.policy.on_stuck == "dead"
        reason = (
            f"job stuck: open for more than {self.policy.stuck_after:g}s (remote {job.remote_id})"
        )
        released = await asyncio.to_thread(
            self.store.release_job,
            job.id,
            to_dead=to_dead,
            reason=reason,
            phase=JobPhase.STUCK,
            lease=self.lease,
        )
        self.log.error(
            "job_stuck",
            job=job.id,
            remote_id=job.remote_id,
            released=released,
            items_now="dead" if to_dead else "pending",
        )

    async def _find_or_resubmit(self, job: JobRecord) -> None:
        """The request may have reached the API: adopt the job it started, if any."""
        try:
            handle = await self.api.find(_spec(job))
        except RetriableError as exc:
            self._failed(job, str(exc))
            await asyncio.to_thread(
                self.store.record_poll, job.id, job.state, _later(exc.retry_after)
            )
            return
        if handle is not None:
            self.log.warning("job_adopted", job=job.id, remote_id=handle.remote_id)
            await self._record_submitted(job, handle)
            return
        self.log.info("job_not_found_resubmitting", job=job.id, client_id=job.client_id)
        await self._submit(job)

    async def _record_submitted(self, job: JobRecord, handle: JobHandle) -> None:
        self.failing.pop(job.id, None)
        await asyncio.to_thread(
            self.store.record_submitted,
            job.id,
            handle.remote_id,
            handle.state.value,
            {"detail": dict(handle.detail)},
            next_poll_at=utcnow(),
            lease=self.lease,
        )

    async def _submit(self, job: JobRecord) -> None:
        # Look-ups first, while the job is still created (reads only: a key the screen
        # then leaves out cost a look-up, never a delete); then the screen, in the
        # transaction that marks the job submitting.
        resolved = await self._resolve(job)
        if resolved is None:
            return
        job_or_none = await self._screen(resolved)
        if job_or_none is None:
            return
        job = job_or_none
        failpoints.hit("before_submit")
        try:
            handle = await self.api.submit(_spec(job))
        except FatalError:
            await self._rejected(job)
            raise
        except AmbiguousError as exc:
            self.log.warning("job_submit_answer_lost", job=job.id, error=str(exc))
            self._failed(job, str(exc))
            return
        except RetriableError as exc:
            self._failed(job, str(exc))
            await asyncio.to_thread(
                self.store.record_not_submitted,
                job.id,
                str(exc),
                _later(exc.retry_after, RETRY_SUBMIT_AFTER),
                lease=self.lease,
            )
            self.log.warning("job_submit_refused_retry_later", job=job.id, error=str(exc))
            return
        except RemoteError as exc:
            await self._finish(
                job, JobProgress(JobState.FAILED, message=str(exc)), retry_all=str(exc)
            )
            return
        failpoints.hit("after_submit")
        await self._record_submitted(job, handle)
        self.log.info(
            "job_submitted", job=job.id, remote_id=handle.remote_id, state=handle.state.value
        )
        if handle.state.terminal:
            refreshed = await asyncio.to_thread(self.store.job, job.id)
            if refreshed is not None:
                await self._poll(refreshed)

    async def _screen(self, job: JobRecord) -> JobRecord | None:
        """Every send is screened, a job sent later than it was created too: the guards
        of this run (legal hold, limits, approvals) are asked again in the transaction
        that marks the job submitting, and what they no longer allow is left out."""
        counted = self.counted.pop(job.id, None)
        if counted is not None:  # weighed again below, as due: not twice
            self.guard.returned(counted)
        screened = await asyncio.to_thread(
            self.store.mark_submitting, job.id, screen=self.guard, lease=self.lease
        )
        if screened is None or screened.id != job.id:
            self.log.warning(
                "job_rescreened",
                job=job.id,
                items=len(job.items),
                allowed=0 if screened is None else len(screened.items),
                rebuilt_as=None if screened is None else screened.id,
            )
        if screened is not None:
            self.guard.claimed(screened.items)
            self.counted[screened.id] = screened.items
        return screened

    async def _rejected(self, job: JobRecord) -> None:
        """Credentials or configuration refused before anything was sent: the job goes
        back to created, for the run after the operator fixed them."""
        await asyncio.to_thread(
            self.store.record_not_submitted,
            job.id,
            "credentials or configuration rejected",
            utcnow(),
            lease=self.lease,
        )

    async def _resolve(self, job: JobRecord) -> JobRecord | None:
        """The target's look-ups (reads only, see `Resolving`), each stored with the job as
        it completes, so neither a failed key nor a crash makes the others run again.

        Passes repeat while they make progress (a failed key is tried again alone); a
        pass that resolves nothing new, or an API asking for a wait, leaves the job
        created until later. The job, with its look-ups, once all could be made; None
        when it must wait.
        """
        if not isinstance(self.api, Resolving):
            return job
        api: Resolving = self.api
        lock = asyncio.Lock()
        waiting: dict[str, Any] = {}

        async def keep(key: str, value: Any) -> None:
            until = utcnow() + timedelta(seconds=api.resolved_for)
            waiting[key] = {"until": until.isoformat(), "value": value}
            async with lock:
                if not waiting:
                    return  # an earlier writer stored this one with its own
                batch = dict(waiting)
                waiting.clear()
                await asyncio.to_thread(self.store.record_resolved, job.id, batch, lease=self.lease)

        while True:
            known = len(_fresh(job.resolved))
            try:
                await api.resolve(_spec(job), keep)
            except FatalError:
                await self._rejected(job)
                raise
            except RetriableError as exc:
                refreshed = await asyncio.to_thread(self.store.job, job.id)
                assert refreshed is not None
                job = refreshed
                progress = len(_fresh(job.resolved)) > known
                if progress and exc.retry_after is None and not self.stop.is_set():
                    continue
                await asyncio.to_thread(
                    self.store.record_not_submitted,
                    job.id,
                    str(exc),
                    _later(exc.retry_after, RETRY_SUBMIT_AFTER),
                    lease=self.lease,
                )
                self._failed(job, str(exc))
                self.log.warning(
                    "job_lookups_retry_later",
                    job=job.id,
                    resolved=len(_fresh(job.resolved)),
                    items=len(job.items),
                    error=str(exc),
                )
                return None
            except RemoteError:
                pass  # left for submit, which answers each key the API refused
            refreshed = await asyncio.to_thread(self.store.job, job.id)
            assert refreshed is not None
            return refreshed

    async def _poll(self, job: JobRecord) -> None:
        try:
            progress = await self.api.poll(_spec(job), _handle(job))
        except RetriableError as exc:
            self._failed(job, str(exc))
            await asyncio.to_thread(
                self.store.record_poll, job.id, job.state, _later(exc.retry_after)
            )
            return
        except RemoteError as exc:
            self.log.warning("job_poll_error", job=job.id, error=str(exc))
            self._failed(job, str(exc))
            await asyncio.to_thread(
                self.store.record_poll, job.id, job.state, _later(None, RETRY_SUBMIT_AFTER)
            )
            return
        failpoints.hit("after_poll")
        self.failing.pop(job.id, None)
        if not progress.state.terminal:
            await asyncio.to_thread(
                self.store.record_poll,
                job.id,
                progress.state.value,
                _later(progress.poll_after),
                dict(progress.detail),
            )
            return
        await self._finish(job, progress)

    async def _finish(self, job: JobRecord, progress: JobProgress, retry_all: str = "") -> None:
        detail: dict[str, Any] = dict(progress.detail)
        if progress.artifacts:
            detail["artifacts"] = self._save_artifacts(job, progress.artifacts)
        spec = _spec(job)
        if retry_all:
            records = [OutcomeRecord(d.delivery_id, "retry", reason=retry_all) for d in spec.items]
        else:
            records = complete_outcomes(list(spec.items), list(progress.outcomes))
        phase = JobPhase.FINISHED
        if job.cancel_requested:
            records = [_cancelled(r) for r in records]
            phase = JobPhase.CANCELLED
        self.failing.pop(job.id, None)
        retries = self.report.tally(records)
        if retries:
            self._log_failed(job, retries[0].reason, len(retries))
        counts = await asyncio.to_thread(
            self.store.finish_job,
            job.id,
            progress.state.value,
            records,
            self.target.rule,
            detail=detail,
            error=progress.message or retry_all,
            phase=phase,
            lease=self.lease,
        )
        self.report.batches += 1
        self.report.job_ended(f"#{job.id} {job.remote_id or '(none)'} {progress.state.value}")
        self.report.done += counts.done
        self.report.retried += counts.retried
        self.report.dead += counts.dead
        self.report.lag.add(counts.lag)
        self.log.info(
            "job_finished",
            job=job.id,
            remote_id=job.remote_id,
            state=progress.state.value,
            done=counts.done,
            retried=counts.retried,
            dead=counts.dead,
        )

    def _failed(self, job: JobRecord, reason: str) -> None:
        """A call about `job` failed: none of its items got through, unless a later call
        of this run gets them there."""
        self.failing[job.id] = (len(job.items), reason)
        self._log_failed(job, reason, len(job.items))

    def _log_failed(self, job: JobRecord, reason: str, deliveries: int) -> None:
        log_send_failed(
            self.log,
            self.pipe.name,
            self.target.name,
            reason=reason,
            deliveries=deliveries,
            request={"job": job.id, "client_id": job.client_id, "batch_size": len(job.items)},
        )

    def _save_artifacts(self, job: JobRecord, artifacts: Mapping[str, bytes]) -> list[str]:
        folder = self.policy.artifacts_dir / f"job-{job.id}"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        saved = []
        for name, content in artifacts.items():
            path = folder / Path(name).name
            path.write_bytes(content)
            path.chmod(0o600)
            saved.append(str(path))
        return saved


async def run_jobs(
    store: Store,
    pipe: PipelineRuntime,
    target: TargetRuntime,
    run_id: int,
    run_started: datetime,
    stop: StopToken,
    policy: JobPolicy,
    *,
    lease: Lease | None = None,
) -> PushReport:
    return await JobRunner(store, pipe, target, run_id, stop, policy, lease).run(run_started)
