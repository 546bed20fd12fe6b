"""The mass-delete guard holds, loses nothing, and releases exactly what is approved;
a legal hold is never sent, whatever the source says."""

from __future__ import annotations

import json

from syncengine.sandbox import PEOPLE
from tests.e2e.conftest import Env

USERS = {p[0] for p in PEOPLE}
MOST_CONTACTS = [f"0-{i}" for i in range(1, 13)]  # 12 of the 15 ERP users


def add_guard(e2e: Env, guard: str) -> None:
    lines = []
    for line in e2e.config.read_text().splitlines():
        lines.append(line)
        if line.strip() == "batch_size: 3":
            lines.append(line.replace("batch_size: 3", f"guard: {guard}"))
    e2e.config.write_text("\n".join(lines) + "\n")
    assert "guard:" in e2e.config.read_text()


def run(e2e: Env) -> None:
    result = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert "Traceback" not in result.stderr, result.stderr


def test_a_sudden_mass_deletion_is_held_until_approved_exactly(e2e: Env) -> None:
    add_guard(e2e, "{max_fraction: 0.5}")
    e2e.box.delete_in_goose("CON_TRO", MOST_CONTACTS)
    result = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert "alert_guard_tripped" in result.stderr
    assert e2e.mongoose_deleted() == [], "nothing sent"
    assert e2e.target_counts()["held"] == 12
    listed = e2e.cli("held", "-c", str(e2e.config), "-o", "json")
    assert sorted(row["key"] for row in json.loads(listed.stdout)) == sorted(MOST_CONTACTS)
    run(e2e)  # a restart in between: still held, still nothing sent
    assert e2e.target_counts()["held"] == 12 and e2e.mongoose_deleted() == []

    wrong = e2e.cli(
        "approve",
        "--pipeline",
        "contacts",
        "--target",
        "erp_users",
        "--count",
        "11",
        "-c",
        str(e2e.config),
    )
    assert wrong.returncode == 2 and "12 deliveries are held" in wrong.stderr
    assert e2e.target_counts()["held"] == 12

    right = e2e.cli(
        "approve",
        "--pipeline",
        "contacts",
        "--target",
        "erp_users",
        "--count",
        "12",
        "-c",
        str(e2e.config),
    )
    assert right.returncode == 0, right.stderr
    run(e2e)
    expected = {PEOPLE[i][0] for i in range(12)}
    assert USERS - e2e.users() == expected
    assert sorted(r["properties"]["Username"] for r in e2e.mongoose_deleted()) == sorted(expected)
    assert e2e.target_counts()["done"] == 12


def test_reject_makes_held_deliveries_dead_with_the_reason(e2e: Env) -> None:
    add_guard(e2e, "{max_per_run: 2}")
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2", "0-3"])
    run(e2e)
    assert e2e.target_counts()["held"] == 3
    result = e2e.cli(
        "reject",
        "--pipeline",
        "contacts",
        "--target",
        "erp_users",
        "--reason",
        "source bug INC-42",
        "-c",
        str(e2e.config),
    )
    assert result.returncode == 0, result.stderr
    run(e2e)
    counts = e2e.target_counts()
    assert counts["dead"] == 3 and counts["held"] == 0
    assert e2e.mongoose_deleted() == []
    status = e2e.cli("status", "-c", str(e2e.config), "-o", "json")
    assert status.returncode == 0


def test_under_the_limits_nothing_is_held(e2e: Env) -> None:
    add_guard(e2e, "{max_per_run: 5, max_per_hour: 10, max_fraction: 0.5}")
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
    run(e2e)
    assert e2e.target_counts()["done"] == 2


def test_legal_hold_is_never_sent(e2e: Env) -> None:
    add_guard(e2e, '{legal_hold: {key: "{SYKEY}", patterns: ["jrossi", "adm*"]}}')
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
    run(e2e)
    run(e2e)
    assert "jrossi" in e2e.users() and "mbianchi" not in e2e.users()
    attempts = {r["properties"]["Username"] for r in e2e.mongoose_deleted()}
    assert "jrossi" not in attempts
    dead = json.loads(e2e.cli("status", "-c", str(e2e.config), "-o", "json").stdout)
    assert dead["pipelines"][0]["targets"][0]["dead"] == 1
