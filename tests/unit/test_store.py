"""The store contract, run on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import logging
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from state import (
    MALFORMED,
    LeaseLost,
    NewRecord,
    OutcomeRecord,
    ReadWindow,
    RetryRule,
    Store,
    StoreError,
)
from state.models import DeliveryStatus, RunOutcome

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


def read(store: Store, keys: list[str], start: int | None, end: int | None) -> tuple[int, int]:
    """Journal `keys` from a read over [T0 + start min, T0 + end min); (new, duplicates)."""
    window = ReadWindow(
        None if start is None else T0 + timedelta(minutes=start),
        None if end is None else T0 + timedelta(minutes=end),
    )
    result = store.journal(
        "p", "T", [NewRecord(k, {"K": k}) for k in keys], cursor={}, targets=["a"],
        run_id=None, window=window,
    )  # fmt: skip
    return result.new, result.duplicates


def test_a_key_deleted_again_is_new_unless_the_reads_overlap(store: Store) -> None:
    """Deleted, restored, deleted again: the second `latest` read cannot overlap the
    first, so it is a new deletion; a re-read over both windows only duplicates."""
    assert read(store, ["1", "2"], None, 10) == (2, 0), "the first latest call: unbounded"
    assert read(store, ["1"], 10, 20) == (1, 0), "the next latest call: 1 deleted again"
    # the call at 25 min loses its answer; the recovery reads from 20 min minus 1
    assert read(store, ["1", "3"], 19, 30) == (1, 1), "1 again (the overlap), 3 saved"
    assert read(store, ["3"], 20, 40) == (0, 1), "back to latest, from the call at 20 min"
    assert read(store, ["1"], 40, 50) == (1, 0), "deleted a third time"
    rows = store.deliveries(pipeline="p")
    assert [e.record_key for _, e in rows] == ["1", "2", "1", "3", "1"]
    assert rows[2][1].window_start == T0 + timedelta(minutes=10)
    assert rows[2][1].window_end == T0 + timedelta(minutes=20)


def test_a_read_with_no_window_overlaps_every_other(store: Store) -> None:
    """A task or chain source reads a fixed set: its re-reads are always duplicates."""
    assert read(store, ["1"], None, None) == (1, 0)
    assert read(store, ["1"], 100, 200) == (0, 1)
    assert read(store, ["1"], None, None) == (0, 1)
    assert store.known_keys("p", "T", [NewRecord("1", {})], ReadWindow(T0, T0)) == {"1"}


def test_within_one_answer_a_key_is_one_deletion(store: Store) -> None:
    assert read(store, ["1", "1", "2"], 0, 10) == (2, 1)
    assert store.deletion_count("p") == 2


def test_plan_counts_as_journaled_what_a_journal_would_call_duplicate(store: Store) -> None:
    read(store, ["1"], 0, 10)
    records = [NewRecord("1", {}), NewRecord("2", {})]
    assert store.known_keys("p", "T", records, ReadWindow(T0 + timedelta(minutes=5))) == {"1"}
    assert store.known_keys("p", "T", records, ReadWindow(T0 + timedelta(minutes=10))) == set()


def test_a_malformed_record_is_a_dead_letter_to_each_target_and_never_retried(
    store: Store,
) -> None:
    window = ReadWindow(T0, T0 + timedelta(minutes=10))
    bad = NewRecord("malformed:1f", {"SYKEY": "ghost"}, rejected="a record without RECORD_ID")
    result = store.journal(
        "p", "T", [NewRecord("1", {}), bad], cursor={"n": 1}, targets=["a", "b"], run_id=None,
        window=window,
    )  # fmt: skip
    assert (result.new, result.rejected, result.duplicates) == (1, 1, 0)
    assert store.cursor("p", "T").value == {"n": 1}
    dead = store.dead_letters(pipeline="p", error="malformed")
    assert sorted(d.target for d, _ in dead) == ["a", "b"]
    assert all(d.last_error.startswith(f"{MALFORMED}: a record without RECORD_ID") for d, _ in dead)
    assert {e.record_key for _, e in dead} == {"malformed:1f"}
    assert dead[0][1].fields == {"SYKEY": "ghost"}
    again = store.journal(
        "p", "T", [bad], cursor={"n": 2}, targets=["a", "b"], run_id=None, window=window
    )
    assert (again.rejected, again.duplicates) == (0, 1), "a re-read does not repeat it"
    assert store.deletion_count("p") == 1 and store.malformed_counts("p") == {"T": 1}
    ids = [d.id or 0 for d, _ in dead]
    assert store.malformed_of(ids) == set(ids)
    assert store.retry_dead(ids) == 0
    assert len(store.dead_letters(pipeline="p")) == 2
    assert store.drop_dead(ids) == 2, "acknowledged like any dead letter"


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


def test_outcomes_for_deliveries_the_store_does_not_hold_are_not_counted(store: Store) -> None:
    journal(store, ["1", "2", "3"], 1, targets=("a",))
    claimed = store.claim("p", "a", 10, "c1", now=T0)
    unknown = max(c.id for c in claimed) + 1000
    counts = store.record_outcomes(
        [
            OutcomeRecord(claimed[0].id, "done"),
            OutcomeRecord(unknown, "done"),
            OutcomeRecord(claimed[1].id, "retry", reason="HTTP 503"),
            OutcomeRecord(unknown + 1, "retry", reason="HTTP 503"),
            OutcomeRecord(claimed[2].id, "dead", reason="no key"),
            OutcomeRecord(unknown + 2, "dead", reason="no key"),
        ],
        RetryRule(),
        now=T0,
    )
    assert (counts.done, counts.retried, counts.dead) == (1, 1, 1)
    counts = {c.target: c.counts for c in store.delivery_counts("p")}
    assert counts == {"a": {"done": 1, "failed": 1, "dead": 1}}


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


def test_the_epoch_moves_on_when_the_lease_changes_hands_only(store: Store) -> None:
    first = store.acquire_lock("p", "one", 60, now=T0)
    assert first is not None and first.epoch == 1
    renewed = store.acquire_lock("p", "one", 60, now=T0 + timedelta(seconds=30))
    assert renewed == first, "renewal by the same owner keeps the epoch"
    taken = store.acquire_lock("p", "two", 60, now=T0 + timedelta(seconds=91))
    assert taken is not None and taken.epoch == 2, "taking over an expired lease"
    assert not store.renew_lease(first, 60), "the old holder cannot renew"
    store.release_lock("p", "two")
    again = store.acquire_lock("p", "one", 60)
    assert again is not None and again.epoch == 3, "a released lease never goes back"
    assert store.renew_lease(again, 60)


def test_an_expired_lease_nobody_took_still_fences_for_its_holder(store: Store) -> None:
    lease = store.acquire_lock("p", "one", 1, now=T0)
    assert lease is not None
    journal(store, ["1"], 1, targets=("a",))
    claimed = store.claim("p", "a", 10, "c1", lease=lease)
    assert len(claimed) == 1
    counts = store.record_outcomes([OutcomeRecord(claimed[0].id, "done")], RetryRule(), lease=lease)
    assert counts.done == 1


def test_a_holder_that_lost_its_lease_claims_and_records_nothing(store: Store) -> None:
    stale = store.acquire_lock("p", "one", 1, now=T0)
    assert stale is not None
    journal(store, ["1", "2"], 1, targets=("a",))
    claimed = store.claim("p", "a", 1, "c1", lease=stale)
    assert [c for c in claimed] and store.deliveries(pipeline="p")[0][0].claim_epoch == 1
    fresh = store.acquire_lock("p", "two", 60, now=T0 + timedelta(seconds=2))
    assert fresh is not None and fresh.epoch == 2

    with pytest.raises(LeaseLost):
        store.record_outcomes([OutcomeRecord(claimed[0].id, "done")], RetryRule(), lease=stale)
    with pytest.raises(LeaseLost):
        store.claim("p", "a", 10, "c2", lease=stale)
    with pytest.raises(LeaseLost):
        store.release([claimed[0].id], lease=stale)
    with pytest.raises(LeaseLost):
        store.journal("p", "T", [NewRecord("3", {})], cursor={"n": 9}, targets=["a"],
                      run_id=None, lease=stale)  # fmt: skip
    with pytest.raises(LeaseLost):
        store.claim_into_job("p", "a", "k", 10, lease=stale)
    statuses = {d.id: d.status for d, _ in store.deliveries(pipeline="p")}
    assert statuses == {claimed[0].id: DeliveryStatus.IN_FLIGHT, claimed[0].id + 1: "pending"}
    assert store.deletion_count("p") == 2 and store.cursor("p", "T").value == {"n": 1}

    assert store.release_orphans("p", "a", lease=fresh) == 1
    again = store.claim("p", "a", 10, "c3", lease=fresh)
    assert len(again) == 2
    done = store.record_outcomes(
        [OutcomeRecord(c.id, "done") for c in again], RetryRule(), lease=fresh
    )
    assert done.done == 2
    assert {d.claim_epoch for d, _ in store.deliveries(pipeline="p")} == {2}


def test_a_stale_job_holder_submits_and_finishes_nothing(store: Store) -> None:
    stale = store.acquire_lock("p", "one", 1, now=T0)
    assert stale is not None
    journal(store, ["1"], 1, targets=("a",))
    job = store.claim_into_job("p", "a", "k", 10, lease=stale)
    assert job is not None
    fresh = store.acquire_lock("p", "two", 60, now=T0 + timedelta(seconds=2))
    assert fresh is not None
    with pytest.raises(LeaseLost):
        store.mark_submitting(job.id, lease=stale)
    with pytest.raises(LeaseLost):
        store.record_submitted(job.id, "r1", "queued", {}, T0, lease=stale)
    with pytest.raises(LeaseLost):
        store.finish_job(job.id, "done", [OutcomeRecord(job.items[0].id, "done")], RetryRule(),
                         lease=stale)  # fmt: skip
    after = store.job(job.id)
    assert after is not None and after.phase == "created" and after.submit_attempts == 0
    store.mark_submitting(job.id, lease=fresh)


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


def test_error_text_is_scrubbed_on_its_way_in(store: Store) -> None:
    """Every error column, written by the ORM or by a bulk update, passes the scrub the
    engine gives; record keys and fields, which a delete depends on, are never touched."""
    echoed = "key s3cr3t-key rejected"
    scrubbed = Store.open(store.url, scrub=lambda text: text.replace("s3cr3t-key", "***"))
    scrubbed.journal(
        "p", "T", [NewRecord("s3cr3t-key", {"K": "s3cr3t-key"})], cursor={}, targets=["a"],
        run_id=None,
    )  # fmt: skip
    scrubbed.record_stream_error("p", "T", echoed)
    run = scrubbed.start_run("p")
    scrubbed.finish_run(run, RunOutcome.FAILED, error=echoed)
    claimed = scrubbed.claim("p", "a", 10, "run-1")
    scrubbed.release([c.id for c in claimed], reason=echoed)
    assert len(claimed) == 1
    with scrubbed.engine.connect() as conn:
        texts = [
            conn.exec_driver_sql("SELECT last_error FROM cursor").scalar(),
            conn.exec_driver_sql("SELECT error FROM run").scalar(),
            conn.exec_driver_sql("SELECT last_error FROM delivery").scalar(),
        ]
        key = conn.exec_driver_sql("SELECT record_key FROM deletion").scalar()
    assert texts == ["key *** rejected"] * 3
    assert key == "s3cr3t-key"
    scrubbed.close()


def test_existing_sqlite_files_open_to_others_are_made_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store restored or copied with a loose umask, and its -wal and -shm, become 0600."""
    path = tmp_path / "state.db"
    Store.open(f"sqlite:///{path}").close()
    modes = {"state.db": 0o644, "state.db-wal": 0o664, "state.db-shm": 0o666}
    for name, mode in modes.items():
        (tmp_path / name).touch()
        (tmp_path / name).chmod(mode)
    with caplog.at_level(logging.WARNING):
        store = Store.open(f"sqlite:///{path}")
    for name in modes:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    journal(store, ["1"], 1)
    store.close()
    assert "made them private (0600)" in caplog.text
    assert f"{path} (644)" in caplog.text and f"{path}-shm (666)" in caplog.text


