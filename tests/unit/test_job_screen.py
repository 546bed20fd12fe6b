"""Every send is screened, a job submitted later than it was created too: its batch meets
the guards of the run that submits it, in the transaction that marks it submitting.

The job runner is the one every asynchronous target (DMM, Reltio, ADT) goes through;
the fake API here keeps jobs by client id and what it was sent, on SQLite and
PostgreSQL alike."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from connectors.contract import AmbiguousError, RetriableError
from connectors.kit.jobs import JobHandle, JobSpec
from state import NewRecord, Store
from state.models import DeliveryStatus, JobPhase, utcnow
from syncengine.config.models import GuardSettings, LegalHold
from syncengine.engine.jobs import JobPolicy, run_jobs
from syncengine.engine.push import PushReport
from syncengine.engine.stop import StopToken
from tests.unit.fake_runtime import fake_runtime
from tests.unit.test_job_lifecycle import FakeApi, FakeTarget

KEYS = ["0-4", "0-5", "0-6"]
HOLD_05 = GuardSettings(legal_hold=LegalHold(key="{K}", patterns=["0-5"]))


@dataclass
class Remote(FakeApi):
    refuse_items: frozenset[int] = frozenset()
    unreachable: bool = False
    """Looking for a job fails: a lost answer stays unresolved."""


class Api(FakeTarget):
    """The fake API with a throttle that asks to be tried again at once, and jobs that
    finish as soon as they are accepted."""

    async def submit(self, job: JobSpec) -> JobHandle:
        try:
            handle = await super().submit(job)
        except AmbiguousError:
            raise
        except RetriableError as exc:
            raise RetriableError(str(exc), retry_after=0) from None
        self.api.jobs[job.client_id].done = True
        return handle

    async def find(self, job: JobSpec) -> JobHandle | None:
        if isinstance(self.api, Remote) and self.api.unreachable:
            raise RetriableError("cannot look for the job now", retry_after=0)
        return await super().find(job)


class ThrottledOnce(Api):
    async def submit(self, job: JobSpec) -> JobHandle:
        try:
            return await super().submit(job)
        finally:
            self.api.refuse = False


def journal(store: Store, keys: list[str]) -> None:
    records = [NewRecord(k, {"K": k}) for k in keys]
    store.journal("p", "s", records, cursor={}, targets=["t"], run_id=None)


def run(
    store: Store, api: Remote, tmp: Path, guard: GuardSettings | None = None, wait: float = 0
) -> PushReport:
    """One run of the job runner, with the configuration of that run (`guard`)."""
    pipe, target = fake_runtime(Api(api), guard=guard)
    policy = JobPolicy(wait=wait, artifacts_dir=tmp)
    return asyncio.run(run_jobs(store, pipe, target, 1, utcnow(), StopToken(), policy))


def status(store: Store) -> dict[str, tuple[str, str]]:
    return {
        e.record_key: (d.status, d.last_error)
        for d, e in store.deliveries(pipeline="p", target="t")
    }


def sent_keys(store: Store, api: Remote) -> list[set[str]]:
    """The keys of each batch the API received, whatever its answer."""
    key_of = {d.id: e.record_key for d, e in store.deliveries(pipeline="p", target="t")}
    return [
        {key_of[i] for i in items}
        for batches in api.submitted.values()
        for items in sorted(batches, key=sorted)
    ]


def refused_once(store: Store, api: Remote, tmp: Path) -> None:
    """Run 1: the API refuses the submission (a throttle), so the job stays created."""
    api.refuse = True
    run(store, api, tmp)
    api.refuse = False
    [job] = store.jobs(pipeline="p")
    assert job.phase == JobPhase.CREATED and job.items == 3


def test_a_job_refused_then_submitted_later_meets_the_legal_hold_added_meanwhile(
    store: Store, tmp_path: Path
) -> None:
    api = Remote()
    journal(store, KEYS)
    refused_once(store, api, tmp_path)
    report = run(store, api, tmp_path, guard=HOLD_05)
    assert sent_keys(store, api) == [set(KEYS), {"0-4", "0-6"}], "refused whole, then sent held"
    old, new = sorted(store.jobs(pipeline="p"), key=lambda j: j.id)
    assert old.phase == JobPhase.RESCREENED and f"job #{new.id}" in old.error
    assert new.client_id != old.client_id, "a rebuilt batch never shares an earlier client id"
    assert new.items == 2 and new.phase == JobPhase.FINISHED
    assert status(store)["0-4"][0] == status(store)["0-6"][0] == DeliveryStatus.DONE
    assert status(store)["0-5"] == (DeliveryStatus.DEAD, "legal hold: key '0-5' matches '0-5'")
    assert report.dead == 1


def test_a_limit_set_since_holds_the_whole_job_and_nothing_is_submitted(
    store: Store, tmp_path: Path
) -> None:
    """Every delivery of the job is held now: the job ends without a submission, and an
    operator's approval sends them, as it would deliveries held at their claim."""
    api = Remote()
    journal(store, KEYS)
    refused_once(store, api, tmp_path)
    limit = GuardSettings(max_per_run=2)
    report = run(store, api, tmp_path, guard=limit)
    assert len(sent_keys(store, api)) == 1, "nothing submitted after the refusal"
    assert report.held == 3
    assert {s for s, _ in status(store).values()} == {DeliveryStatus.HELD}
    assert "max_per_run is 2" in status(store)["0-4"][1]
    [job] = store.jobs(pipeline="p")
    assert job.phase == JobPhase.RESCREENED and "nothing was submitted" in job.error
    assert store.open_jobs("p", "t") == []

    assert store.approve_held("p", "t", 3) == 3
    run(store, api, tmp_path, guard=limit)
    assert sent_keys(store, api)[-1] == set(KEYS), "approved: sent whole"


