"""The conditions are checked where they arise: after each `run --once`, after each run of
the daemon and every `alerts.check_every` between its runs; each opens once and
resolves once, whichever run or process finds it."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import update

from state import Store
from state.models import Delivery, utcnow
from tests.e2e.conftest import Env


def events(stderr: str, name: str) -> list[dict[str, Any]]:
    found = []
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            found.append(event)
    return found


def open_keys(e2e: Env) -> list[str]:
    store = Store.open(f"sqlite:///{e2e.tmp / 'state.db'}")
    try:
        return [c.key for c in store.open_conditions()]
    finally:
        store.close()


def runs(e2e: Env) -> int:
    store = Store.open(f"sqlite:///{e2e.tmp / 'state.db'}")
    try:
        return len(store.recent_runs(10).get("contacts", []))
    finally:
        store.close()


def append(e2e: Env, text: str) -> None:
    with e2e.config.open("a") as config:
        config.write(text)


def wait_for(check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def test_run_once_opens_a_condition_once_and_resolves_it_when_fixed(e2e: Env) -> None:
    good = e2e.config.read_text()
    e2e.config.write_text(good.replace("tables: [CON_TRO]", "tables: [NOPE]"))
    append(e2e, "health: {failing_runs: 2}\n")
    run = ("run", "--once", "-c", str(e2e.config))
    first = e2e.cli(*run)
    assert first.returncode == 1 and events(first.stderr, "alert_opened") == []
    second = e2e.cli(*run)
    [opened] = events(second.stderr, "alert_opened")
    assert opened["kind"] == "pipeline_failing" and opened["pipeline"] == "contacts"
    assert opened["command"] == f"syncengine status -c {e2e.config} -p contacts"
    assert open_keys(e2e) == ["pipeline_failing:contacts"]
    third = e2e.cli(*run)
    assert events(third.stderr, "alert_opened") == [], "still open: not raised again"
    e2e.config.write_text(good + "health: {failing_runs: 2}\n")
    fixed = e2e.cli(*run)
    assert fixed.returncode == 0, fixed.stderr
    [resolved] = events(fixed.stderr, "alert_resolved")
    assert resolved["kind"] == "pipeline_failing"
    assert open_keys(e2e) == []


def test_the_daemon_checks_after_each_run_and_between_runs(e2e: Env) -> None:
    """A run every hour: what is held after the first run is found by the periodic check."""
    e2e.write_config(every="1h")
    append(e2e, "alerts: {check_every: 0.5s}\n")
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
    daemon = e2e.popen("run", "-c", str(e2e.config))
    try:
        wait_for(lambda: e2e.target_counts().get("done", 0) == 2)
        store = Store.open(f"sqlite:///{e2e.tmp / 'state.db'}")
        try:
            with store.engine.begin() as conn:
                conn.execute(
                    update(Delivery).values(
                        status="held", last_error="over max_deletes 1", updated_at=utcnow()
                    )
                )
        finally:
            store.close()
        wait_for(lambda: open_keys(e2e) == ["deliveries_held:contacts/erp_users"])
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr
    [opened] = events(stderr, "alert_opened")
    assert opened["command"] == (
        f"syncengine approve -c {e2e.config} -p contacts -t erp_users --count 2"
    )


def test_the_daemon_checks_a_pipeline_after_its_run_and_raises_it_once(e2e: Env) -> None:
    """The periodic check waits an hour here: only the check after each run can find it."""
    e2e.config.write_text(e2e.config.read_text().replace("tables: [CON_TRO]", "tables: [NOPE]"))
    append(e2e, "health: {failing_runs: 2}\nalerts: {check_every: 1h}\n")
    daemon = e2e.popen("run", "-c", str(e2e.config))
    try:
        wait_for(lambda: open_keys(e2e) == ["pipeline_failing:contacts"])
        wait_for(lambda: runs(e2e) >= 4)  # more runs, which find it open: no second alert
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    [opened] = events(stderr, "alert_opened")
    assert opened["kind"] == "pipeline_failing"
