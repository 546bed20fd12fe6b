"""The store contract, run on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from state import NewRecord, OutcomeRecord, RetryRule, Store
from state.models import DeliveryStatus

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def journal(
    store: Store, keys: list[str], cursor: int, targets: tuple[str, ...] = ("a", "b")
) -> int:
    return store.journal(
        "p",
        "T",
        [NewRecord(k, {"K": k}) for k in keys],
        cursor={"n": cursor},
        targets=list(targets),
        run_id=None,
    ).new


def test_journal_deduplicates_and_creates_a_delivery_per_target(store: Store) -> None:
    assert journal(store, ["1", "2", "2"], 1) == 2
    assert journal(store, ["2", "3"], 2) == 1
    assert store.deletion_count("p") == 3
    counts = {c.target: c.counts for c in store.delivery_counts("p")}
    assert counts == {"a": {"pending": 3}, "b": {"pending": 3}}
    assert store.cursor("p", "T").value == {"n": 2}


def test_in_flight_marker_survives_until_an_answer_is_journaled(store: Store) -> None:
    store.mark_in_flight("p", "T", {"from": "latest"}, T0)
    state = store.cursor("p", "T")
    assert state.in_flight is not None and state.in_flight["params"] == {"from": "latest"}
    assert state.in_flight_since == T0
    store.mark_in_flight("p", "T", {"from": "2026-01-01 11:58:00"}, T0 + timedelta(minutes=1))
    assert store.cursor("p", "T").in_flight_since == T0, "the first interrupted call is kept"
    store.journal("p", "T", [], cursor={"n": 1}, targets=["a"], run_id=None, recovered={"x": 1})
    state = store.cursor("p", "T")
    assert state.in_flight is None and state.value == {"n": 1}
    assert store.cursors("p")[0].recoveries == 1


def test_claim_outcomes_retry_and_dead(store: Store) -> None:
    journal(store, ["1", "2", "3"], 1, targets=("a",))
    claimed = store.claim("p", "a", 10, "c1", now=T0)
    assert [c.key for c in claimed] == ["1", "2", "3"]
    assert store.claim("p", "a", 10, "c2", now=T0) == [], "in-flight work is not claimed twice"
    rule = RetryRule(max_attempts=2, base_delay=10, max_delay=10)
    counts = store.record_outcomes(
        [
            OutcomeRecord(claimed[0].id, "done"),
            OutcomeRecord(claimed[1].id, "retry", reason="HTTP 503", retry_after=60),
            OutcomeRecord(claimed[2].id, "dead", reason="no key"),
        ],
        rule,
        now=T0,
    )
    assert (counts.done, counts.retried, counts.dead) == (1, 1, 1)
    assert store.claim("p", "a", 10, "c3", now=T0 + timedelta(seconds=59)) == []
    again = store.claim("p", "a", 10, "c3", now=T0 + timedelta(seconds=61))
    assert [c.key for c in again] == ["2"]
    counts = store.record_outcomes([OutcomeRecord(again[0].id, "retry", "HTTP 503")], rule, now=T0)
    assert counts.dead == 1
    dead = store.deliveries(pipeline="p", status=DeliveryStatus.DEAD)
    reasons = sorted(d.last_error for d, _ in dead)
    assert reasons == ["gave up after 2 attempts: HTTP 503", "no key"]


def test_failed_in_this_run_waits_for_the_next_run(store: Store) -> None:
    journal(store, ["1"], 1, targets=("a",))
    run_started = datetime.now(UTC)
    claimed = store.claim("p", "a", 10, "c1", fresh_before=run_started)
    store.record_outcomes(
        [OutcomeRecord(claimed[0].id, "retry", "x")], RetryRule(base_delay=0, max_delay=0)
    )
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert store.claim("p", "a", 10, "c2", now=later, fresh_before=run_started) == []
    assert len(store.claim("p", "a", 10, "c3", now=later, fresh_before=later)) == 1


def test_orphans_and_release_go_back_to_pending(store: Store) -> None:
    journal(store, ["1", "2"], 1, targets=("a",))
    claimed = store.claim("p", "a", 1, "c1")
    store.release([claimed[0].id])
    claimed = store.claim("p", "a", 2, "c2")
    assert len(claimed) == 2
    assert store.release_orphans("p", "a") == 2
    assert {c.target: c.counts for c in store.delivery_counts("p")} == {"a": {"pending": 2}}


def test_pipeline_lock_excludes_other_owners_until_it_expires(store: Store) -> None:
    assert store.acquire_lock("p", "one", 60, now=T0)
    assert not store.acquire_lock("p", "two", 60, now=T0 + timedelta(seconds=30))
    assert store.acquire_lock("p", "one", 60, now=T0 + timedelta(seconds=30)), "renewal"
    assert store.acquire_lock("p", "two", 60, now=T0 + timedelta(seconds=91)), "expired lease"
    store.release_lock("p", "one")
    assert store.lock_holder("p", now=T0 + timedelta(seconds=100)) == "two"


def test_reopening_upgrades_idempotently(store: Store) -> None:
    journal(store, ["1"], 1)
    again = Store.open(store.url)
    assert again.deletion_count() == 1
    again.close()


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'sub' / 'state.db'}")
    journal(store, ["1"], 1)
    files = sorted(p.name for p in (tmp_path / "sub").iterdir())
    assert "state.db" in files and "state.db-wal" in files
    for name in files:
        mode = stat.S_IMODE((tmp_path / "sub" / name).stat().st_mode)
        assert mode & 0o077 == 0, f"{name} is readable by others: {oct(mode)}"
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    store.close()