def test_an_approval_made_before_the_submission_counts_and_the_legal_hold_still_wins(
    store: Store, tmp_path: Path
) -> None:
    api = Remote()
    journal(store, KEYS)
    run(store, api, tmp_path, guard=GuardSettings(max_per_run=1))
    assert store.approve_held("p", "t", 3) == 3
    api.refuse = True
    run(store, api, tmp_path, guard=GuardSettings(max_per_run=1))
    api.refuse = False
    both = GuardSettings(max_per_run=1, legal_hold=HOLD_05.legal_hold)
    run(store, api, tmp_path, guard=both)
    assert sent_keys(store, api)[-1] == {"0-4", "0-6"}, "approved, over the limit, not held"
    assert status(store)["0-5"][0] == DeliveryStatus.DEAD


def test_a_refused_job_retried_in_the_same_run_is_not_counted_twice(
    store: Store, tmp_path: Path
) -> None:
    """max_per_run weighs what the run claimed for sending: a job screened again at its
    second submission is weighed once, not as claimed and as due."""
    api = Remote(refuse=True)
    journal(store, KEYS)
    pipe, target = fake_runtime(ThrottledOnce(api), guard=GuardSettings(max_per_run=3))
    policy = JobPolicy(wait=60, artifacts_dir=tmp_path)
    asyncio.run(run_jobs(store, pipe, target, 1, utcnow(), StopToken(), policy))
    assert status(store)["0-4"][0] == DeliveryStatus.DONE
    assert sent_keys(store, api) == [set(KEYS)], "refused, then sent whole"


def test_a_lost_answer_is_looked_for_before_the_job_is_screened_again(
    store: Store, tmp_path: Path
) -> None:
    """A submission that may have reached the target is looked for first: found, it was
    sent, and the guards cannot undo it (it is followed and recorded as it ends); not
    found, it is screened again, and the job says it may have reached the target."""
    api = Remote(lose_answer=True, unreachable=True)
    journal(store, KEYS)
    run(store, api, tmp_path)
    api.lose_answer = api.unreachable = False
    [job] = store.jobs(pipeline="p")
    assert job.phase == JobPhase.SUBMITTING
    api.jobs[job.client_id].done = True
    run(store, api, tmp_path, guard=HOLD_05)
    [adopted] = store.jobs(pipeline="p")
    assert adopted.phase == JobPhase.FINISHED and adopted.client_id == job.client_id
    assert status(store)["0-5"][0] == DeliveryStatus.DONE, "it was sent: recorded as it ended"
    assert len(sent_keys(store, api)) == 1

    journal(store, ["1-1", "1-2", "1-5"])
    api.lose_answer = api.unreachable = True
    run(store, api, tmp_path)
    api.lose_answer = api.unreachable = False
    lost = max(store.jobs(pipeline="p"), key=lambda j: j.id)
    del api.jobs[lost.client_id]  # the target never applied it
    hold = GuardSettings(legal_hold=LegalHold(key="{K}", patterns=["*-5"]))
    run(store, api, tmp_path, guard=hold)
    after = {j.id: j for j in store.jobs(pipeline="p")}
    assert after[lost.id].phase == JobPhase.RESCREENED
    assert "may have reached the target" in after[lost.id].error
    assert sent_keys(store, api)[-1] == {"1-1", "1-2"}
