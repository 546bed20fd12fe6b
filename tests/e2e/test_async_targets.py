"""Asynchronous targets (Reltio tasks, DMM executions) through the real CLI: SIGKILL
around submission and polling, restart, and find exactly one remote job per batch,
every delivery done or dead with a reason, and only refused records retried."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Env

CONTACTS = ["0-1", "0-2", "0-3"]


def reltio_config(e2e: Env, max_attempts: int = 5) -> Path:
    return e2e.compose(
        ["goose", "mdm"],
        f"""
        contacts:
          schedule: {{every: 1s}}
          source: {{connection: goose, tables: [CON_TRO], from: latest}}
          targets:
            mdm_people:
              connection: mdm
              crosswalk: {{type: GOOSE, value: "{{RECORD_ID}}"}}
              poll_interval: 0.1s
              retry: {{max_attempts: {max_attempts}, backoff: 0.1s, max_backoff: 0.3s}}
        """,
    )


def settle(e2e: Env) -> dict[str, int]:
    [counts] = e2e.settle().values()
    return counts


def goose_ids_left(e2e: Env) -> set[str]:
    return {
        c["value"]
        for e in e2e.admin("reltio", "/_admin/entities")
        for c in e["crosswalks"]
        if c["type"].endswith("/GOOSE")
    }


@pytest.mark.parametrize("point", ["before_submit", "after_submit", "after_poll"])
def test_reltio_killed_around_a_task_resumes_it_and_never_starts_two(e2e: Env, point: str) -> None:
    reltio_config(e2e)
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)
    killed = e2e.cli("run", "--once", "-c", str(e2e.config), failpoints=point)
    assert killed.returncode == -9, killed.stderr
    counts = settle(e2e)
    assert counts["done"] == 3 and counts["dead"] == 0
    tasks = e2e.admin("reltio", "/_admin/tasks")
    assert len(tasks) == 1, f"exactly one remote task for the batch, got {len(tasks)}"
    assert tasks[0]["status"] == "COMPLETED"
    assert not goose_ids_left(e2e) & set(CONTACTS)
    deleted = [d["uri"] for d in e2e.admin("reltio", "/_admin/deleted")]
    assert len(deleted) == 3, "each entity deleted once, nothing else"
    lookups = [r for r in e2e.admin("reltio", "/_admin/requests") if "/_byCrosswalk/" in r["path"]]
    assert len(lookups) == 3, "each crosswalk looked up once: the look-ups outlive the kill"


def test_reltio_partial_failure_retries_only_the_refused_then_dead_with_the_reason(
    e2e: Env,
) -> None:
    reltio_config(e2e, max_attempts=2)
    refused = next(
        e["uri"]
        for e in e2e.admin("reltio", "/_admin/entities")
        if {"type": "configuration/sources/GOOSE", "value": "0-2"} in e["crosswalks"]
    )
    e2e.admin_post("reltio", "/_admin/protect", {"uris": [refused]})
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)
    counts = settle(e2e)
    assert counts["done"] == 2 and counts["dead"] == 1
    tasks = e2e.admin("reltio", "/_admin/tasks")
    assert len(tasks) == 2, "one task for the batch, one retry for the refused entity alone"
    second = max(tasks, key=lambda t: t["createdTime"])
    assert second["parameters"]["entityUriList"] == [refused]
    dead = e2e.cli("dlq", "list", "-c", str(e2e.config), "-o", "json")
    rows = json.loads(dead.stdout)
    assert [r["key"] for r in rows] == ["0-2"]
    assert "objectsFailedToDelete" in rows[0]["reason"]
    assert goose_ids_left(e2e) & set(CONTACTS) == {"0-2"}


def test_reltio_status_shows_the_open_task_and_cancel_is_refused(e2e: Env) -> None:
    reltio_config(e2e)
    e2e.box.emulator("reltio").knobs.step_seconds = 3600
    e2e.box.delete_in_goose("CON_TRO", CONTACTS[:1])
    e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "0")
    jobs = e2e.status()["jobs"]
    assert len(jobs) == 1 and jobs[0]["target"] == "mdm_people" and jobs[0]["items"] == 1
    assert jobs[0]["kind"] == "reltio_delete" and jobs[0]["state"] == "queued"
    refused = e2e.cli("jobs", "cancel", str(jobs[0]["id"]), "-c", str(e2e.config))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "no cancel call" in refused.stderr


def dmm_config(e2e: Env, max_attempts: int = 5) -> Path:
    return e2e.compose(
        ["goose", "crm"],
        f"""
        contacts:
          schedule: {{every: 1s}}
          source: {{connection: goose, tables: [CON_TRO], from: latest}}
          targets:
            crm_customers:
              connection: crm
              entity: {{name: Customer}}
              key_attribute: ExternalId
              key: "{{RECORD_ID}}"
              poll_interval: 0.1s
              retry: {{max_attempts: {max_attempts}, backoff: 0.1s, max_backoff: 0.3s}}
        """,
    )


def customers_left(e2e: Env) -> set[str]:
    return {r["ExternalId"] for r in e2e.admin("dmm", "/_admin/rows/Customer")}


def executions(e2e: Env) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = e2e.admin("dmm", "/_admin/executions")
    return rows


@pytest.mark.parametrize("point", ["before_submit", "after_poll"])
def test_dmm_killed_around_an_execution_resumes_it_and_never_starts_two(
    e2e: Env, point: str
) -> None:
    dmm_config(e2e)
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)
    killed = e2e.cli("run", "--once", "-c", str(e2e.config), failpoints=point)
    assert killed.returncode == -9, killed.stderr
    counts = settle(e2e)
    assert counts["done"] == 3 and counts["dead"] == 0
    assert len(executions(e2e)) == 1, "exactly one execution for the batch"
    assert executions(e2e)[0]["status"] == "Complete"
    assert not customers_left(e2e) & set(CONTACTS)
    deleted = e2e.admin("dmm", "/_admin/deleted")
    assert sorted(d["key"] for d in deleted) == CONTACTS, "each row deleted once, nothing else"


def test_dmm_answer_lost_after_start_sends_the_same_batch_again_and_deletes_nothing_else(
    e2e: Env,
) -> None:
    """DMM has no client-chosen id and no way to list executions: after a lost answer
    the engine cannot find the execution it may have started, so it starts the same
    WhereClause again. The second execution can only find those rows already gone."""
    dmm_config(e2e)
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)
    killed = e2e.cli("run", "--once", "-c", str(e2e.config), failpoints="after_submit")
    assert killed.returncode == -9, killed.stderr
    counts = settle(e2e)
    assert counts["done"] == 3 and counts["dead"] == 0
    runs = executions(e2e)
    assert len(runs) == 2
    wheres = {
        json.dumps(r["configuration"]["Configuration"]["EntitiesToDelete"], sort_keys=True)
        for r in runs
    }
    assert len(wheres) == 1, "the same batch, never a different one"
    deleted = e2e.admin("dmm", "/_admin/deleted")
    assert sorted(d["key"] for d in deleted) == CONTACTS


def test_dmm_partial_failure_retries_only_the_refused_then_dead_with_the_reason(
    e2e: Env,
) -> None:
    dmm_config(e2e, max_attempts=2)
    e2e.admin_post("dmm", "/_admin/protect", {"entity": "Customer", "keys": ["0-2"]})
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)
    counts = settle(e2e)
    assert counts["done"] == 2 and counts["dead"] == 1
    runs = executions(e2e)
    assert len(runs) == 2
    assert (
        "('0-2')"
        in runs[-1]["configuration"]["Configuration"]["EntitiesToDelete"][0]["WhereClause"]
    )
    rows = json.loads(e2e.cli("dlq", "list", "-c", str(e2e.config), "-o", "json").stdout)
    assert [r["key"] for r in rows] == ["0-2"]
    assert "REFERENCE constraint" in rows[0]["reason"]
    artifacts = list((e2e.tmp / "artifacts").rglob("*.zip"))
    assert artifacts, "the execution's log zip is kept with the job"


def test_dmm_jobs_cancel_stops_the_execution_and_sends_nothing_again(e2e: Env) -> None:
    dmm_config(e2e)
    e2e.box.emulator("dmm").knobs.step_seconds = 3600
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)
    e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "0")
    [job] = e2e.status()["jobs"]
    assert job["kind"] == "dmm_delete" and job["items"] == 3
    cancelled = e2e.cli("jobs", "cancel", str(job["id"]), "-c", str(e2e.config))
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancel requested" in cancelled.stdout
    assert [r["status"] for r in executions(e2e)] == ["InError"]
    e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "5")
    counts = e2e.target_counts()
    assert counts["dead"] == 3 and counts["pending"] == counts["in_flight"] == 0
    rows = json.loads(e2e.cli("dlq", "list", "-c", str(e2e.config), "-o", "json").stdout)
    assert all("cancelled by an operator" in r["reason"] for r in rows)
    assert len(executions(e2e)) == 1, "nothing was started again"
    assert customers_left(e2e) >= set(CONTACTS)
