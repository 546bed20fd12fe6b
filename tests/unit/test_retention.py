"""Retention in the store, on SQLite and PostgreSQL: what a prune removes, and each kind of
row it must keep whatever the settings say (DESIGN.md, Retention)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlmodel import col

from state import NewRecord, OutcomeRecord, ReadWindow, RetryRule, Store
from state.models import Delivery, Job, Run, RunOutcome
from state.retention import Retention, RetentionPolicy, prune_notes

RULE = RetryRule(max_attempts=3, base_delay=0, max_delay=0)
T0 = datetime.now(UTC) - timedelta(hours=1)
"""Reads an hour ago; the newest (`newest_read`) ends just after the cursor last moved."""
LATER = timedelta(hours=1)


@pytest.fixture(autouse=True)
def _reads_an_hour_before_the_test() -> None:
    """T0 taken when each test starts, not when the module was imported: the cursor's
    last journal time (real now) counts as the stream's newest read, so a T0 minutes
    older than the test would put every window behind the re-read margin."""
    global T0
    T0 = datetime.now(UTC) - timedelta(hours=1)


def policy(**overrides: object) -> RetentionPolicy:
    values: dict[str, object] = {
        "keep_done": timedelta(0),
        "keep_runs": None,
        "pause": 0,
        "reread_margin": timedelta(0),
        "setting": "keep_done: 0s",
    }
    values.update(overrides)
    return RetentionPolicy(**values)  # type: ignore[arg-type]


def prune(store: Store, **overrides: object) -> int:
    """Prune an hour from now (everything finished is older than a keep_done of 0s)."""
    report = Retention(store.engine, sleep=lambda _: None).prune(
        policy(**overrides), now=datetime.now(UTC) + LATER
    )
    return report.deletions


def window(minutes: int) -> ReadWindow:
    return ReadWindow(T0 + timedelta(minutes=minutes), T0 + timedelta(minutes=minutes + 1))


def journal(store: Store, keys: list[str], *, minutes: int = 0, pipeline: str = "p") -> None:
    store.journal(
        pipeline, "S", [NewRecord(k, {}) for k in keys], cursor={}, targets=["t"],
        run_id=None, window=window(minutes),
    )  # fmt: skip


def settle(store: Store, outcomes: dict[str, str], pipeline: str = "p", target: str = "t") -> None:
    claimed = store.claim(pipeline, target, 1000, "test")
    store.record_outcomes(
        [OutcomeRecord(c.id, outcomes[c.key], reason="no") for c in claimed if c.key in outcomes],
        RULE,
    )
    store.release([c.id for c in claimed if c.key not in outcomes])


def keys(store: Store, pipeline: str = "p") -> set[str]:
    return {e.record_key for _, e in store.deliveries(pipeline=pipeline)}


def newest_read(store: Store) -> None:
    """A later read of the stream, so the earlier reads' windows lie behind it."""
    journal(store, ["later"], minutes=60)


def test_done_deliveries_go_and_every_unfinished_status_stays(store: Store) -> None:
    journal(store, ["done", "dead", "failed", "pending", "held", "in_flight", "dropped"])
    newest_read(store)
    settle(store, {"done": "done", "dead": "dead", "failed": "retry", "dropped": "dead"})
    for key, status in (("held", "held"), ("in_flight", "in_flight"), ("dropped", "dropped")):
        ids = deletion_ids(store, key)
        with store.engine.begin() as conn:
            conn.execute(
                update(Delivery).where(col(Delivery.deletion_id).in_(ids)).values(status=status)
            )
    assert prune(store) == 2
    assert keys(store) == {"dead", "failed", "pending", "held", "in_flight", "later"}


def deletion_ids(store: Store, key: str) -> list[int]:
    return [e.id for _, e in store.deliveries(pipeline="p") if e.record_key == key and e.id]


def test_nothing_goes_without_a_setting_or_before_the_cutoff(store: Store) -> None:
    journal(store, ["a"])
    newest_read(store)
    settle(store, {"a": "done"})
    assert prune(store, keep_done=timedelta(days=400)) == 0
    assert prune(store, keep_done=None) == 0
    assert prune(store) == 1


def test_a_stream_with_a_call_in_flight_keeps_its_deletions(store: Store) -> None:
    journal(store, ["a"])
    newest_read(store)
    settle(store, {"a": "done"})
    store.mark_in_flight("p", "S", {"from": "latest"}, datetime.now(UTC))
    assert prune(store) == 0, "a recovery re-read may reach back to it"
    store.journal("p", "S", [], cursor={}, targets=["t"], run_id=None, window=window(90))
    assert prune(store) == 1


def test_deletions_a_later_read_could_overlap_stay(store: Store) -> None:
    journal(store, ["old"], minutes=0)
    journal(store, ["recent"], minutes=55)
    newest_read(store)
    settle(store, {"old": "done", "recent": "done", "later": "done"})
    assert prune(store, reread_margin=timedelta(minutes=10)) == 1
    assert keys(store) == {"recent", "later"}
    journal(store, ["recent"], minutes=58)
    assert keys(store) == {"recent", "later"}, "still a duplicate: not journaled again"


def test_an_unbounded_read_is_kept_until_its_stream_is_finished(store: Store) -> None:
    store.journal("p", "task-1", [NewRecord("a", {})], cursor={"finished": False},
                  targets=["t"], run_id=None)  # fmt: skip
    settle(store, {"a": "done"})
    assert prune(store) == 0
    store.journal("p", "task-1", [], cursor={"finished": True}, targets=["t"], run_id=None)
    assert prune(store) == 1


