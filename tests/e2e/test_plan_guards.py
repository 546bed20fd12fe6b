"""`plan` gives the mass-delete guard's verdict, so plan and run agree: the issue's case was
a plan saying "erp_users: 5 delete" followed by a run that held all 5."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import Env
from tests.e2e.test_guards import add_guard

FIVE = ["0-1", "0-2", "0-4", "0-5", "0-6"]


def planned(e2e: Env) -> dict[str, tuple[str, str]]:
    result = e2e.cli("plan", "-c", str(e2e.config), "-o", "json")
    assert result.returncode == 0, result.stderr
    [plan] = json.loads(result.stdout)
    return {i["key"]: (i["action"], i["detail"]) for i in plan["targets"][0]["items"]}


def listed(e2e: Env, status: str) -> list[dict[str, Any]]:
    result = e2e.cli("held", "-c", str(e2e.config), "-o", "json")
    assert result.returncode == 0, result.stderr
    return [row for row in json.loads(result.stdout) if row["status"] == status]


def run_once(e2e: Env) -> None:
    result = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert "Traceback" not in result.stderr, result.stderr


def test_plan_says_which_limit_holds_and_the_run_holds_the_same(e2e: Env) -> None:
    add_guard(e2e, "{max_per_run: 3}")
    e2e.box.delete_in_goose("CON_TRO", FIVE)

    plan = planned(e2e)
    reason = "5 deletions due, max_per_run is 3"
    assert plan == {key: ("held", f"held by max_per_run: {reason}") for key in FIVE}
    text = e2e.cli("plan", "-c", str(e2e.config)).stdout
    assert "-> erp_users: 5 held" in text and "held by max_per_run" in text
    detail = json.loads(e2e.cli("plan", "-c", str(e2e.config), "-o", "json").stdout)
    assert {tuple(i["held_by"]) for i in detail[0]["targets"][0]["items"]} == {("max_per_run",)}

    run_once(e2e)
    held = listed(e2e, "held")
    assert sorted(row["key"] for row in held) == sorted(FIVE)
    assert {row["reason"] for row in held} == {f"guard: {reason}"}
    assert e2e.mongoose_deleted() == []


@pytest.mark.parametrize(
    ("limit", "held"),
    [
        # The legal hold takes 0-3 (lverdi) out before the numbers are weighed, by the plan
        # as by the claim: 4 due is within 4, so nothing is held.
        (4, 0),
        (3, 4),
    ],
)
def test_the_legal_hold_is_weighed_out_first_by_plan_and_run_alike(
    e2e: Env, limit: int, held: int
) -> None:
    add_guard(
        e2e, f'{{max_per_run: {limit}, legal_hold: {{key: "{{SYKEY}}", patterns: ["lverdi"]}}}}'
    )
    keys = ["0-1", "0-2", "0-3", "0-4", "0-5"]
    e2e.box.delete_in_goose("CON_TRO", keys)

    plan = planned(e2e)
    assert plan["0-3"] == ("legal hold", "key 'lverdi' matches 'lverdi'")
    actions = sorted(action for key, (action, _) in plan.items() if key != "0-3")
    assert actions == (["held"] * 4 if held else ["delete"] * 4)
    if held:
        assert plan["0-1"][1] == f"held by max_per_run: 4 deletions due, max_per_run is {limit}"

    run_once(e2e)
    counts = e2e.target_counts()
    assert (counts["held"], counts["dead"]) == (held, 1)
    assert counts["done"] == 4 - held
