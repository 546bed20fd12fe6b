"""Alert events in the log: a source failing N times in a row, a cursor past retention."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import update
from structlog.testing import capture_logs

from state import Store
from state.models import Cursor, utcnow
from syncengine.config import load_config
from syncengine.engine import StopToken, build_runtime, run_pipeline
from tests.e2e.conftest import Env


def run_once_in_process(e2e: Env) -> list[dict[str, object]]:
    config = load_config(e2e.config, env=e2e.env())

    async def go() -> None:
        store = Store.open(config.state.url)
        runtime = build_runtime(config, store)
        try:
            await run_pipeline(store, runtime.pipelines["contacts"], StopToken())
        finally:
            await runtime.aclose()

    with capture_logs() as events:
        asyncio.run(go())
    return events


def add_alerts(e2e: Env, alerts: str) -> None:
    text = e2e.config.read_text().replace(
        "    schedule: {every: 1s}", f"    schedule: {{every: 1s}}\n    alerts: {alerts}"
    )
    e2e.config.write_text(text)


def test_source_failing_in_a_row_raises_one_alert_event(e2e: Env) -> None:
    e2e.config.write_text(e2e.config.read_text().replace("tables: [CON_TRO]", "tables: [NOPE]"))
    add_alerts(e2e, "{source_errors_in_a_row: 2}")
    first = run_once_in_process(e2e)
    assert not [e for e in first if e["event"] == "alert_source_failing"]
    second = run_once_in_process(e2e)
    alerts = [e for e in second if e["event"] == "alert_source_failing"]
    assert len(alerts) == 1 and alerts[0]["consecutive"] == 2
    assert "120" in str(alerts[0]["error"])


def test_cursor_older_than_retention_raises_an_alert(e2e: Env) -> None:
    add_alerts(e2e, "{cursor_retention: 1d}")
    assert not [e for e in run_once_in_process(e2e) if e["event"].startswith("alert_")]
    store = Store.open(f"sqlite:///{e2e.tmp / 'state.db'}")
    with store.engine.begin() as conn:
        conn.execute(update(Cursor).values(last_success_at=utcnow() - timedelta(days=2)))
    store.close()
    events = run_once_in_process(e2e)
    assert [e["event"] for e in events if e["event"].startswith("alert_")] == [
        "alert_cursor_beyond_retention"
    ]
