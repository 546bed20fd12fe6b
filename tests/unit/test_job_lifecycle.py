"""A Hypothesis state machine over the job lifecycle, with a stateful fake API.

Steps: new deletions, runs in which the API loses answers, refuses
submissions, answers "already exists", fails some items, completes jobs,
and restarts (a new runner over the same store). Checked after every step:
the items behind a client id never change; an item is done only when the
API really deleted it; no delivery is lost.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from rich.console import Console

from connectors.contract import EXACT_KEYS, AmbiguousError, Outcome, RetriableError
from connectors.kit.jobs import CannotCancel, JobHandle, JobProgress, JobSpec, JobState
from state import NewRecord, RetryRule, RunOutcome, Store
from state.models import DeliveryStatus, utcnow
from syncengine.engine.jobs import JobPolicy, run_jobs
from syncengine.engine.pipeline import RunReport
from syncengine.engine.push import JOB_LINES
from syncengine.engine.stop import StopToken
from syncengine.status import render_summary
from tests.unit.fake_runtime import fake_runtime


@dataclass
class RemoteJob:
    remote_id: str
    items: frozenset[int]
    done: bool = False
    refused: frozenset[int] = frozenset()


@dataclass
class FakeApi:
    """The remote system: jobs by client id, and what it really deleted."""

    jobs: dict[str, RemoteJob] = field(default_factory=dict)
    submitted: dict[str, set[frozenset[int]]] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    lose_answer: bool = False
    refuse: bool = False
    refuse_items: frozenset[int] = frozenset(range(0, 100_000, 3))
    """The API refuses to delete every third item: partial failures in every job."""
    ids: itertools.count[int] = field(default_factory=itertools.count)


class FakeTarget:
    kind = "fake_job"
    batch_size = 3
    key_match = EXACT_KEYS

    def __init__(self, api: FakeApi) -> None:
        self.api = api

    async def submit(self, job: JobSpec) -> JobHandle:
        items = frozenset(d.delivery_id for d in job.items)
        self.api.submitted.setdefault(job.client_id, set()).add(items)
        if self.api.refuse:
            raise RetriableError("busy: try later")
        existing = self.api.jobs.get(job.client_id)
        if existing is None:
            existing = RemoteJob(
                f"r{next(self.api.ids)}", items, refused=self.api.refuse_items & items
            )
            self.api.jobs[job.client_id] = existing
        if self.api.lose_answer:
            raise AmbiguousError("answer lost")
        return JobHandle(
            existing.remote_id, JobState.SUCCEEDED if existing.done else JobState.RUNNING
        )

    async def find(self, job: JobSpec) -> JobHandle | None:
        existing = self.api.jobs.get(job.client_id)
        return None if existing is None else JobHandle(existing.remote_id, JobState.RUNNING)

    async def poll(self, job: JobSpec, handle: JobHandle) -> JobProgress:
        remote = next(j for j in self.api.jobs.values() if j.remote_id == handle.remote_id)
        if not remote.done:
            return JobProgress(JobState.RUNNING, poll_after=0)
        outcomes: Sequence[Outcome] = [
            Outcome.retry(d.delivery_id, "refused by the API")
            if d.delivery_id in remote.refused
            else Outcome.done(d.delivery_id)
            for d in job.items
        ]
        return JobProgress(JobState.SUCCEEDED, outcomes=outcomes)

    async def cancel(self, handle: JobHandle) -> None:
        raise CannotCancel("no cancel")

    async def aclose(self) -> None:
        return None


class JobLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.store = Store.open(f"sqlite:///{Path(self.tmp.name) / 's.db'}")
        self.api = FakeApi()
        self.keys = itertools.count()
        self.journaled = 0
        self.pipe, self.target = fake_runtime(
            FakeTarget(self.api), RetryRule(max_attempts=4, base_delay=0, max_delay=0)
        )

    def teardown(self) -> None:
        self.store.close()
        self.tmp.cleanup()

    def _run(self) -> None:
        """One run by a fresh runner: a restart loses nothing but memory."""
        self.target.target = FakeTarget(self.api)
        policy = JobPolicy(wait=0, artifacts_dir=Path(self.tmp.name))
        asyncio.run(run_jobs(self.store, self.pipe, self.target, 1, utcnow(), StopToken(), policy))

    @rule(count=st.integers(1, 5))
    def new_deletions(self, count: int) -> None:
        records = [NewRecord(str(next(self.keys)), {}) for _ in range(count)]
        self.store.journal("p", "s", records, cursor={}, targets=["t"], run_id=None)
        self.journaled += count

    @rule(lose=st.booleans(), refuse=st.booleans())
    def run(self, lose: bool, refuse: bool) -> None:
        self.api.lose_answer, self.api.refuse = lose, refuse
        self._run()
        self.api.lose_answer = self.api.refuse = False

    @rule(data=st.data())
    def api_finishes_a_job(self, data: st.DataObject) -> None:
        running = [j for j in self.api.jobs.values() if not j.done]
        if running:
            job = data.draw(st.sampled_from(running))
            job.done = True
            self.api.deleted |= job.items - job.refused

    @invariant()
    def items_behind_a_client_id_never_change(self) -> None:
        for client_id, sets in self.api.submitted.items():
            assert len(sets) == 1, f"{client_id} was sent with different batches: {sets}"

    @invariant()
    def done_only_when_really_deleted(self) -> None:
        for delivery, _ in self.store.deliveries(pipeline="p", status=DeliveryStatus.DONE):
            assert delivery.id in self.api.deleted

    @invariant()
    def no_delivery_lost(self) -> None:
        rows = self.store.deliveries(pipeline="p", limit=100_000)
        assert len(rows) == self.journaled
        for delivery, _ in rows:
            if delivery.status == DeliveryStatus.DEAD:
                assert delivery.last_error
            if delivery.status == DeliveryStatus.IN_FLIGHT:
                assert delivery.job_id is not None, "in flight only inside a job"

    @invariant()
    def one_remote_job_per_client_id(self) -> None:
        remote_ids = [j.remote_id for j in self.api.jobs.values()]
        assert len(remote_ids) == len(set(remote_ids))


JobLifecycle.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJobLifecycle = JobLifecycle.TestCase


def test_drains_to_done_or_dead_once_the_api_behaves() -> None:
    machine = JobLifecycle()
    try:
        machine.new_deletions(5)
        machine.run(lose=True, refuse=False)
        for _ in range(12):
            for job in machine.api.jobs.values():
                if not job.done:
                    job.done = True
                    machine.api.deleted |= job.items - job.refused
            machine._run()
        statuses = {d.status for d, _ in machine.store.deliveries(pipeline="p")}
        assert statuses <= {DeliveryStatus.DONE, DeliveryStatus.DEAD}
        machine.items_behind_a_client_id_never_change()
        machine.done_only_when_really_deleted()
    finally:
        machine.teardown()


def test_a_cancelled_job_does_not_send_again_what_it_did_not_delete() -> None:
    machine = JobLifecycle()
    try:
        machine.new_deletions(3)
        machine._run()
        [job] = machine.store.jobs(pipeline="p")
        assert job.id is not None and job.remote_id
        machine.store.request_cancel(job.id)
        remote = next(iter(machine.api.jobs.values()))
        remote.done = True
        machine.api.deleted |= remote.items - remote.refused
        machine._run()
        [job] = machine.store.jobs(pipeline="p")
        assert job.phase == "cancelled"
        rows = machine.store.deliveries(pipeline="p")
        done = {d.id for d, _ in rows if d.status == DeliveryStatus.DONE}
        dead = {d.id: d.last_error for d, _ in rows if d.status == DeliveryStatus.DEAD}
        assert done == set(remote.items - remote.refused)
        assert set(dead) == set(remote.refused) and dead
        assert all("cancelled by an operator" in reason for reason in dead.values())
        assert len(machine.api.jobs) == 1, "nothing was submitted again"
    finally:
        machine.teardown()


def test_a_run_of_many_jobs_keeps_twenty_lines_of_them_and_counts_the_rest() -> None:
    """What a run holds (and its summary prints) about the jobs it ended does not grow
    with them: a million deletions in jobs of a hundred are ten thousand jobs."""
    machine = JobLifecycle()
    try:
        machine.new_deletions(75)
        machine._run()  # 25 jobs of 3 submitted
        for job in machine.api.jobs.values():
            job.done = True
        policy = JobPolicy(wait=0, artifacts_dir=Path(machine.tmp.name))
        report = asyncio.run(
            run_jobs(machine.store, machine.pipe, machine.target, 2, utcnow(), StopToken(), policy)
        )
        assert len(machine.api.jobs) == 25 and report.batches == 25
        assert len(report.jobs) == JOB_LINES and report.more_jobs == 25 - JOB_LINES
        assert report.jobs[0].startswith("#1 ")
        console = Console(record=True, width=2000)
        run = RunReport("p", RunOutcome.OK, run_id=2, targets={machine.target.name: report})
        render_summary([run], machine.store, console)
        printed = console.export_text()
        assert "#20 r19 succeeded; and 5 more" in printed and "#21 " not in printed
    finally:
        machine.teardown()
