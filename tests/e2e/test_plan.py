"""Plan and dry run: the emulators record zero mutating requests, no cursor moves,
and what the plan shows is what a real run then does."""

from __future__ import annotations

import json

import httpx

from syncengine.sandbox import GOOSE_ENGINE_KEY
from tests.e2e.conftest import Env
from tests.e2e.test_guards import add_guard


def mutating_requests(url: str) -> list[dict[str, object]]:
    log = httpx.get(f"{url}/_admin/requests", timeout=5).json()
    return [r for r in log if r["mutating"]]


def test_plan_and_dry_run_change_nothing(e2e: Env) -> None:
    add_guard(e2e, '{legal_hold: {key: "{SYKEY}", patterns: ["lverdi"]}}')
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2", "0-3", "0-13", "0-14"])
    e2e.box.delete_in_goose("CON_TRO", ["0-4"], by_key=GOOSE_ENGINE_KEY)

    planned = e2e.cli("plan", "-c", str(e2e.config), "-o", "json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)[0]
    assert plan["new"] == 5 and plan["reads"][0]["from"] != "latest"
    actions = {i["key"]: i["action"] for i in plan["targets"][0]["items"]}
    assert actions == {
        "0-1": "delete",
        "0-2": "delete",
        "0-3": "legal hold",
        "0-13": "absent",
        # 0-14 has no SYKEY: the legal hold cannot clear it, so it is protected (fail closed).
        "0-14": "legal hold",
    }
    dry = e2e.cli("run", "--dry-run", "-c", str(e2e.config))
    assert dry.returncode == 0 and "nothing was journaled" in dry.stdout

    for url in (e2e.box.goose_url, e2e.box.mongoose_url):
        assert mutating_requests(url) == []
    status = e2e.status()["pipelines"][0]
    assert status["deletions"] == 0 and status["streams"] == []

    result = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert result.returncode == 0, result.stderr
    assert {"jrossi", "mbianchi"}.isdisjoint(e2e.users())
    assert "lverdi" in e2e.users() and "fromano" in e2e.users()
    assert e2e.status()["pipelines"][0]["deletions"] == 5, "latest still gave everything"


def test_plan_includes_what_is_already_due(e2e: Env) -> None:
    # The plan re-reads from the last call minus the overlap: wide enough that a slow
    # process start between the delete in Goose and that call cannot leave 0-1 out.
    e2e.write_config(attempts=1, overlap="120s")
    e2e.faults(e2e.box.mongoose_url, error_rate=1.0)
    e2e.box.delete_in_goose("CON_TRO", ["0-1"])
    e2e.cli("run", "--once", "-c", str(e2e.config))
    e2e.faults(e2e.box.mongoose_url, error_rate=0.0)
    plan = json.loads(e2e.cli("plan", "-c", str(e2e.config), "-o", "json").stdout)[0]
    assert plan["new"] == 0 and plan["already_journaled"] == 1
    items = plan["targets"][0]["items"]
    assert [(i["key"], i["action"], i["journaled"]) for i in items] == [("0-1", "delete", True)]