def chain(store: Store) -> int:
    """contacts/mdm done for 0-1; returns its delivery id."""
    journal(store, ["0-1"], pipeline="contacts")
    journal(store, ["later"], minutes=60, pipeline="contacts")
    store.journal("contacts", "S", [], cursor={}, targets=[], run_id=None)
    claimed = store.claim("contacts", "t", 10, "x")
    store.record_outcomes([OutcomeRecord(c.id, "done") for c in claimed], RULE)
    handovers = store.lineage.handovers("down", "contacts", "t", "S")
    [handover] = [h for h in handovers if h.key == "0-1"]
    return handover.delivery_id


READERS = {("contacts", "t"): ["down"]}


def test_an_upstream_delivery_a_chain_has_not_taken_over_stays(store: Store) -> None:
    upstream = chain(store)
    assert prune(store, readers=READERS) == 0
    store.journal("down", "S", [NewRecord("0-1", {}, origin_delivery_id=upstream)],
                  cursor={}, targets=["erp"], run_id=None)  # fmt: skip
    assert prune(store, readers=READERS) == 0, "the hop downstream is still pending"
    assert [h.key for h in store.lineage.handovers("down", "contacts", "t", "S")] == ["later"]
    settle(store, {"0-1": "done"}, pipeline="down", target="erp")
    assert prune(store, readers=READERS) == 2, "both hops go together"
    assert [h.key for h in store.lineage.handovers("down", "contacts", "t", "S")] == ["later"]


def test_open_jobs_stay_and_finished_jobs_without_deliveries_go(store: Store) -> None:
    journal(store, ["a", "b"])
    newest_read(store)
    job = store.claim_into_job("p", "t", "kind", 1)
    assert job is not None
    [item] = job.items
    store.finish_job(job.id, "done", [OutcomeRecord(item.id, "done")], RULE)
    other = store.claim_into_job("p", "t", "kind", 1)
    assert other is not None
    report = Retention(store.engine, sleep=lambda _: None).prune(
        policy(), now=datetime.now(UTC) + LATER
    )
    assert (report.deletions, report.jobs) == (1, 1)
    with store.engine.connect() as conn:
        assert list(conn.execute(select(Job.id)).scalars()) == [other.id]  # type: ignore[call-overload]


def test_old_runs_go_but_each_pipelines_newest_and_newest_good_stay(store: Store) -> None:
    ids = [store.start_run("p") for _ in range(4)]
    for run_id, outcome in zip(ids, ["ok", "ok", "failed", "failed"], strict=True):
        store.finish_run(run_id, RunOutcome(outcome))
    running = store.start_run("p")
    report = Retention(store.engine, sleep=lambda _: None).prune(
        policy(keep_done=None, keep_runs=timedelta(0)), now=datetime.now(UTC) + LATER
    )
    assert report.runs == 2
    with store.engine.connect() as conn:
        left = set(conn.execute(select(Run.id)).scalars())  # type: ignore[call-overload]
    assert left == {ids[1], ids[3], running}


def test_sent_alert_notices_go_unsent_stay(store: Store) -> None:
    from state import Condition

    found = [Condition("k:p/t", "k", "p", "t", datetime.now(UTC), "m")]
    store.sync_conditions(found, pipelines=None, sinks=["a", "b"])
    first, second = store.notices()
    store.notice_sent(first.id or 0)
    report = Retention(store.engine, sleep=lambda _: None).prune(
        policy(), now=datetime.now(UTC) + LATER
    )
    assert report.notices == 1
    assert [n.id for n in store.notices()] == [second.id]
    assert len(store.open_conditions()) == 1, "conditions are never pruned"


def test_the_prune_log_says_what_went_and_under_which_setting(store: Store) -> None:
    journal(store, ["a", "b"])
    newest_read(store)
    settle(store, {"a": "done", "b": "done"})
    assert prune(store, setting="keep_done: 400d") == 2
    [note] = prune_notes(store.engine, ["p"])
    assert (note["deletions"], note["setting"]) == (2, "keep_done: 400d")
    assert note["first_seen_at"] is not None and note["pruned_at"] is not None
    assert prune_notes(store.engine, ["other"]) == []


def test_a_dry_run_removes_nothing(store: Store) -> None:
    journal(store, ["a"])
    newest_read(store)
    settle(store, {"a": "done"})
    report = Retention(store.engine, sleep=lambda _: None).prune(
        policy(), dry_run=True, now=datetime.now(UTC) + LATER
    )
    assert report.deletions == 1
    assert keys(store) == {"a", "later"}
    assert prune_notes(store.engine) == []


def test_a_sqlite_store_file_shrinks_after_a_prune(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        for chunk in range(20):
            journal(store, [f"{chunk}-{i}-" + "x" * 200 for i in range(500)], minutes=chunk)
        newest_read(store)
        while claimed := store.claim("p", "t", 5000, "x"):
            store.record_outcomes([OutcomeRecord(c.id, "done") for c in claimed], RULE)
        retention = Retention(store.engine, sleep=lambda _: None)
        retention._pragma("PRAGMA wal_checkpoint(TRUNCATE)")
        before = retention.size()
        report = retention.prune(policy(), now=datetime.now(UTC) + LATER)
        assert report.deletions == 10_001
        assert before is not None and report.size_after is not None
        assert report.size_after < before / 2
        with store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Delivery)).scalar_one() == 0
    finally:
        store.close()
