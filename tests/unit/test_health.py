"""Health that means something: each condition found from the store, /readyz's answer
naming it with the command that unsticks it, /healthz left to liveness, and the
conditions recorded once across processes (no alert storms), resolved when fixed."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from structlog.testing import capture_logs

from state import NewRecord, Store
from state.models import Delivery, RunOutcome, utcnow
from syncengine.config import Config, parse_config
from syncengine.health import check_conditions, evaluate, human, readiness
from tests.unit.test_config import ENV, VALID

PIPE, TARGET = "contacts", "erp_users"
SCHEDULE = "    schedule: {every: 60s}\n"


def config(top: str = "", pipeline: str = "", target: str = "", metrics: bool = False) -> Config:
    """VALID with settings added at the top, in the pipeline and in its target."""
    text = VALID.replace(SCHEDULE, SCHEDULE + pipeline)
    text = text.replace("batch_size: 100}", f"batch_size: 100{target}}}")
    return parse_config(text + top + ("metrics: {port: 9999}\n" if metrics else ""), "my.yaml", ENV)


def later(minutes: float) -> datetime:
    return utcnow() + timedelta(minutes=minutes)


def finish_runs(store: Store, *outcomes: RunOutcome, error: str = "", fatal: bool = False) -> None:
    for outcome in outcomes:
        run = store.start_run(PIPE)
        store.finish_run(run, outcome, error=error, fatal=fatal)


def journal(store: Store, *keys: str) -> None:
    store.journal(
        PIPE,
        "CON_TRO",
        [NewRecord(k, {"SYKEY": k}) for k in keys],
        cursor={"from": "x"},
        targets=[TARGET],
        run_id=None,
    )


def set_status(store: Store, status: str, reason: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(Delivery).values(status=status, last_error=reason, updated_at=utcnow()))


def kinds(found: list[Any]) -> list[str]:
    return sorted(c.kind for c in found)


def not_ready(store: Store, cfg: Config, now: datetime | None = None) -> dict[str, Any]:
    # A daemon started at `now`: only what the test seeded is wrong, nothing overdue.
    ok, body = readiness(store, cfg, now or utcnow(), now=now)
    assert not ok and body["ok"] is False, body
    return body


def only_reason(body: dict[str, Any]) -> dict[str, Any]:
    assert len(body["reasons"]) == 1, body
    reason: dict[str, Any] = body["reasons"][0]
    return reason


def test_a_pipeline_failing_its_last_runs_in_a_row(store: Store) -> None:
    cfg = config("health: {failing_runs: 3}\n")
    finish_runs(store, RunOutcome.FAILED, RunOutcome.FAILED, error="CON_TRO: HTTP 500")
    assert evaluate(store, cfg) == [], "two failures are not yet three"
    assert readiness(store, cfg, utcnow())[0]
    finish_runs(store, RunOutcome.PARTIAL, error="CON_TRO: HTTP 500")
    [failing] = evaluate(store, cfg)
    assert failing.kind == "pipeline_failing" and failing.key == "pipeline_failing:contacts"
    assert failing.message.startswith("pipeline contacts: its last 3 runs failed (the latest")
    assert "CON_TRO: HTTP 500" in failing.message
    reason = only_reason(not_ready(store, cfg))
    assert reason["kind"] == "pipeline_failing" and reason["pipeline"] == PIPE
    assert reason["command"] == "syncengine status -c my.yaml -p contacts"
    finish_runs(store, RunOutcome.OK)
    assert evaluate(store, cfg) == [], "one good run ends the streak"


def test_interrupted_runs_neither_make_nor_break_a_streak(store: Store) -> None:
    cfg = config("health: {failing_runs: 2}\n")
    finish_runs(store, RunOutcome.FAILED, RunOutcome.INTERRUPTED, RunOutcome.FAILED)
    assert kinds(evaluate(store, cfg)) == ["pipeline_failing"]


def test_a_pipeline_stopped_on_rejected_credentials_names_the_connection_to_check(
    store: Store,
) -> None:
    cfg = config()
    finish_runs(
        store,
        *[RunOutcome.FAILED] * 3,
        error="connection goose: credentials rejected (HTTP 401)",
        fatal=True,
    )
    [stopped] = evaluate(store, cfg)
    assert stopped.kind == "pipeline_stopped", "stopped says more than failing: one, not two"
    assert "credentials rejected" in stopped.message
    reason = only_reason(not_ready(store, cfg))
    assert reason["command"] == "syncengine check -c my.yaml --connection goose"


def test_a_target_whose_sends_all_fail_for_longer_than_stall_after_is_stalled(
    store: Store,
) -> None:
    cfg = config("health: {stall_after: 15m}\n")
    store.note_target_result(PIPE, TARGET, got_through=False, error="unreachable: refused")
    store.note_target_result(PIPE, TARGET, got_through=False, error="unreachable: refused")
    assert evaluate(store, cfg, now=later(14)) == []
    [stalled] = evaluate(store, cfg, now=later(16))
    assert stalled.key == "target_stalled:contacts/erp_users"
    assert stalled.message == (
        "target contacts/erp_users: no send has got through for 16 min "
        "(2 runs in a row; last error: unreachable: refused)"
    )
    reason = only_reason(not_ready(store, cfg, later(16)))
    assert reason["target"] == TARGET
    assert reason["command"] == "syncengine check -c my.yaml --connection erp"
    store.note_target_result(PIPE, TARGET, got_through=True)
    assert evaluate(store, cfg, now=later(16)) == []


def test_a_source_not_read_for_longer_than_it_keeps_deletions(store: Store) -> None:
    cfg = config(pipeline="    alerts: {cursor_retention: 1h}\n")
    journal(store)
    read_at = store.cursor_last_success(PIPE, "CON_TRO")
    assert read_at is not None
    assert evaluate(store, cfg, now=later(59)) == []
    [late] = evaluate(store, cfg, now=later(121))
    assert late.kind == "source_beyond_retention"
    assert "stream CON_TRO last read successfully 2 h 1 min ago" in late.message
    assert "retention of 1 h" in late.message
    rome = read_at.astimezone(cfg.connections["goose"].zone).strftime("%Y-%m-%d %H:%M:%S")
    reason = only_reason(not_ready(store, cfg, later(121)))
    assert reason["command"] == f"syncengine backfill -c my.yaml -p contacts --from '{rome}'"


def test_the_oldest_waiting_deletion_older_than_the_slo(store: Store) -> None:
    """The target's slo overrides its pipeline's."""
    cfg = config(pipeline="    slo: {max_lag: 1h}\n", target=", slo: {max_lag: 10m}")
    journal(store, "1", "2")
    assert evaluate(store, cfg, now=later(9)) == []
    [breach] = evaluate(store, cfg, now=later(25))
    assert breach.kind == "slo_breached" and breach.target == TARGET
    assert "journaled 25 min ago, over its SLO of 10 min" in breach.message
    assert evaluate(store, config(pipeline="    slo: {max_lag: 1h}\n"), now=later(25)) == []
    assert only_reason(not_ready(store, cfg, later(25)))["command"] == (
        f"syncengine deliveries list -c my.yaml -p contacts -t {TARGET} --status pending"
    )
    store.note_target_result(PIPE, TARGET, got_through=False, error="timeout")
    [breach] = [c for c in evaluate(store, cfg, now=later(25)) if c.kind == "slo_breached"]
    assert breach.command == "syncengine check -c my.yaml --connection erp", (
        "a failing target: check its connection"
    )


def test_held_deliveries_alert_at_once_and_block_readiness_after_held_after(
    store: Store,
) -> None:
    cfg = config("health: {held_after: 1h}\n")
    journal(store, "1", "2")
    set_status(store, "held", "over max_deletes 1 (2 due)")
    [held] = evaluate(store, cfg)
    assert held.kind == "deliveries_held" and not held.blocks_ready
    assert held.command == "syncengine approve -c my.yaml -p contacts -t erp_users --count 2"
    assert "2 deliveries held by the mass-delete guard (over max_deletes 1 (2 due))" in (
        held.message
    )
    assert "syncengine reject -c my.yaml -p contacts -t erp_users --reason '<why>'" in (
        held.message
    )
    ok, body = readiness(store, cfg, utcnow())
    assert ok and [w["kind"] for w in body["warnings"]] == ["deliveries_held"]
    reason = only_reason(not_ready(store, cfg, later(61)))
    assert reason["kind"] == "deliveries_held" and "for 1 h 1 min" in reason["message"]


def test_dead_letters_warn_but_never_block_readiness(store: Store) -> None:
    cfg = config()
    journal(store, "1", "2", "3")
    set_status(store, "dead", "rejected: HTTP 400 no such user")
    [dead] = evaluate(store, cfg)
    assert dead.kind == "dead_letters" and not dead.blocks_ready
    assert dead.command == "syncengine dlq list -c my.yaml -p contacts -t erp_users"
    assert "3 dead letters" in dead.message and "no such user" in dead.message
    ok, body = readiness(store, cfg, utcnow())
    assert ok and body["reasons"] == []
    assert body["warnings"][0]["command"] == dead.command


def test_a_pipeline_overdue_is_judged_by_a_daemon_only(store: Store) -> None:
    """Every 60 s, overdue after 3 periods plus the 30 s a run follows its jobs."""
    cfg = config(metrics=True)
    started = utcnow() - timedelta(seconds=211)
    assert evaluate(store, cfg) == [], "a run --once cannot judge a schedule"
    [overdue] = evaluate(store, cfg, daemon_started=started)
    assert overdue.kind == "pipeline_overdue"
    assert overdue.message.startswith("pipeline contacts: no good run for 3 min (scheduled")
    assert evaluate(store, cfg, daemon_started=utcnow() - timedelta(seconds=200)) == []
    ok, body = readiness(store, cfg, started)
    assert not ok and only_reason(body)["kind"] == "pipeline_overdue"
    finish_runs(store, RunOutcome.OK)
    assert readiness(store, cfg, started)[0]


def test_a_disabled_pipeline_has_no_conditions(store: Store) -> None:
    cfg = config(pipeline="    enabled: false\n")
    finish_runs(store, *[RunOutcome.FAILED] * 3)
    assert evaluate(store, cfg) == []


def test_an_unwritable_store_is_not_ready(
    sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(metrics=True)
    ok, body = readiness(sqlite_store, cfg, utcnow())
    assert ok and body["reasons"] == [] and body["warnings"] == [], body

    def refuse() -> None:
        raise PermissionError("read-only")

    monkeypatch.setattr(sqlite_store, "check_writable", refuse)
    body = not_ready(sqlite_store, cfg)
    reason = only_reason(body)
    assert reason["kind"] == "store_unwritable"
    assert reason["message"] == "store not writable: PermissionError"


SINKS = (
    "alerts:\n  sinks:\n    - {type: webhook, url: 'http://127.0.0.1:1/hook'}\n"
    "    - {type: command, name: pager, command: [cat]}\n"
)


def test_sink_names_follow_the_shared_rule() -> None:
    assert config(SINKS).alerts.sink_names() == ["webhook-0", "pager"]


def test_a_condition_opens_once_across_checks_and_processes_and_resolves_when_fixed(
    store: Store,
) -> None:
    cfg = config(SINKS)
    journal(store, "1", "2")
    set_status(store, "held", "over max_deletes 1")
    other = Store.open(store.url)
    try:
        with capture_logs() as events:
            opened = check_conditions(store, cfg, [PIPE])
            again = check_conditions(other, cfg, [PIPE])
            assert check_conditions(store, cfg) == []
        assert [(t.event, t.key) for t in opened] == [
            ("opened", "deliveries_held:contacts/erp_users")
        ]
        assert again == [], "the other process finds it open: no second alert"
        assert [e["event"] for e in events] == ["alert_opened"]
        assert events[0]["command"] == (
            "syncengine approve -c my.yaml -p contacts -t erp_users --count 2"
        )
        assert events[0]["log_level"] == "warning"
        assert sorted(n.sink for n in store.notices()) == ["pager", "webhook-0"]
        store.approve_held(PIPE, TARGET, 2)
        with capture_logs() as events:
            resolved = check_conditions(other, cfg, [PIPE])
            assert check_conditions(store, cfg, [PIPE]) == []
        assert [(t.event, t.kind) for t in resolved] == [("resolved", "deliveries_held")]
        assert [(e["event"], e["log_level"]) for e in events] == [("alert_resolved", "info")]
        assert len(store.notices()) == 4, "one opening and one resolution per sink"
    finally:
        other.close()


def test_a_check_of_some_pipelines_leaves_the_others_conditions_open(store: Store) -> None:
    cfg = config()
    journal(store, "1")
    set_status(store, "dead", "rejected")
    assert len(check_conditions(store, cfg, [PIPE])) == 1
    assert check_conditions(store, cfg, ["elsewhere"]) == []
    assert [c.key for c in store.open_conditions()] == ["dead_letters:contacts/erp_users"]


def test_the_evaluation_reads_a_constant_number_of_queries(store: Store) -> None:
    """Ten targets cost what one does: each read is one query over every pipeline."""
    from sqlalchemy import event

    def count_queries(cfg: Config) -> int:
        seen: list[str] = []

        def note(*args: Any) -> None:
            seen.append(str(args[2]))

        event.listen(store.engine, "before_cursor_execute", note)
        try:
            evaluate(store, cfg, daemon_started=utcnow())
        finally:
            event.remove(store.engine, "before_cursor_execute", note)
        return len([s for s in seen if s.lstrip().upper().startswith("SELECT")])

    one = count_queries(config(metrics=True))
    targets = "".join(
        f"      t{i}: {{connection: erp, ido: UserNames, key: '{{SYKEY}}', "
        f"lookup: {{property: Username}}}}\n"
        for i in range(10)
    )
    many = parse_config(
        VALID.replace("    targets:\n", "    targets:\n" + targets) + "metrics: {port: 9999}\n",
        "my.yaml",
        ENV,
    )
    for i in range(10):
        store.note_target_result(PIPE, f"t{i}", got_through=False, error="down")
    finish_runs(store, RunOutcome.FAILED)
    assert count_queries(many) == one


def test_durations_read_as_an_operator_says_them() -> None:
    assert [human(s) for s in (5, 61, 3600, 3900, 86400, 90000)] == [
        "5 s",
        "1 min",
        "1 h",
        "1 h 5 min",
        "1 d",
        "1 d 1 h",
    ]


def test_healthz_is_liveness_and_readyz_names_each_reason(store: Store) -> None:
    from connectors.kit.serving import serve
    from syncengine.metrics import Metrics
    from syncengine.observe import build_app

    cfg = config("health: {failing_runs: 1}\n", metrics=True)
    app = build_app(store, cfg, Metrics(store), utcnow())
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["ok"] is True and ready.json()["reasons"] == []
        finish_runs(store, RunOutcome.FAILED, error="CON_TRO: HTTP 500")
        for path in ("/readyz", "/health"):
            answer = client.get(path)
            assert answer.status_code == 503
            body = answer.json()
            assert body["ok"] is False and set(body) == {"ok", "checked_at", "reasons", "warnings"}
            assert [r["kind"] for r in body["reasons"]] == ["pipeline_failing"]
            assert set(body["reasons"][0]) == {
                "kind",
                "pipeline",
                "target",
                "since",
                "message",
                "command",
            }
        live = client.get("/healthz")
        assert live.status_code == 200, "a failing pipeline is no reason to restart"
        assert live.json()["ok"] is True and live.json()["live"] is True


def test_readiness_judges_by_the_configuration_a_reload_applied(store: Store) -> None:
    """The daemon hands /readyz a getter of its live configuration: a SIGHUP that
    lowers `failing_runs` changes readiness without a restart."""
    from connectors.kit.serving import serve
    from syncengine.metrics import Metrics
    from syncengine.observe import build_app

    live = {"config": config("health: {failing_runs: 2}\n", metrics=True)}
    app = build_app(store, lambda: live["config"], Metrics(store), utcnow())
    finish_runs(store, RunOutcome.FAILED, error="CON_TRO: HTTP 500")
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/readyz").status_code == 200
        live["config"] = config("health: {failing_runs: 1}\n", metrics=True)
        assert client.get("/readyz").status_code == 503
