"""Guards at the edges: the legal hold compares keys the way the target does, every
delivery is screened when it is claimed (even one made due while a run goes on), and a
max_fraction that cannot be weighed holds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from syncengine.sandbox import GOOSE_CODE
from tests.e2e.conftest import Env
from tests.e2e.test_guards import add_guard, run

PROTECTED = {"0-20": "SA", "0-21": "Admin", "0-22": "lverdi "}


def seed_look_alikes(e2e: Env) -> None:
    """Goose contacts whose user names differ from ERP rows only by case or a trailing
    space: SQL Server's default collation finds the rows `sa`, `admin`, `lverdi`."""
    httpx.post(
        f"{e2e.box.goose_url}/_admin/seed",
        json={
            "companies": {GOOSE_CODE: []},
            "tables": {
                "CON_TRO": [
                    {"RECORD_ID": rid, "SYKEY": key, "CORAS": "look-alike"}
                    for rid, key in PROTECTED.items()
                ]
            },
        },
        timeout=10,
    ).raise_for_status()
    httpx.post(
        f"{e2e.box.mongoose_url}/_admin/seed",
        json={"UserNames": [{"Username": "sa"}, {"Username": "admin"}]},
        timeout=10,
    ).raise_for_status()


def dead_reasons(e2e: Env) -> dict[str, str]:
    listed = e2e.cli("dlq", "list", "-c", str(e2e.config), "-o", "json")
    assert listed.returncode == 0, listed.stderr
    return {str(r["key"]): str(r["reason"]) for r in json.loads(listed.stdout)}


def test_the_legal_hold_compares_keys_as_the_target_does(e2e: Env) -> None:
    add_guard(e2e, '{legal_hold: {key: "{SYKEY}", patterns: ["sa", "admin*", "lverdi"]}}')
    seed_look_alikes(e2e)
    e2e.box.delete_in_goose("CON_TRO", [*PROTECTED, "0-2"])

    planned = e2e.cli("plan", "-c", str(e2e.config), "-o", "json")
    assert planned.returncode == 0, planned.stderr
    items = json.loads(planned.stdout)[0]["targets"][0]["items"]
    assert {i["key"]: i["action"] for i in items} == {
        "0-20": "legal hold",
        "0-21": "legal hold",
        "0-22": "legal hold",
        "0-2": "delete",
    }

    run(e2e)
    run(e2e)
    assert {"sa", "admin", "lverdi"} <= e2e.users() and "mbianchi" not in e2e.users()
    deleted = {r["properties"]["Username"] for r in e2e.mongoose_deleted()}
    assert deleted == {"mbianchi"}
    reasons = dead_reasons(e2e)
    assert sorted(reasons) == sorted(PROTECTED)
    assert reasons["0-21"] == (
        "legal hold: key 'Admin' matches 'admin*' (case-insensitive, trailing spaces ignored, "
        "as the target compares)"
    )


def wait_for(path: Path) -> None:
    for _ in range(1200):
        if path.exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path.name} never appeared")


def test_a_dead_letter_retried_during_a_run_meets_the_legal_hold_at_its_claim(
    e2e: Env, tmp_path: Path
) -> None:
    add_guard(e2e, '{legal_hold: {key: "{SYKEY}", patterns: ["jrossi"]}}')
    e2e.config.write_text(e2e.config.read_text().replace("batch_size: 3", "batch_size: 1"))
    e2e.box.delete_in_goose("CON_TRO", ["0-1"])
    run(e2e)
    assert list(dead_reasons(e2e)) == ["0-1"]

    e2e.box.delete_in_goose("CON_TRO", ["0-2", "0-3"])
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    running = e2e.popen(
        "run",
        "--once",
        "-c",
        str(e2e.config),
        SYNCENGINE_FAILPOINTS="after_claim@1=pause",
        SYNCENGINE_PAUSE_DIR=str(pauses),
    )
    try:
        wait_for(pauses / "after_claim.paused")  # the run has claimed its first batch
        retried = e2e.cli("dlq", "retry", "-c", str(e2e.config), "--error", "legal hold")
        assert "1 dead deliveries back to pending" in retried.stdout, retried.stderr
        (pauses / "after_claim.resume").touch()
        _, stderr = running.communicate(timeout=120)
    finally:
        running.kill()
    assert running.returncode == 0, stderr
    assert "jrossi" in e2e.users() and {"mbianchi", "lverdi"}.isdisjoint(e2e.users())
    assert "jrossi" not in {r["properties"]["Username"] for r in e2e.mongoose_deleted()}
    assert dead_reasons(e2e) == {"0-1": "legal hold: key 'jrossi' matches 'jrossi'"}


def test_max_fraction_holds_when_the_target_cannot_be_counted(e2e: Env) -> None:
    add_guard(e2e, "{max_fraction: 0.5}")
    e2e.box.delete_in_goose("CON_TRO", ["0-1"])
    e2e.faults(e2e.box.mongoose_url, error_rate=1.0)
    result = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert "alert_guard_tripped" in result.stderr
    e2e.faults(e2e.box.mongoose_url, error_rate=0.0)
    run(e2e)  # counting works again, but what was held waits for an operator
    assert e2e.target_counts()["held"] == 1 and "jrossi" in e2e.users()
    held = json.loads(e2e.cli("held", "-c", str(e2e.config), "-o", "json").stdout)
    assert [row["key"] for row in held] == ["0-1"]
    assert "so max_fraction 50% cannot be checked" in held[0]["reason"]
    approved = e2e.cli(
        "approve", "--pipeline", "contacts", "--target", "erp_users", "--count", "1",
        "-c", str(e2e.config),
    )  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    run(e2e)
    assert "jrossi" not in e2e.users()
