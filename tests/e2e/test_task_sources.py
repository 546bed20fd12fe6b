"""Task outputs as sources, through the real CLI: what a DMM execution or a Reltio task
really deleted flows on; a filter-based task is reported, never guessed; a crash in
the middle of reading outputs loses nothing and propagates nothing twice in effect."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import httpx

from syncengine.sandbox import (
    ADT_TOKEN,
    DMM_OTP,
    DMM_TOKEN,
    GOOSE_CODE,
    MONGOOSE_CONFIG,
    MONGOOSE_PASSWORD,
    MONGOOSE_USER,
    RELTIO_CLIENT,
    RELTIO_SECRET,
)
from tests.e2e.conftest import Env

CONTACTS = ["0-1", "0-2", "0-3", "0-4", "0-5"]
REFUSED = "0-2"


def admin(url: str, path: str) -> Any:
    response = httpx.get(f"{url}{path}", timeout=10)
    response.raise_for_status()
    return response.json()


def post(url: str, path: str, body: Any) -> Any:
    response = httpx.post(f"{url}{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def counts_of(e2e: Env) -> dict[tuple[str, str], dict[str, int]]:
    return {
        (p["pipeline"], t["target"]): t for p in e2e.status()["pipelines"] for t in p["targets"]
    }


def settle(e2e: Env, *args: str, runs: int = 10) -> dict[tuple[str, str], dict[str, int]]:
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for _ in range(runs):
        result = e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "10", *args)
        assert "Traceback" not in result.stderr, result.stderr
        counts = counts_of(e2e)
        streams = [s for p in e2e.status()["pipelines"] for s in p["streams"]]
        open_tasks = [
            s for s in streams if s["stream"].startswith(("execution-", "task-"))
            and not (s["cursor"] or {}).get("finished")
        ]  # fmt: skip
        if not open_tasks and all(
            c["pending"] == c["failed"] == c["in_flight"] == 0 for c in counts.values()
        ):
            return counts
    raise AssertionError(f"never settled: {counts}")


def dmm_follow_config(e2e: Env) -> Path:
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
          crm:
            type: dmm
            url: "{e2e.box.dmm_url}"
            token: "{DMM_TOKEN}"
            otp: "{DMM_OTP}"
          twins:
            type: adt
            url: "{e2e.box.adt_url}"
            token: "{ADT_TOKEN}"
        pipelines:
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
                retry: {{max_attempts: 1}}
          crm_done:
            schedule: {{every: 1s}}
            source:
              connection: crm
              follow_jobs_of: {{pipeline: contacts, target: crm_customers}}
              logs_from: status
              log_records: 3
            targets:
              person_twins: {{connection: twins, kind: twins, twin_id: "{{value}}"}}
        """
    )
    e2e.config.write_text(text)
    return e2e.config


def twins_deleted(e2e: Env) -> list[str]:
    return [t["id"] for t in admin(e2e.box.adt_url, "/_admin/deleted")["twins"]]


def test_dmm_outputs_of_our_own_executions_flow_on_and_trace_links_them(e2e: Env) -> None:
    dmm_follow_config(e2e)
    post(e2e.box.url("dmm"), "/_admin/protect", {"entity": "Customer", "keys": [REFUSED]})
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)
    counts = settle(e2e)
    assert counts[("contacts", "crm_customers")]["done"] == 4
    assert counts[("contacts", "crm_customers")]["dead"] == 1
    assert counts[("crm_done", "person_twins")]["done"] == 4
    assert sorted(twins_deleted(e2e)) == ["0-1", "0-3", "0-4", "0-5"], (
        "the refused row's twin stays"
    )
    trace = json.loads(e2e.cli("trace", "0-1", "-c", str(e2e.config), "-o", "json").stdout)
    [root] = trace
    [crm] = root["deliveries"]
    assert crm["target"] == "crm_customers" and crm["job"]["kind"] == "dmm_delete"
    [hop] = crm["continued"]
    assert hop["pipeline"] == "crm_done" and hop["key"] == "Customer.ExternalId=0-1"
    assert "Deleted record ExternalId='0-1'" in hop["fields"]["raw"]
    assert [(d["target"], d["status"]) for d in hop["deliveries"]] == [("person_twins", "done")]


