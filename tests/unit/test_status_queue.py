"""`status` says who runs each pipeline (the lease holder's host, pid, since and epoch) and,
per target, how old its oldest waiting and held deliveries are and whether its sends get
through (failing, then stalled after `health.stall_after`), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update
from typer.testing import CliRunner

from state import NewRecord, Store
from state.models import TargetHealth, utcnow
from syncengine.cli import app
from syncengine.engine.lease import HOST, owner_name, parse_owner
from tests.unit.test_claim_screen import KeyScreen
from tests.unit.test_deliveries_list import write_config


def status(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, ["status", "-c", str(config), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "json" in args else " ".join(result.output.split())


def test_the_lease_holder_while_a_pipeline_runs(store: Store, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", store.url)
    assert status(config, "-o", "json")["pipelines"][0]["lease"] is None
    assert "not running (never run)" in status(config)

    owner = owner_name(os.getpid())
    earlier = utcnow() - timedelta(minutes=5)  # another holder's lease, expired since
    assert store.acquire_lock("p", "someone-else:1:x:y:z", 60, now=earlier) is not None
    lease = store.acquire_lock("p", owner, 60)
    assert lease is not None and lease.epoch == 2
    shown = status(config, "-o", "json")["pipelines"][0]["lease"]
    assert (shown["host"], shown["pid"], shown["epoch"]) == (HOST, os.getpid(), 2)
    assert shown["held"]
    assert shown["since"] is not None and shown["expires_at"] > shown["since"]
    text = status(config)
    assert f"running on {HOST} pid {os.getpid()} since " in text and "lease epoch 2" in text

    store.release_lock("p", owner)
    assert not status(config, "-o", "json")["pipelines"][0]["lease"]["held"]
    assert f"not running; last run by {HOST} pid {os.getpid()} (lease epoch 2" in status(config)


def test_oldest_waiting_held_and_stalled_targets(store: Store, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", store.url)
    fresh = status(config, "-o", "json")["pipelines"][0]["targets"]
    assert [(t["sends"], t["oldest_waiting_at"]) for t in fresh] == [(None, None)] * 2

    store.journal(
        "p", "T", [NewRecord(k, {"K": k}) for k in ("k1", "k2")], cursor=None,
        targets=["a", "b"], run_id=None,
    )  # fmt: skip
    assert store.claim("p", "a", 10, "run", screen=KeyScreen(set(), limit=0)) == []
    store.note_target_result("p", "a", got_through=False, error="connect refused [127.0.0.1:9]")
    store.note_target_result("p", "b", got_through=False, error="timeout")
    store.note_target_result("p", "b", got_through=False, error="timeout")
    with store.engine.begin() as conn:  # a's first failed run was an hour ago
        conn.execute(
            update(TargetHealth)
            .where(TargetHealth.target == "a")  # type: ignore[arg-type]
            .values(failing_since=utcnow() - timedelta(hours=1))
        )

    a, b = status(config, "-o", "json")["pipelines"][0]["targets"]
    assert a["sends"] == "stalled" and a["failed_runs"] == 1
    assert a["last_error"] == "connect refused [127.0.0.1:9]"
    assert a["oldest_waiting_at"] is None and a["oldest_held_at"] is not None
    assert b["sends"] == "failing" and b["failed_runs"] == 2
    assert b["oldest_waiting_at"] is not None and b["oldest_held_at"] is None

    text = status(config)
    assert "a: stalled: nothing got through since 1h ago (1 run(s))" in text
    assert "last error: connect refused [127.0.0.1:9]" in text
    assert "b: failing: nothing got through since" in text

    store.note_target_result("p", "a", got_through=True)
    a, _ = status(config, "-o", "json")["pipelines"][0]["targets"]
    assert a["sends"] == "ok" and a["failing_since"] is None


def test_a_holder_name_is_read_back_in_one_place() -> None:
    holder = parse_owner(owner_name(4242))
    assert holder is not None and (holder.host, holder.pid) == (HOST, 4242)
    assert parse_owner("me") is None and parse_owner("h:notapid:n:b:p") is None
