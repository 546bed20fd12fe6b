"""Backfill: replays exactly a range's deletions, de-duplicated against what the daemon
had, leaves the daemon's cursor alone, and sends nothing the second time."""

from __future__ import annotations

import signal
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx

from tests.e2e.conftest import Env

ROME = ZoneInfo("Europe/Rome")


def delete_at(e2e: Env, record: str, hours_ago: float) -> None:
    httpx.post(
        f"{e2e.box.goose_url}/_admin/clock", json={"offset_seconds": -hours_ago * 3600}, timeout=5
    ).raise_for_status()
    e2e.box.delete_in_goose("CON_TRO", [record])
    httpx.post(f"{e2e.box.goose_url}/_admin/clock", json={"offset_seconds": 0}, timeout=5)


def rome(hours_ago: float) -> str:
    return (datetime.now(ROME) - timedelta(hours=hours_ago)).strftime("%Y-%m-%d %H:%M:%S")


def test_backfill_replays_the_range_once_and_keeps_the_cursor(e2e: Env) -> None:
    e2e.write_config(mode="watermark")
    text = e2e.config.read_text().replace("overlap: 5s}", f'overlap: 5s, start: "{rome(0.5)}"}}')
    e2e.config.write_text(text)
    delete_at(e2e, "0-1", 3)  # before the range
    delete_at(e2e, "0-2", 1.5)  # in the range
    delete_at(e2e, "0-3", 0)  # in the range, and already seen by the daemon
    assert e2e.cli("run", "--once", "-c", str(e2e.config)).returncode == 0
    assert e2e.status()["pipelines"][0]["deletions"] == 1
    cursor_before = e2e.status()["pipelines"][0]["streams"][0]["cursor"]

    first = e2e.cli("backfill", "-p", "contacts", "--from", rome(2), "-c", str(e2e.config))
    assert first.returncode == 0, first.stderr
    assert "backfill contacts -> erp_users" in first.stdout
    pipeline = e2e.status()["pipelines"][0]
    assert pipeline["deletions"] == 2, "0-2 replayed, 0-3 de-duplicated, 0-1 out of range"
    assert pipeline["last_run"]["kind"] == "backfill"
    assert pipeline["last_run"]["pulled"] == 1 and pipeline["last_run"]["delivered"] == 1
    assert pipeline["streams"][0]["cursor"] == cursor_before, "the daemon's cursor did not move"
    assert "mbianchi" not in e2e.users() and "jrossi" in e2e.users()

    second = e2e.cli("backfill", "-p", "contacts", "--from", rome(2), "-c", str(e2e.config))
    assert second.returncode == 0, second.stderr
    again = e2e.status()["pipelines"][0]["last_run"]
    assert again["pulled"] == 0 and again["delivered"] == 0
    assert len(e2e.mongoose_deleted()) == 2


def test_backfill_dry_run_and_bad_options(e2e: Env) -> None:
    delete_at(e2e, "0-1", 1)
    dry = e2e.cli(
        "backfill", "-p", "contacts", "--from", rome(2), "--dry-run", "-c", str(e2e.config)
    )
    assert dry.returncode == 0 and "nothing was journaled" in dry.stdout
    assert e2e.mongoose_deleted() == [] and e2e.status()["pipelines"][0]["deletions"] == 0
    bounded = e2e.cli(
        "backfill", "-p", "contacts", "--from", rome(2), "--to", rome(1), "-c", str(e2e.config)
    )
    assert bounded.returncode == 2 and "cannot stop at an end" in bounded.stderr
    garbled = e2e.cli("backfill", "-p", "contacts", "--from", "yesterday", "-c", str(e2e.config))
    assert garbled.returncode == 2 and "yyyy-mm-dd hh:mm:ss" in garbled.stderr


def test_backfill_beside_a_running_daemon_sends_nothing_twice(e2e: Env) -> None:
    e2e.write_config(every="0.5s")
    for i in range(1, 7):
        delete_at(e2e, f"0-{i}", 1)
    daemon = e2e.popen("run", "-c", str(e2e.config))
    try:
        time.sleep(0.5)
        result = e2e.cli("backfill", "-p", "contacts", "--from", rome(2), "-c", str(e2e.config))
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and e2e.target_counts()["done"] < 6:
            time.sleep(0.3)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
    deleted = sorted(r["properties"]["Username"] for r in e2e.mongoose_deleted())
    assert deleted == sorted(["jrossi", "mbianchi", "lverdi", "fromano", "acolombo", "sricci"])
    assert e2e.status()["pipelines"][0]["deletions"] == 6
