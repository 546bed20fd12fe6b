"""Dead letters: list with filters and JSON, retry (dry run first), drop."""

from __future__ import annotations

import json

from tests.e2e.conftest import Env
from tests.e2e.test_guards import add_guard, run


def dead(e2e: Env, *filters: str) -> list[dict[str, object]]:
    result = e2e.cli("dlq", "list", "-c", str(e2e.config), "-o", "json", *filters)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_dead_letters_can_be_listed_retried_and_dropped(e2e: Env) -> None:
    add_guard(e2e, '{legal_hold: {key: "{SYKEY}", patterns: ["jrossi"]}}')
    # 0-1 is protected; 0-14 has no user name at all, so the hold cannot clear it either.
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-14"])
    run(e2e)
    rows = dead(e2e)
    assert sorted(str(r["key"]) for r in rows) == ["0-1", "0-14"]
    assert [r["key"] for r in dead(e2e, "--error", "matches")] == ["0-1"]
    unread = dead(e2e, "--error", "cannot be read")
    assert [r["key"] for r in unread] == ["0-14"] and "SYKEY" in str(unread[0]["reason"])

    dry = e2e.cli("dlq", "retry", "-c", str(e2e.config), "--dry-run")
    assert dry.returncode == 0 and "would retry" in dry.stdout
    assert len(dead(e2e)) == 2, "a dry run changes nothing"

    retried = e2e.cli("dlq", "retry", "-c", str(e2e.config), "--error", "matches")
    assert retried.returncode == 0 and "1 dead deliveries back to pending" in retried.stdout
    run(e2e)
    assert "jrossi" in e2e.users(), "the legal hold applies again to a retried delivery"
    assert [r["key"] for r in dead(e2e, "--error", "matches")] == ["0-1"]

    dropped = e2e.cli("dlq", "drop", "-c", str(e2e.config), "--error", "cannot be read")
    assert dropped.returncode == 0 and "1 dead deliveries dropped" in dropped.stdout
    assert [r["key"] for r in dead(e2e)] == ["0-1"]
    assert e2e.target_counts()["dropped"] == 1
