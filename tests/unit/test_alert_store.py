"""The store's side of alerting: one alert per condition episode, whoever notices it,
an outbox no two processes send twice, and the queue ages health reads."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from state import Condition, NewRecord, Store
from state.models import Delivery, DeliveryStatus, utcnow

SINKS = ["slack-0", "webhook-1"]


def stalled(message: str = "stalled") -> Condition:
    return Condition(
        key="target_stalled:contacts/erp",
        kind="target_stalled",
        pipeline="contacts",
        target="erp",
        since=utcnow() - timedelta(minutes=20),
        message=message,
        command="syncengine status -p contacts",
    )


def test_a_condition_opens_once_and_resolves_once(store: Store) -> None:
    opened = store.sync_conditions([stalled()], pipelines=None, sinks=SINKS)
    assert [t.event for t in opened] == ["opened"]
    # Found again in later checks: the same episode, no new alert, the message refreshed.
    assert store.sync_conditions([stalled("still")], pipelines=None, sinks=SINKS) == []
    assert store.open_conditions()[0].message == "still"
    # Another pipeline's check does not resolve it.
    assert store.sync_conditions([], pipelines=["other"], sinks=SINKS) == []
    resolved = store.sync_conditions([], pipelines=["contacts"], sinks=SINKS)
    assert [t.event for t in resolved] == ["resolved"]
    assert store.open_conditions() == []
    notices = store.notices()
    assert [(n.event, n.sink, n.episode) for n in notices] == [
        ("opened", "slack-0", 1),
        ("opened", "webhook-1", 1),
        ("resolved", "slack-0", 1),
        ("resolved", "webhook-1", 1),
    ]
    assert notices[0].payload["command"] == "syncengine status -p contacts"
    reopened = store.sync_conditions([stalled()], pipelines=None, sinks=SINKS)
    assert [t.event for t in reopened] == ["opened"]
    assert store.notices()[-1].episode == 2


def test_two_processes_raise_one_alert(store: Store) -> None:
    other = Store.open(store.url)
    try:
        first = store.sync_conditions([stalled()], pipelines=None, sinks=SINKS)
        second = other.sync_conditions([stalled()], pipelines=None, sinks=SINKS)
        assert len(first) + len(second) == 1
        store.sync_conditions([], pipelines=None, sinks=SINKS)
        assert other.sync_conditions([], pipelines=None, sinks=SINKS) == []
        assert len(store.notices()) == 4
    finally:
        other.close()


def test_a_claimed_notice_is_not_claimed_again_until_its_claim_ends(store: Store) -> None:
    store.sync_conditions([stalled()], pipelines=None, sinks=SINKS)
    other = Store.open(store.url)
    try:
        mine = store.claim_notices(utcnow() + timedelta(minutes=1))
        assert len(mine) == 2
        assert other.claim_notices(utcnow() + timedelta(minutes=1)) == []
        store.notice_sent(mine[0].id)
        store.notice_failed(mine[1].id, "HTTP 500", utcnow() - timedelta(seconds=1))
        again = other.claim_notices(utcnow() + timedelta(minutes=1))
        assert [n.id for n in again] == [mine[1].id] and again[0].attempts == 1
        other.notice_failed(again[0].id, "HTTP 500", None)
        assert store.claim_notices(utcnow() + timedelta(minutes=1)) == []
        assert store.notices(unsent_only=True) == []
    finally:
        other.close()


def test_target_health_keeps_the_start_of_a_failing_streak(store: Store) -> None:
    store.note_target_result("contacts", "erp", got_through=False, error="unreachable")
    first = store.target_health()[0].failing_since
    store.note_target_result("contacts", "erp", got_through=False, error="timed out")
    row = store.target_health()[0]
    assert row.failing_since == first and row.failed_runs == 2 and row.last_error == "timed out"
    store.note_target_result("contacts", "erp", got_through=True)
    row = store.target_health()[0]
    assert row.failing_since is None and row.failed_runs == 0 and row.last_ok_at is not None


def test_queue_ages_give_the_oldest_waiting_and_held(store: Store) -> None:
    records = [NewRecord(k, {"K": k}) for k in ["a", "b", "c"]]
    store.journal("contacts", "s", records, cursor={}, targets=["erp"], run_id=None)
    long_ago = utcnow() - timedelta(hours=3)
    with store.engine.begin() as conn:
        conn.execute(update(Delivery).where(Delivery.id == 1).values(created_at=long_ago))  # type: ignore[arg-type]
        conn.execute(
            update(Delivery)
            .where(Delivery.id == 3)  # type: ignore[arg-type]
            .values(status=DeliveryStatus.HELD, updated_at=long_ago)
        )
    (age,) = store.queue_ages()
    assert (age.pipeline, age.target) == ("contacts", "erp")
    assert age.oldest_waiting is not None
    assert abs((age.oldest_waiting - long_ago).total_seconds()) < 1
    assert age.oldest_held is not None and abs((age.oldest_held - long_ago).total_seconds()) < 1


def test_leases_say_who_holds_what_since_when(store: Store) -> None:
    assert store.leases() == []
    store.acquire_lock("contacts", "host:1:n:b:p", 30)
    (lease,) = store.leases()
    assert lease.owner == "host:1:n:b:p" and lease.epoch == 1 and lease.acquired_at is not None
    since = lease.acquired_at
    store.acquire_lock("contacts", "host:1:n:b:p", 30)
    assert store.leases()[0].acquired_at == since
    store.release_lock("contacts", "host:1:n:b:p")
    assert store.leases() == []
