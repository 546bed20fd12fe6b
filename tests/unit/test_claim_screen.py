"""The guards are asked at each claim, in its transaction: a delivery that becomes due
after a run started (a backoff ending, `dlq retry`) is screened by the claim that takes
it, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import tracemalloc
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from state import ClaimedDelivery, GuardCounts, NewRecord, OutcomeRecord, RetryRule, Store
from state.base import DELIVERY
from state.models import DeliveryStatus

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class KeyScreen:
    """Protects the keys listed; holds when more than `limit` not approved are due."""

    protected: set[str]
    limit: int | None = None
    seen: list[GuardCounts] = field(default_factory=list)
    holds: list[tuple[int, str]] = field(default_factory=list)
    weighs_limits: bool = True

    def protect(self, delivery: ClaimedDelivery) -> str | None:
        return f"legal hold: {delivery.key}" if delivery.key in self.protected else None

    def hold(self, counts: GuardCounts) -> str | None:
        self.seen.append(counts)
        if self.limit is not None and counts.due > self.limit:
            return f"guard: {counts.due} due"
        return None

    def on_hold(self, count: int, reason: str) -> None:
        self.holds.append((count, reason))


def journal(store: Store, keys: list[str]) -> None:
    store.journal(
        "p", "T", [NewRecord(k, {"K": k}) for k in keys], cursor=None, targets=["a"], run_id=None
    )


def status(store: Store) -> dict[str, tuple[str, str]]:
    return {
        e.record_key: (d.status, d.last_error)
        for d, e in store.deliveries(pipeline="p", target="a")
    }


def test_a_backoff_ending_mid_run_is_screened_by_its_claim(store: Store) -> None:
    journal(store, ["admin", "jrossi", "mbianchi"])
    first = store.claim("p", "a", 10, "earlier-run", now=T0)
    rule = RetryRule(base_delay=60, max_delay=60)
    store.record_outcomes([OutcomeRecord(c.id, "retry", "HTTP 503") for c in first], rule, now=T0)
    screen = KeyScreen({"admin"})
    run_started = T0 + timedelta(seconds=1)
    assert store.claim("p", "a", 10, "run", now=run_started, screen=screen) == []
    later = T0 + timedelta(hours=1)  # every backoff has ended since the run began
    claimed = store.claim("p", "a", 10, "run", now=later, fresh_before=run_started, screen=screen)
    assert [c.key for c in claimed] == ["jrossi", "mbianchi"]
    assert status(store)["admin"] == (DeliveryStatus.DEAD, "legal hold: admin")


def test_a_dead_letter_retried_mid_run_is_never_claimed_for_sending(store: Store) -> None:
    journal(store, ["admin", "jrossi", "mbianchi"])
    screen = KeyScreen({"admin"})
    assert [c.key for c in store.claim("p", "a", 1, "run", screen=screen)] == ["jrossi"]
    assert status(store)["admin"][0] == DeliveryStatus.DEAD
    dead = [d.id for d, _ in store.dead_letters(pipeline="p") if d.id is not None]
    assert store.retry_dead(dead) == 1  # an operator's `dlq retry` while the run goes on
    rest = store.claim("p", "a", 1, "run", screen=screen)
    assert [c.key for c in rest] == ["mbianchi"], "the protected key was skipped, not sent"
    assert store.claim("p", "a", 1, "run", screen=screen) == []
    assert status(store)["admin"] == (DeliveryStatus.DEAD, "legal hold: admin")


def test_a_batch_is_filled_past_what_the_screen_takes_out(store: Store) -> None:
    journal(store, ["a1", "a2", "ok1", "a3", "ok2", "ok3"])
    screen = KeyScreen({"a1", "a2", "a3"})
    claimed = store.claim("p", "a", 2, "run", screen=screen)
    assert [c.key for c in claimed] == ["ok1", "ok2"]
    assert [c.key for c in store.claim("p", "a", 2, "run", screen=screen)] == ["ok3"]


def test_a_hold_holds_what_no_operator_approved_and_claims_the_approved(store: Store) -> None:
    journal(store, ["1", "2", "3"])
    screen = KeyScreen(set(), limit=2)
    assert store.claim("p", "a", 10, "run", screen=screen) == []
    assert screen.holds == [(3, "guard: 3 due")]
    assert {s for s, _ in status(store).values()} == {DeliveryStatus.HELD}
    assert store.approve_held("p", "a", 3) == 3
    journal(store, ["4", "5", "6"])  # due after the approval: weighed on their own
    claimed = store.claim("p", "a", 10, "run", screen=screen)
    assert [(c.key, c.approved) for c in claimed] == [("1", True), ("2", True), ("3", True)]
    assert status(store)["4"] == (DeliveryStatus.HELD, "guard: 3 due")


def test_an_approved_delivery_still_meets_the_legal_hold(store: Store) -> None:
    journal(store, ["admin", "2", "3"])
    store.claim("p", "a", 10, "run", screen=KeyScreen(set(), limit=1))
    assert store.approve_held("p", "a", 3) == 3
    claimed = store.claim("p", "a", 10, "run", screen=KeyScreen({"admin"}, limit=1))
    assert [c.key for c in claimed] == ["2", "3"]
    assert status(store)["admin"] == (DeliveryStatus.DEAD, "legal hold: admin")


def test_what_the_legal_hold_protects_is_not_counted_as_due(store: Store) -> None:
    journal(store, ["1", "2", "admin"])
    screen = KeyScreen({"admin"}, limit=2)
    claimed = store.claim("p", "a", 1, "run", screen=screen)
    assert [c.key for c in claimed] == ["1"] and screen.holds == []
    assert status(store)["admin"][0] == DeliveryStatus.DEAD


def test_the_counts_are_taken_in_the_claim(store: Store) -> None:
    journal(store, ["1", "2", "3", "4"])
    done = store.claim("p", "a", 1, "earlier", now=T0)
    store.record_outcomes([OutcomeRecord(done[0].id, "done")], RetryRule(), now=T0)
    store.claim("p", "a", 1, "job", now=T0)  # still in flight
    screen = KeyScreen(set())
    store.claim("p", "a", 1, "run", now=T0 + timedelta(minutes=30), screen=screen)
    assert screen.seen[0] == GuardCounts(due=2, done_last_hour=1, in_flight=1)
    store.claim("p", "a", 1, "run", now=T0 + timedelta(minutes=61), screen=screen)
    assert screen.seen[1] == GuardCounts(due=1, done_last_hour=0, in_flight=2)


def test_a_job_batch_is_screened_in_the_transaction_that_fixes_it(store: Store) -> None:
    journal(store, ["admin", "jrossi", "mbianchi"])
    screen = KeyScreen({"admin"})
    job = store.claim_into_job("p", "a", "kind", 2, screen=screen)
    assert job is not None and [i.key for i in job.items] == ["jrossi", "mbianchi"]
    assert status(store)["admin"] == (DeliveryStatus.DEAD, "legal hold: admin")
    held = KeyScreen(set(), limit=0)
    journal(store, ["x"])
    assert store.claim_into_job("p", "a", "kind", 2, screen=held) is None
    assert held.holds == [(1, "guard: 1 due")]
    assert held.seen == [GuardCounts(due=1, done_last_hour=0, in_flight=2)]


def test_a_screen_without_limits_is_never_asked_to_weigh_them(store: Store) -> None:
    journal(store, ["1", "admin", "2"])
    screen = KeyScreen({"admin"}, weighs_limits=False)
    claimed = store.claim("p", "a", 10, "run", screen=screen)
    assert [c.key for c in claimed] == ["1", "2"]
    assert screen.seen == [] and screen.holds == []
    assert status(store)["admin"] == (DeliveryStatus.DEAD, "legal hold: admin")


def test_pending_and_due_failed_deliveries_are_claimed_oldest_first(store: Store) -> None:
    journal(store, ["1", "2", "3", "4"])
    first = store.claim("p", "a", 2, "run", now=T0)
    failed = [OutcomeRecord(c.id, "retry", reason="busy", retry_after=0) for c in first]
    store.record_outcomes(failed, RetryRule(base_delay=1, max_delay=1), now=T0)
    later = T0 + timedelta(seconds=5)
    assert [c.key for c in store.claim("p", "a", 3, "run", now=later)] == ["1", "2", "3"]
    assert [c.key for c in store.claim("p", "a", 3, "run", now=later)] == ["4"]


def peak_of_a_held_claim(store: Store, pipeline: str, due: int) -> int:
    """Peak bytes tracemalloc saw during one claim that holds `due` deliveries, every
    hundredth of them protected by the legal hold."""
    keys = [f"hold-{n}" if n % 100 == 0 else f"k{n}" for n in range(due)]
    store.journal(
        pipeline,
        "T",
        [NewRecord(k, {"K": k}) for k in keys],
        cursor=None,
        targets=["a"],
        run_id=None,
    )
    screen = KeyScreen({k for k in keys if k.startswith("hold-")}, limit=0)
    tracemalloc.start()
    try:
        began = tracemalloc.get_traced_memory()[0]
        claimed = store.claim(pipeline, "a", 100, "run", screen=screen)
        peak = tracemalloc.get_traced_memory()[1] - began
    finally:
        tracemalloc.stop()
    assert claimed == []
    with store.engine.connect() as conn:
        query = (
            select(DELIVERY.c.status, func.count())
            .where(DELIVERY.c.pipeline == pipeline)
            .group_by(DELIVERY.c.status)
        )
        statuses = {status: count for status, count in conn.execute(query)}
    assert statuses == {DeliveryStatus.DEAD: due // 100, DeliveryStatus.HELD: due - due // 100}
    assert screen.holds == [(due - due // 100, f"guard: {due - due // 100} due")]
    return peak


def test_a_claim_over_a_limit_screens_the_whole_due_set_in_bounded_memory(store: Store) -> None:
    """Held for numbers, every due delivery is screened first (what the legal hold
    protects becomes dead, never held, so an approval cannot release it); a mass
    delete of a million rows must not be read into memory to do it."""
    small = peak_of_a_held_claim(store, "small", 2_000)
    large = peak_of_a_held_claim(store, "large", 20_000)
    assert large - small < 40 * 18_000, f"peak {small:,} B at 2,000 due, {large:,} B at 20,000"
