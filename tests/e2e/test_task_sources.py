"""Task outputs as sources, through the real CLI: what a DMM execution or a Reltio task
really deleted flows on; a filter-based task is reported, never guessed; a crash in
the middle of reading outputs loses nothing and propagates nothing twice in effect."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import Env

CONTACTS = ["0-1", "0-2", "0-3", "0-4", "0-5"]
REFUSED = "0-2"


def dmm_follow_config(e2e: Env) -> Path:
    return e2e.compose(
        ["goose", "crm", "twins"],
        """
        contacts:
          schedule: {every: 1s}
          source: {connection: goose, tables: [CON_TRO], from: latest}
          targets:
            crm_customers:
              connection: crm
              entity: {name: Customer}
              key_attribute: ExternalId
              key: "{RECORD_ID}"
              poll_interval: 0.1s
              retry: {max_attempts: 1}
        crm_done:
          schedule: {every: 1s}
          source:
            connection: crm
            follow_jobs_of: {pipeline: contacts, target: crm_customers}
            logs_from: status
            log_records: 3
          targets:
            person_twins: {connection: twins, kind: twins, twin_id: "{value}"}
        """,
    )


def twins_deleted(e2e: Env) -> list[str]:
    return [t["id"] for t in e2e.admin("adt", "/_admin/deleted")["twins"]]


def test_dmm_outputs_of_our_own_executions_flow_on_and_trace_links_them(e2e: Env) -> None:
    dmm_follow_config(e2e)
    e2e.admin_post("dmm", "/_admin/protect", {"entity": "Customer", "keys": [REFUSED]})
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)
    counts = e2e.settle()
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
    e2e.settle("-p", "contacts")
    killed = e2e.cli(
        "run", "--once", "-c", str(e2e.config), "-p", "crm_done", failpoints="after_fetch@3"
    )
    assert killed.returncode == -9, killed.stderr
    partial = next(p for p in e2e.status()["pipelines"] if p["pipeline"] == "crm_done")
    assert 0 < partial["deletions"] < len(CONTACTS), "killed with some pages journaled"
    counts = e2e.settle()
    assert counts[("crm_done", "person_twins")]["done"] == len(CONTACTS)
    assert sorted(twins_deleted(e2e)) == CONTACTS, "each twin deleted once"
    crm_done = next(p for p in e2e.status()["pipelines"] if p["pipeline"] == "crm_done")
    assert crm_done["deletions"] == len(CONTACTS)


def reltio_tasks_config(e2e: Env) -> Path:
    return e2e.compose(
        ["mdm", "erp"],
        """
        mdm_tasks:
          schedule: {every: 1s}
          source: {connection: mdm}
          targets:
            erp_links:
              connection: erp
              ido: MdmLinks
              key: "{entity_id}"
              lookup: {property: EntityId}
        """,
    )


def test_an_operators_reltio_tasks_list_what_they_deleted_and_filters_are_reported(
    e2e: Env,
) -> None:
    reltio_tasks_config(e2e)
    entities = e2e.admin("reltio", "/_admin/entities")
    ids = [str(e["uri"]).removeprefix("entities/") for e in entities]
    e2e.admin_post("mongoose", "/_admin/seed", {"MdmLinks": [{"EntityId": i} for i in ids]})
    refused = f"entities/{ids[1]}"
    e2e.admin_post("reltio", "/_admin/protect", {"uris": [refused]})
    listed = e2e.admin_post(
        "reltio", "/_admin/delete_task", {"uris": [f"entities/{i}" for i in ids[:3]]}
    )
    by_filter = e2e.admin_post(
        "reltio",
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
    e2e.settle()

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


def test_follow_names_a_bad_task_id_without_a_traceback(e2e: Env) -> None:
    reltio_tasks_config(e2e)
    result = e2e.cli("follow", "-p", "mdm_tasks", "tasks/abc", "-c", str(e2e.config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "contains '/'; write the id alone" in result.stderr