def test_a_crash_in_the_middle_of_reading_outputs_loses_nothing(e2e: Env) -> None:
    dmm_follow_config(e2e)
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)
    settle(e2e, "-p", "contacts")
    killed = e2e.cli(
        "run", "--once", "-c", str(e2e.config), "-p", "crm_done", failpoints="after_fetch@3"
    )
    assert killed.returncode == -9, killed.stderr
    partial = next(p for p in e2e.status()["pipelines"] if p["pipeline"] == "crm_done")
    assert 0 < partial["deletions"] < len(CONTACTS), "killed with some pages journaled"
    counts = settle(e2e)
    assert counts[("crm_done", "person_twins")]["done"] == len(CONTACTS)
    assert sorted(twins_deleted(e2e)) == CONTACTS, "each twin deleted once"
    crm_done = next(p for p in e2e.status()["pipelines"] if p["pipeline"] == "crm_done")
    assert crm_done["deletions"] == len(CONTACTS)


def reltio_tasks_config(e2e: Env) -> Path:
    text = textwrap.dedent(
        f"""
        state: {{url: "sqlite:///{e2e.tmp / "state.db"}"}}
        logging: {{level: info, format: json}}
        connections:
          mdm:
            type: reltio
            tenant_url: "{e2e.box.reltio_tenant_url}"
            auth_url: "{e2e.box.reltio_url}/oauth/token"
            client_id: {RELTIO_CLIENT}
            client_secret: "{RELTIO_SECRET}"
          erp:
            type: mongoose
            url: "{e2e.box.mongoose_url}/IDORequestService/MGRESTService.svc"
            config: {MONGOOSE_CONFIG}
            user: {MONGOOSE_USER}
            password: "{MONGOOSE_PASSWORD}"
        pipelines:
          mdm_tasks:
            schedule: {{every: 1s}}
            source: {{connection: mdm}}
            targets:
              erp_links:
                connection: erp
                ido: MdmLinks
                key: "{{entity_id}}"
                lookup: {{property: EntityId}}
        """
    )
    e2e.config.write_text(text)
    return e2e.config


def test_an_operators_reltio_tasks_list_what_they_deleted_and_filters_are_reported(
    e2e: Env,
) -> None:
    reltio_tasks_config(e2e)
    entities = admin(e2e.box.reltio_url, "/_admin/entities")
    ids = [str(e["uri"]).removeprefix("entities/") for e in entities]
    post(e2e.box.mongoose_url, "/_admin/seed", {"MdmLinks": [{"EntityId": i} for i in ids]})
    refused = f"entities/{ids[1]}"
    post(e2e.box.reltio_url, "/_admin/protect", {"uris": [refused]})
    listed = post(
        e2e.box.reltio_url, "/_admin/delete_task", {"uris": [f"entities/{i}" for i in ids[:3]]}
    )
    by_filter = post(
        e2e.box.reltio_url,
        "/_admin/delete_task",
        {"filter": "equals(type,'configuration/entityTypes/Organization')"},
    )
    tasks = [t["id"] for t in (listed, by_filter)]
    followed = e2e.cli("follow", "-p", "mdm_tasks", *tasks, "-c", str(e2e.config))
    assert followed.returncode == 0, followed.stderr
    assert f"mdm_tasks will read task-{tasks[0]} on its next run" in followed.stdout
    again = e2e.cli("follow", "-p", "mdm_tasks", tasks[0], "-c", str(e2e.config))
    assert f"mdm_tasks already reads task-{tasks[0]}" in again.stdout

    summary = e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "10").stdout
    settle(e2e)

    links = {r["EntityId"] for r in e2e.box.mongoose_rows("MdmLinks")}
    assert links == set(ids) - {ids[0], ids[2]}, "only what the list task really deleted"
    status = next(p for p in e2e.status()["pipelines"] if p["pipeline"] == "mdm_tasks")
    streams = {s["stream"]: s for s in status["streams"]}
    assert streams[f"task-{tasks[0]}"]["cursor"]["finished"] is True
    problem = streams[f"task-{tasks[1]}"]["last_error"]
    assert "deleted the entities matching a filter" in problem
    assert "none are reported" in problem
    assert f"task-{tasks[1]}: task {tasks[1]} deleted the entities matching a filter" in " ".join(
        summary.split()
    )


def test_follow_refuses_a_pipeline_without_tasks(e2e: Env) -> None:
    result = e2e.cli("follow", "-p", "contacts", "42", "-c", str(e2e.config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has no tasks to follow" in result.stderr