def test_a_store_file_this_user_cannot_make_private_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    Store.open(f"sqlite:///{path}").close()
    path.chmod(0o640)

    def not_the_owner(self: Path, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(Path, "chmod", not_the_owner)
    with pytest.raises(StoreError) as info:
        Store.open(f"sqlite:///{path}")
    assert str(info.value) == (
        f"state.url: {path} can be read or written by other users (mode 640) and this user "
        f"cannot change that; run `chmod 600 {path}` as its owner, or point state.url at a "
        "file of your own"
    )


def test_a_store_written_by_a_newer_syncengine_is_refused(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099_future'")
    with pytest.raises(
        StoreError,
        match=r"written by a newer syncengine \(schema revision "
        r"0099_future; this version knows up to \w+\); upgrade syncengine$",
    ):
        Store.open(store.url)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == (
            "0099_future"
        ), "nothing written"


def test_on_postgresql_a_long_fenced_write_neither_delays_renewal_nor_lets_a_takeover_in(
    pg_url: str,
) -> None:
    """While the holder is inside a fenced transaction (a long journal), its renewal goes
    through at once, and a takeover is refused (not left hanging) until it commits."""
    from sqlmodel import Session

    from state.lease import check_lease

    store = Store.open(pg_url)
    try:
        lease = store.acquire_lock("p", "one", 1, now=T0)
        assert lease is not None
        with Session(store.engine) as s, s.begin():
            check_lease(s, lease, lock_row=True)
            assert store.renew_lease(lease, 1, now=T0), "renewal beside the holder's write"
            assert store.acquire_lock("p", "two", 60, now=T0 + timedelta(minutes=5)) is None
        taken = store.acquire_lock("p", "two", 60, now=T0 + timedelta(minutes=5))
        assert taken is not None and taken.epoch == lease.epoch + 1
    finally:
        store.close()
