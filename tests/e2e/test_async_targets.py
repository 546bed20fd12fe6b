"""Asynchronous targets (Reltio tasks, DMM executions) through the real CLI: SIGKILL
around submission and polling, restart, and find exactly one remote job per batch,
every delivery done or dead with a reason, and only refused records retried."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine.sandbox import GOOSE_CODE, RELTIO_CLIENT, RELTIO_SECRET
from tests.e2e.conftest import Env

CONTACTS = ["0-1", "0-2", "0-3"]


def reltio_config(e2e: Env, max_attempts: int = 5) -> Path:
    text = textwrap.dedent(
        f"""
        state: {{url: "sqlite:///{e2e.tmp / "state.db"}", artifacts: "{e2e.tmp / "artifacts"}"}}
        logging: {{level: info, format: json}}
        connections:
          goose:
            type: goose
            url: "{e2e.box.goose_url}/deleted/"
            code: {GOOSE_CODE}
            key: "${{TEST_GOOSE_KEY}}"
            calls_per_second: 50
          mdm:
            type: reltio
            tenant_url: "{e2e.box.reltio_tenant_url}"
            auth_url: "{e2e.box.reltio_url}/oauth/token"
            client_id: {RELTIO_CLIENT}
            client_secret: "{RELTIO_SECRET}"
            retry: {{max_attempts: 3, base_delay: 0.05, max_delay: 0.1}}
        pipelines:
          contacts:
            schedule: {{every: 1s}}
            source: {{connection: goose, tables: [CON_TRO], from: latest}}
            targets:
              mdm_people:
                connection: mdm
                crosswalk: {{type: GOOSE, value: "{{RECORD_ID}}"}}
                poll_interval: 0.1s
                retry: {{max_attempts: {max_attempts}, backoff: 0.1s, max_backoff: 0.3s}}
        """
    )
    e2e.config.write_text(text)
    return e2e.config


def admin(url: str, path: str) -> Any:
    response = httpx.get(f"{url}{path}", timeout=10)
    response.raise_for_status()
    return response.json()


def settle(e2e: Env, runs: int = 12) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(runs):
        result = e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "10")
        assert "Traceback" not in result.stderr
        counts = e2e.target_counts()
        if counts["pending"] == counts["in_flight"] == counts["failed"] == 0:
            return counts
    raise AssertionError(f"never settled: {counts}")


def goose_ids_left(e2e: Env) -> set[str]:
    return {
        c["value"]
        for e in admin(e2e.box.reltio_url, "/_admin/entities")
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
    tasks = admin(e2e.box.reltio_url, "/_admin/tasks")
    assert len(tasks) == 1, f"exactly one remote task for the batch, got {len(tasks)}"
    assert tasks[0]["status"] == "COMPLETED"
    assert not goose_ids_left(e2e) & set(CONTACTS)
    deleted = [d["uri"] for d in admin(e2e.box.reltio_url, "/_admin/deleted")]
    assert len(deleted) == 3, "each entity deleted once, nothing else"


def test_reltio_partial_failure_retries_only_the_refused_then_dead_with_the_reason(
    e2e: Env,
) -> None:
    reltio_config(e2e, max_attempts=2)
    refused = next(
        e["uri"]
        for e in admin(e2e.box.reltio_url, "/_admin/entities")
        if {"type": "configuration/sources/GOOSE", "value": "0-2"} in e["crosswalks"]
    )
    httpx.post(
        f"{e2e.box.reltio_url}/_admin/protect", json={"uris": [refused]}, timeout=10
    ).raise_for_status()
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)
    counts = settle(e2e)
    assert counts["done"] == 2 and counts["dead"] == 1
    tasks = admin(e2e.box.reltio_url, "/_admin/tasks")
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
    e2e.box.reltio.knobs.step_seconds = 3600
    e2e.box.delete_in_goose("CON_TRO", CONTACTS[:1])
    e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "0")
    jobs = e2e.status()["jobs"]
    assert len(jobs) == 1 and jobs[0]["target"] == "mdm_people" and jobs[0]["items"] == 1
    assert jobs[0]["kind"] == "reltio_delete" and jobs[0]["state"] == "queued"
    refused = e2e.cli("jobs", "cancel", str(jobs[0]["id"]), "-c", str(e2e.config))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "no cancel call" in refused.stderr
