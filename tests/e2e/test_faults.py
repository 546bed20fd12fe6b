"""Under injected faults, and after lost `latest` answers, every deletion still arrives."""

from __future__ import annotations

from syncengine.sandbox import PEOPLE
from tests.e2e.conftest import Env

USERS = {p[0] for p in PEOPLE}
CONTACTS = [f"0-{i}" for i in range(1, 13)]


def run_until_settled(e2e: Env, max_runs: int = 25) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(max_runs):
        e2e.cli("run", "--once", "-c", str(e2e.config))
        counts = e2e.target_counts()
        if counts["pending"] == counts["failed"] == counts["in_flight"] == 0:
            return counts
    raise AssertionError(f"deliveries never settled: {counts}")


def test_thirty_percent_faults_lose_nothing_and_touch_nothing_else(e2e: Env) -> None:
    e2e.write_config(timeout="1", attempts=3)
    for url in (e2e.box.goose_url, e2e.box.mongoose_url):
        e2e.faults(
            url,
            error_rate=0.1,
            throttle_rate=0.08,
            retry_after=0.1,
            timeout_rate=0.05,
            hang_seconds=1.5,
            drop_after_apply_rate=0.07,
            seed=7,
        )
    deleted_in_goose = CONTACTS[:6]
    e2e.box.delete_in_goose("CON_TRO", deleted_in_goose[:3])
    e2e.cli("run", "--once", "-c", str(e2e.config))
    e2e.box.delete_in_goose("CON_TRO", deleted_in_goose[3:])
    counts = run_until_settled(e2e)
    expected = {PEOPLE[i][0] for i in range(6)}
    assert USERS - e2e.users() == expected
    assert counts["done"] == 6 and counts["dead"] == 0
    deleted = [row["properties"]["Username"] for row in e2e.mongoose_deleted()]
    assert sorted(deleted) == sorted(expected), "each row deleted once, nothing else touched"


def test_lost_latest_answer_is_recovered_in_the_same_run(e2e: Env) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
    e2e.drop_next_goose_answers(1)  # the server advances its cursor, the answer is lost
    result = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert result.returncode == 0, result.stderr
    assert {"jrossi", "mbianchi"}.isdisjoint(e2e.users())
    stream = e2e.status()["pipelines"][0]["streams"][0]
    assert stream["recoveries"] == 1
    assert stream["in_flight_since"] is None
    assert "recovery_read" in result.stderr


def test_recovery_window_starts_at_the_last_journaled_call(e2e: Env) -> None:
    """Deletions made between the last good call and the lost one are not skipped."""
    e2e.box.delete_in_goose("CON_TRO", ["0-1"])
    assert e2e.cli("run", "--once", "-c", str(e2e.config)).returncode == 0
    e2e.box.delete_in_goose("CON_TRO", ["0-2"])  # between the good call and the lost one
    e2e.drop_next_goose_answers(100)  # every try in this run loses its answer
    failed = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert failed.returncode == 1
    assert "source_answer_lost" in failed.stderr
    assert "mbianchi" in e2e.users()
    e2e.drop_next_goose_answers(0)
    e2e.box.delete_in_goose("CON_TRO", ["0-3"])
    assert e2e.cli("run", "--once", "-c", str(e2e.config)).returncode == 0
    assert {"jrossi", "mbianchi", "lverdi"}.isdisjoint(e2e.users())


def test_engine_killed_after_the_answer_arrived_recovers_on_restart(e2e: Env) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
    killed = e2e.cli("run", "--once", "-c", str(e2e.config), failpoints="after_fetch")
    assert killed.returncode == -9
    assert e2e.status()["pipelines"][0]["streams"][0]["in_flight_since"] is not None
    e2e.box.delete_in_goose("CON_TRO", ["0-3"])
    restarted = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert restarted.returncode == 0, restarted.stderr
    assert {"jrossi", "mbianchi", "lverdi"}.isdisjoint(e2e.users())
    assert e2e.status()["pipelines"][0]["streams"][0]["recoveries"] == 1


def test_killed_between_claim_and_outcome_resends_safely(e2e: Env) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2", "0-3", "0-4"])
    for point in ("after_claim", "after_send"):
        killed = e2e.cli("run", "--once", "-c", str(e2e.config), failpoints=point)
        assert killed.returncode == -9
    counts = run_until_settled(e2e)
    assert counts["done"] == 4 and counts["dead"] == 0
    assert len(e2e.mongoose_deleted()) == 4
