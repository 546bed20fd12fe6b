"""Every send is screened, including a job submitted later than it was created: a DMM
execution or a Reltio task refused by a throttle, then sent in a later run, meets the
guards of that later run (a legal hold added meanwhile), through the real CLI and the
emulators. (The Reltio refusal is tried again after 30 s, so its settle takes that long.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.e2e.conftest import Env
from tests.e2e.test_async_targets import customers_left, executions, goose_ids_left, reltio_config

KEYS = ["0-4", "0-5", "0-6"]


def dmm_config(e2e: Env, guard: str = "") -> Path:
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
              retry: {{max_attempts: 5, backoff: 0.1s, max_backoff: 0.3s}}
              {f"guard: {guard}" if guard else ""}
        """,
    )


def test_a_job_created_before_a_legal_hold_is_screened_when_it_is_submitted(e2e: Env) -> None:
    dmm_config(e2e)
    dmm = e2e.box.url("dmm")
    e2e.faults(dmm, throttle_rate=1.0, retry_after=0.05)
    e2e.box.delete_in_goose("CON_TRO", KEYS)
    first = e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "0")
    assert "Traceback" not in first.stderr, first.stderr
    [job] = e2e.status()["jobs"]
    assert job["phase"] == "created" and job["items"] == 3, job
    assert executions(e2e) == []

    dmm_config(e2e, '{legal_hold: {key: "{RECORD_ID}", patterns: ["0-5"]}}')
    e2e.faults(dmm, throttle_rate=0.0)
    planned = e2e.cli("plan", "-c", str(e2e.config), "-o", "json")
    assert planned.returncode == 0, planned.stderr
    items = json.loads(planned.stdout)[0]["targets"][0]["items"]
    assert {i["key"]: i["action"] for i in items}["0-5"] == "legal hold"

    counts = e2e.settle()[("contacts", "crm_customers")]
    assert counts["done"] == 2 and counts["dead"] == 1, counts
    assert customers_left(e2e) & set(KEYS) == {"0-5"}, "the held row is still there"
    deleted = e2e.admin("dmm", "/_admin/deleted")
    assert sorted(d["key"] for d in deleted) == ["0-4", "0-6"]
    [execution] = executions(e2e)
    where = execution["configuration"]["Configuration"]["EntitiesToDelete"][0]["WhereClause"]
    assert "0-5" not in where
    traced = e2e.cli("trace", "0-5", "-c", str(e2e.config))
    assert "legal hold" in traced.stdout and "deleted by execution" not in traced.stdout


def test_a_reltio_task_created_before_a_legal_hold_is_screened_when_it_is_submitted(
    e2e: Env,
) -> None:
    """The same job runner carries Reltio's tasks: the task sent later leaves the held
    entity out."""
    hold = '{legal_hold: {key: "{RECORD_ID}", patterns: ["0-5"]}}'
    reltio_config(e2e)
    reltio = e2e.box.url("reltio")
    e2e.faults(reltio, throttle_rate=1.0, retry_after=0.05)
    e2e.box.delete_in_goose("CON_TRO", KEYS)
    first = e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "0")
    assert "Traceback" not in first.stderr, first.stderr
    [job] = e2e.status()["jobs"]
    assert job["phase"] == "created" and job["items"] == 3, job

    text = e2e.config.read_text()
    e2e.config.write_text(re.sub(r"( +)poll_interval: 0.1s\n", rf"\g<0>\1guard: {hold}\n", text))
    e2e.faults(reltio, throttle_rate=0.0)
    counts = e2e.settle()[("contacts", "mdm_people")]
    assert counts["done"] == 2 and counts["dead"] == 1, counts
    assert goose_ids_left(e2e) & set(KEYS) == {"0-5"}
    [task] = e2e.admin("reltio", "/_admin/tasks")
    assert len(task["parameters"]["entityUriList"]) == 2
