"""Lag as a number: the store counts each done delivery's propagation lag, the metrics
export it with the queue's gauges, and `run --once` writes them to a textfile."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from state import LAG_BOUNDS, LagCounts, NewRecord, OutcomeRecord, RetryRule, Store
from state.models import Delivery, RunOutcome, utcnow
from syncengine.engine import RunReport
from syncengine.engine.push import PushReport
from syncengine.metrics import Metrics, write_run_file

OWNER = "db-host-1:4242:ab12cd34:boot-id:4026531836"


def journal(store: Store, keys: list[str], targets: tuple[str, ...] = ("a",)) -> None:
    store.journal(
        "p",
        "T",
        [NewRecord(k, {"K": k}) for k in keys],
        cursor={},
        targets=list(targets),
        run_id=None,
    )


def bucket_of(seconds: float) -> int:
    return next(i for i, bound in enumerate(LAG_BOUNDS) if seconds <= bound)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_done_deliveries_report_their_lag_in_buckets(store: Store) -> None:
    journal(store, ["1", "2", "3"])
    claimed = store.claim("p", "a", 10, "c")
    later = utcnow() + timedelta(seconds=100)
    outcomes = [
        OutcomeRecord(claimed[0].id, "done"),
        OutcomeRecord(claimed[1].id, "done", detail="other detail: its own statement"),
        OutcomeRecord(claimed[2].id, "retry", reason="busy"),
    ]
    counts = store.record_outcomes(outcomes, RetryRule(), now=later)
    assert counts.done == 2
    assert counts.lag.count == 2, "only done deliveries have a lag"
    assert counts.lag.buckets[bucket_of(100)] == 2
    assert 200 <= counts.lag.seconds < 260


def test_a_jobs_done_items_report_their_lag(store: Store) -> None:
    journal(store, ["1", "2"])
    job = store.claim_into_job("p", "a", "purge", 10)
    assert job is not None
    counts = store.finish_job(
        job.id,
        "succeeded",
        [OutcomeRecord(item.id, "done") for item in job.items],
        RetryRule(),
    )
    assert counts.done == 2 and counts.lag.count == 2


def test_lag_counts_are_fixed_size_and_clamp_a_clock_stepped_back() -> None:
    lag = LagCounts()
    for seconds in (-5.0, 0.5, 1.0, 1.5, 86400 * 30):
        lag.observe(seconds)
    assert len(lag.buckets) == len(LAG_BOUNDS) + 1
    assert lag.buckets[0] == 3 and lag.buckets[1] == 1 and lag.buckets[-1] == 1
    assert lag.seconds == 0.5 + 1.0 + 1.5 + 86400 * 30


def report_with(lag_seconds: list[float], failures: dict[str, int]) -> RunReport:
    push = PushReport(done=len(lag_seconds), retried=sum(failures.values()), failures=failures)
    for seconds in lag_seconds:
        push.lag.observe(seconds)
    return RunReport("p", RunOutcome.OK, run_id=1, targets={"a": push})


def test_a_run_feeds_the_lag_histogram_and_the_failures_counter(sqlite_store: Store) -> None:
    metrics = Metrics(sqlite_store)
    metrics.record_run(report_with([0.5, 40, 40, 9000], {"unreachable": 3, "timeout": 1}))
    metrics.record_run(report_with([2], {"unreachable": 2}))
    found = samples(generate_latest(metrics.registry).decode())
    lag = "syncengine_propagation_lag_seconds"
    assert value(found, f"{lag}_count", pipeline="p", target="a") == 5
    assert value(found, f"{lag}_sum", pipeline="p", target="a") == 0.5 + 40 + 40 + 9000 + 2
    assert value(found, f"{lag}_bucket", pipeline="p", target="a", le="1.0") == 1
    assert value(found, f"{lag}_bucket", pipeline="p", target="a", le="5.0") == 2
    assert value(found, f"{lag}_bucket", pipeline="p", target="a", le="60.0") == 4
    assert value(found, f"{lag}_bucket", pipeline="p", target="a", le="7200.0") == 4
    assert value(found, f"{lag}_bucket", pipeline="p", target="a", le="14400.0") == 5
    assert value(found, f"{lag}_bucket", pipeline="p", target="a", le="+Inf") == 5
    failures = "syncengine_send_failures_total"
    assert value(found, failures, pipeline="p", target="a", reason="unreachable") == 5
    assert value(found, failures, pipeline="p", target="a", reason="timeout") == 1
    assert value(found, "syncengine_last_run_success", pipeline="p") == 1


def test_gauges_come_from_the_store_at_scrape_time(store: Store) -> None:
    journal(store, ["1", "2", "3", "4"], targets=("a", "b"))
    hour_ago = utcnow() - timedelta(hours=1)
    ids = {key: _id_of(store, key, "a") for key in ("1", "2")}
    with store.engine.begin() as conn:
        conn.execute(update(Delivery).values(created_at=hour_ago))
        for key, status in (("1", "held"), ("2", "dead")):
            conn.execute(
                update(Delivery)
                .where(Delivery.id == ids[key])  # type: ignore[arg-type]
                .values(status=status, updated_at=hour_ago)
            )
        conn.execute(update(Delivery).where(Delivery.target == "b").values(status="done"))
    store.note_target_result("p", "a", got_through=False, error="connection refused")
    found = samples(generate_latest(Metrics(store, stall_after=60).registry).decode())
    assert value(found, "syncengine_deliveries", pipeline="p", target="a", status="held") == 1
    assert value(found, "syncengine_deliveries", pipeline="p", target="a", status="dead") == 1
    assert value(found, "syncengine_deliveries", pipeline="p", target="b", status="held") == 0
    pending = value(found, "syncengine_oldest_pending_age_seconds", pipeline="p", target="a")
    assert 3600 <= pending < 3600 + 600
    assert value(found, "syncengine_oldest_pending_age_seconds", pipeline="p", target="b") == 0
    held = value(found, "syncengine_oldest_held_age_seconds", pipeline="p", target="a")
    assert 3600 <= held < 3600 + 600
    assert value(found, "syncengine_target_stalled", pipeline="p", target="a") == 0
    with store.engine.begin() as conn:
        from state.models import TargetHealth

        conn.execute(update(TargetHealth).values(failing_since=hour_ago))
    found = samples(generate_latest(Metrics(store, stall_after=60).registry).decode())
    assert value(found, "syncengine_target_stalled", pipeline="p", target="a") == 1


def _id_of(store: Store, key: str, target: str) -> int:
    from sqlmodel import Session, select

    from state.models import Deletion

    with Session(store.engine) as s:
        row = s.exec(
            select(Delivery.id)
            .join(Deletion, Deletion.id == Delivery.deletion_id)  # type: ignore[arg-type]
            .where(Deletion.record_key == key, Delivery.target == target)
        ).one()
        assert row is not None
        return row


def test_the_lease_holder_gauge_names_host_pid_and_epoch(store: Store) -> None:
    lease = store.acquire_lock("p", OWNER, 60)
    assert lease is not None
    found = samples(generate_latest(Metrics(store).registry).decode())
    labels = {"pipeline": "p", "host": "db-host-1", "pid": "4242", "epoch": str(lease.epoch)}
    assert value(found, "syncengine_lease_holder", **labels) == 1
    store.release_lock("p", OWNER)
    found = samples(generate_latest(Metrics(store).registry).decode())
    assert not [k for k in found if k[0] == "syncengine_lease_holder"], "released: not shown"


def test_the_run_file_is_parseable_replaced_whole_and_carries_counters_on(
    sqlite_store: Store, tmp_path: Path
) -> None:
    (tmp_path / "textfiles").mkdir()
    path = tmp_path / "textfiles" / "syncengine.prom"
    write_run_file(path, sqlite_store, [report_with([3, 90], {"unreachable": 2})], {"p": True}, 900)
    first = path.stat().st_ino
    found = samples(path.read_text())
    assert value(found, "syncengine_propagation_lag_seconds_count", pipeline="p", target="a") == 2
    assert value(found, "syncengine_last_run_success", pipeline="p") == 1
    stamp = value(found, "syncengine_last_run_timestamp_seconds", pipeline="p")
    write_run_file(path, sqlite_store, [report_with([3], {"unreachable": 1})], {"p": False}, 900)
    assert path.stat().st_ino != first, "written to a temporary file, then renamed"
    assert sorted(p.name for p in path.parent.iterdir()) == ["syncengine.prom"]
    found = samples(path.read_text())
    assert value(found, "syncengine_propagation_lag_seconds_count", pipeline="p", target="a") == 3
    assert value(found, "syncengine_propagation_lag_seconds_sum", pipeline="p", target="a") == 96
    failures = "syncengine_send_failures_total"
    assert value(found, failures, pipeline="p", target="a", reason="unreachable") == 3
    assert value(found, "syncengine_runs_total", pipeline="p", outcome="ok") == 2
    assert value(found, "syncengine_last_run_success", pipeline="p") == 0
    assert value(found, "syncengine_last_run_timestamp_seconds", pipeline="p") >= stamp


def test_a_run_file_that_is_not_metrics_starts_again_from_zero(
    sqlite_store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "syncengine.prom"
    path.write_text("this is { not metrics\n")
    write_run_file(path, sqlite_store, [report_with([3], {})], {"p": True}, 900)
    found = samples(path.read_text())
    assert value(found, "syncengine_propagation_lag_seconds_count", pipeline="p", target="a") == 1


@pytest.mark.parametrize("owner", ["odd-owner"])
def test_a_lease_owner_of_another_shape_is_shown_whole(owner: str) -> None:
    from syncengine.metrics import lease_labels

    assert lease_labels("p", owner, 3) == ["p", owner, "", "3"]
